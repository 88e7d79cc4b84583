"""Shared command-line plumbing for the drivers (one gate for all of them).

Each driver adds the common options, builds the committee and the gate from
them, and wraps its ``main`` in :func:`run_cli` so any committee_calc error
ends as one clear line on stderr and exit code 2 (1 for unexpected errors).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import CommitteeError, ConfigError, StructureReadError

log = logging.getLogger("committee_calc")

#: CLI threshold options -> (gate measure, factor to internal units or None for per-molecule kJ/mol)
THRESHOLD_OPTIONS = {
    "energy_std_eV": ("energy_std", 1.0),
    "energy_std_per_atom_meV": ("energy_std_per_atom", 1.0e-3),
    "energy_std_per_molecule_kjmol": ("energy_std_per_molecule", None),
    "forces_std_max_eVA": ("forces_std_max", 1.0),
    "force_uncertainty_relative": ("force_uncertainty_relative", 1.0),
}


def add_committee_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--committee", required=required, help="committee YAML (members, calibration)")
    parser.add_argument("--molecules", default=None,
                        help="molecule count per structure for per-molecule measures: an int or 'auto'")


def add_gate_arguments(parser: argparse.ArgumentParser, labels_required: bool = False) -> None:
    g = parser.add_argument_group("uncertainty gate")
    g.add_argument("--reference", help="reference-calculator YAML (e.g. GPAW); omit to run committee-only")
    g.add_argument("--labels", required=labels_required, help="label store (extxyz), appended to")
    for opt in THRESHOLD_OPTIONS:
        flag = "--threshold-" + opt.replace("_", "-")
        g.add_argument(flag, dest="threshold_" + opt, type=float, default=None,
                       help=f"fall back to the reference above this {opt}")
        g.add_argument("--cap-" + opt.replace("_", "-"), dest="cap_" + opt, type=float, default=None,
                       help=f"hard cap on {opt}: stop instead of labelling")
    g.add_argument("--logic", choices=("any", "all"), default="any",
                   help="combine several thresholds with any/all")
    g.add_argument("--retrain-every", type=int, default=None, help="retrain after every K new labels")


def measures_from_args(args, prefix, n_molecules):
    """Thresholds (prefix "threshold_") or hard caps ("cap_") from CLI options, internal units."""
    from .units import check_positive, kjmol_to_ev

    out = {}
    for opt, (measure, factor) in THRESHOLD_OPTIONS.items():
        v = getattr(args, prefix + opt, None)
        if v is None:
            continue
        v = check_positive(f"--{prefix.replace('_', '-')}{opt.replace('_', '-')}", v)
        if factor is None:
            if n_molecules is None:
                raise ConfigError(
                    f"--{prefix.replace('_', '-')}{opt.replace('_', '-')} is per molecule; "
                    "give --molecules N or --molecules auto"
                )
            out[measure] = kjmol_to_ev(v)
        else:
            out[measure] = v * factor
    return out


def parse_molecules(value):
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--molecules must be an integer or 'auto', got {value!r}") from None
    if n < 1:
        raise ConfigError(f"--molecules must be >= 1, got {n}")
    return n


def load_committee_from_args(args):
    from .config import load_committee

    molecules = parse_molecules(getattr(args, "molecules", None))
    kw = {"molecules": molecules} if molecules is not None else {}
    return load_committee(args.committee, **kw)


def build_gate_from_args(args, driver: str, committee=None, n_molecules=None):
    """Committee (from --committee unless given) + reference + thresholds -> Gate."""
    from .gate import Gate
    from .labels import LabelStore
    from .reference import load_reference

    committee = committee or load_committee_from_args(args)
    n_mol = n_molecules if n_molecules is not None else parse_molecules(getattr(args, "molecules", None))
    thresholds = measures_from_args(args, "threshold_", n_mol)
    caps = measures_from_args(args, "cap_", n_mol)
    reference = load_reference(args.reference) if getattr(args, "reference", None) else None
    if thresholds and reference is None:
        raise ConfigError("thresholds were given but no --reference to fall back to")
    store = LabelStore(args.labels) if getattr(args, "labels", None) else None
    retrain = None
    every = getattr(args, "retrain_every", None)
    if every:
        from .config import read_yaml
        from .train import make_retrainer

        spec_path = getattr(committee, "spec_path", None)
        training = read_yaml(spec_path).get("training") if spec_path else None
        if not training:
            raise ConfigError("--retrain-every needs a 'training:' block in the committee YAML "
                              "(backend, out_dir and trainer options for make_retrainer)")
        retrain = make_retrainer(**training)
    return Gate(committee, reference, thresholds=thresholds or None, logic=args.logic,
                hard_cap=caps or None, label_store=store, provenance={"driver": driver},
                retrain=retrain, retrain_every=getattr(args, "retrain_every", None),
                molecules=n_mol)


def read_structures(path, index=":") -> list:
    """Read every structure of a file (any ASE format) or a folder of files."""
    from ase.io import read

    p = Path(path)
    if not p.exists():
        raise StructureReadError(f"structure file {str(p)!r} does not exist")
    files = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
    images = []
    for f in files:
        try:
            got = read(str(f), index=index)
        except Exception as exc:  # ASE raises many types for unreadable files
            raise StructureReadError(
                f"cannot read structures from {str(f)!r}: {type(exc).__name__}: {exc}. "
                "Check the file format (extxyz, cif, POSCAR, ASE db...)"
            ) from exc
        images.extend(got if isinstance(got, list) else [got])
    if not images:
        raise StructureReadError(f"{str(p)!r} holds no structures")
    return images


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)``; map errors to messages and exit codes (0, 2 user error, 1 bug)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rc = main(argv)
    except CommitteeError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: outputs written so far are kept; rerun to resume", file=sys.stderr)
        return 130
    return int(rc or 0)
