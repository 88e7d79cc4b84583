"""committee-rerank: re-rank a whole landscape with a committee, σ-capped by the reference.

    committee-rerank landscape.extxyz --learn-dir al/ --reference ref.yaml \
        --sigma-cap-kjmol 6 --out rerank/ [--experimental NAME ...]

The committee comes from ``--committee committee.yaml`` or from an
active-learning folder (``--learn-dir``: the last iteration's committee,
refitted in-process for the ridge backend).  Every structure goes through the
uncertainty gate: above the σ cap (and any shared ``--threshold-…`` option)
the reference computes it and the label goes to ``--labels`` (default
``<out>/labels.extxyz``), so a rerun never repeats a reference call.  Writes
``reranked.csv``, ``reranked.extxyz``, ``reference_calls.csv`` and ``landscape.png``.
"""
from __future__ import annotations

import argparse

import numpy as np

from committee_calc.active.options import (
    add_committee_source_arguments,
    add_energy_option,
    add_landscape_arguments,
    check_experimental,
    committee_from_args,
    landscape_from_args,
    spread_from_args,
)
from committee_calc.active.rerank import rerank
from committee_calc.cli import (
    ArgumentParser,
    add_executor_arguments,
    add_gate_arguments,
    add_output_argument,
    check_outputs,
    check_species,
    limits_from_args,
    load_reference_from_args,
    run_cli,
)
from committee_calc.cli_scale import remote_committee
from committee_calc.errors import ConfigError
from committee_calc.summary_md import domain_warnings, write_summary_md


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-rerank", description=__doc__.split("\n")[0])
    add_landscape_arguments(p)
    add_committee_source_arguments(p)
    add_gate_arguments(p, retrain=False)
    add_energy_option(p, "sigma_cap", "the reference computes structures whose committee energy spread is above this")
    p.add_argument("--experimental", nargs="*", default=(), help="names of known experimental structures")
    add_output_argument(p)
    add_executor_arguments(p, reference_tasks=True, distributes="the committee evaluation (chunks of whole "
                           "--batch-size batches, each a task) and each reference call of a capped structure")
    p.add_argument("--batch-size", type=int, default=16,
                   help="structures per batched committee call (default 16; 1: one at a time, "
                        "the same numbers)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_outputs(args)
    if args.labels and not args.reference:
        raise ConfigError("--labels is the store the reference writes to: give --reference too "
                          "(without it the committee alone re-ranks and nothing is labelled)")
    ls = landscape_from_args(args)
    experimental = check_experimental(ls, args.experimental)
    committee, delta = committee_from_args(args)
    check_species(committee, ls.structures)
    thresholds = spread_from_args(args, "sigma_cap", ls.unit, limits_from_args(args, "threshold"))
    caps = limits_from_args(args, "cap")
    reference = load_reference_from_args(args)
    committee = remote_committee(args, committee)  # --workers etc.: committee chunks as tasks on the workers
    r = rerank(ls, committee, args.out, reference=reference, thresholds=thresholds, logic=args.logic,
               hard_cap=caps or None, delta=delta, experimental=experimental, label_store=args.labels,
               progress=not args.no_progress, batch_size=args.batch_size)
    i0 = int(np.argmin(r["rank_after"]))
    write_summary_md(args.out, "committee-rerank summary", f"committee-rerank ranked {len(ls)} structures by "
                     "committee energy, computing those above the σ cap with the reference.",
                     [("structures", str(len(ls))), ("lowest energy (rank 0)", f"{ls.names[i0]} ({r['source'][i0]})"),
                      ("above the σ cap (reference energies)", str(r["n_capped"])),
                      ("new reference calls", str(r["n_reference"]))], domain_warnings(committee),
                     files=[("reranked.csv", "every structure: ranks, energies, σ, source"),
                            ("landscape.png", "energy vs density, ±1σ bars, reference points circled")])
    print(f"re-ranked {len(ls)} structures; {r['n_capped']} above the σ cap computed with the reference "
          f"({r['n_reference']} new calls); results in {args.out}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
