"""committee-learn: active learning over a CSP landscape (query by committee).

    committee-learn landscape.extxyz --reference ref.yaml --out al/ \
        --strategy highest_uncertainty --quantity dE --batch-size 10 \
        --threshold-kjmol 2 --energy-cutoff-kjmol 20 --target-fraction 0.05

Stateless and resumable: rerun the same command after a kill; labels already
in ``<out>/labels.extxyz`` are never recomputed.  ``--backend ridge`` trains
the in-process ridge resampling committee; other backends go through
``committee_calc.train.train_committee``.  Writes ``<out>/summary.json`` and ``<out>/summary.md``.
"""
from __future__ import annotations

import argparse

from committee_calc.active.learner import QUANTITIES
from committee_calc.active.options import (
    add_energy_option,
    add_landscape_arguments,
    energy_from_args,
    landscape_from_args,
    spread_from_args,
)
from committee_calc.active.trainers import run_learning
from committee_calc.analysis.select import STRATEGIES
from committee_calc.cli import (
    ArgumentParser,
    add_executor_arguments,
    add_output_argument,
    check_outputs,
    load_reference_from_args,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    run_cli,
)
from committee_calc.cli_scale import executor_from_args
from committee_calc.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-learn", description=__doc__.split("\n")[0])
    add_landscape_arguments(p)
    p.add_argument("--reference", required=True, help="reference-calculator YAML")
    add_output_argument(p)
    add_executor_arguments(p, reference_tasks=True, distributes="the reference labels of each batch, one task "
                           "per label (appended here, in order); training and selection run here")
    p.add_argument("--backend", default="ridge", help="trainer backend: ridge, mace, nequip, schnetpack")
    p.add_argument("--n-members", type=positive_int, default=8)
    p.add_argument("--strategy", choices=STRATEGIES, default="highest_uncertainty")
    p.add_argument("--quantity", choices=list(QUANTITIES), default="dE")
    p.add_argument("--batch-size", type=positive_int, default=10, help="labels per iteration (retrain interval)")
    p.add_argument("--initial-size", type=positive_int, default=None)
    add_energy_option(p, "threshold", "label structures whose committee energy spread is above this")
    add_energy_option(p, "energy_cutoff", "candidates within this baseline energy of the minimum")
    add_energy_option(p, "ei_window", "expected-improvement energy window")
    p.add_argument("--target-fraction", type=nonnegative_float, default=0.05,
                   help="stop when at most this fraction of candidates is above the threshold")
    p.add_argument("--max-train-size", type=positive_int, default=None)
    p.add_argument("--max-iterations", type=positive_int, default=1000)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def run(argv=None):
    args = build_parser().parse_args(argv)
    check_outputs(args)
    ls = landscape_from_args(args)
    threshold = spread_from_args(args, "threshold", ls.unit)
    if not threshold:
        raise ConfigError("give the uncertainty threshold: --threshold-kjmol (per molecule) or --threshold-mev-atom")
    reference = load_reference_from_args(args)
    res = run_learning(ls, reference, args.out, backend=args.backend, n_members=args.n_members,
                       seed=args.seed, strategy=args.strategy, quantity=args.quantity,
                       batch_size=args.batch_size, initial_size=args.initial_size,
                       threshold_eV=next(iter(threshold.values())),
                       energy_cutoff_eV=energy_from_args(args, "energy_cutoff", ls.unit),
                       target_fraction=args.target_fraction, max_train_size=args.max_train_size,
                       max_iterations=args.max_iterations,
                       ei_window_eV=energy_from_args(args, "ei_window", ls.unit) or 0.0,
                       progress=not args.no_progress, executor=executor_from_args(args))
    print(f"stopped: {res['stopped']} after {res['iterations']} iterations; "
          f"{res['n_train']} labels of {res['pool_size']} candidates")
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
