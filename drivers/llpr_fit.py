"""committee-llpr-fit: the LLPR covariance of a MACE model, once, written beside the model.

::

    committee-llpr-fit model.model train.extxyz --heldout heldout.extxyz [--energy-key REF_energy]

Reads the model's last-layer features on every training structure (one forward pass each) and
stores their covariance C = Σ φ φᵀ with the calibration α, ς fitted on the held-out structures'
energy errors (reference energies in ``info[--energy-key]``, eV) in ``model.model.llpr.npz``
(or ``--out``).  Afterwards the model works as a one-model committee::

    members:
      - {backend: mace_llpr, path: model.model, members: 8}

Prints one JSON line on stdout (the committee.yaml entry to use goes to stderr): path, n_train,
n_heldout, features, regularizer, alpha, nll, and on the held-out structures rmse_eV,
rms_sigma_eV and spearman (σ against |error|).  Bad input (missing
or unreadable files, no reference energies, not a MACE model): one ``error:`` line, exit 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from committee_calc.cli import ArgumentParser, positive_int, run_cli
from committee_calc.fileio import check_dir
from committee_calc.members.mace_llpr import covariance_path
from committee_calc.members.mace_llpr_fit import fit_llpr
from committee_calc.structures import read_structures


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="committee-llpr-fit", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="MACE model file (.model)")
    p.add_argument("train", help="the model's training structures (any ASE format, or a folder)")
    p.add_argument("--heldout", required=True,
                   help="held-out structures with reference energies: fit the calibration α, ς")
    p.add_argument("--energy-key", default="REF_energy", help="info key of the reference energies [eV]")
    p.add_argument("--out", default=None, help="covariance file (default: <model>.llpr.npz)")
    p.add_argument("--head", default=None, help="model head (multi-head models)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None, help="default: the model's")
    p.add_argument("--batch-size", type=positive_int, default=8, help="structures per forward pass")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else covariance_path(args.model)
    check_dir(out.expanduser().absolute().parent, "folder of the covariance file (--out)")
    train, heldout = read_structures(args.train), read_structures(args.heldout)
    summary = fit_llpr(args.model, train, heldout, energy_key=args.energy_key, out=out, head=args.head,
                       dtype=args.dtype, batch_size=args.batch_size)
    print(json.dumps(summary))
    cov = "" if out == covariance_path(args.model) else f", covariance: {out}"
    print(f"wrote {out}; a committee of 8 pseudo-members of this model in committee.yaml:\n"
          f"  members:\n    - {{backend: mace_llpr, path: {args.model}, members: 8{cov}}}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Console entry point (``committee-llpr-fit``): errors become one line + exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
