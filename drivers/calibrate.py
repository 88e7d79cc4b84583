"""committee-calibrate: calibrate a committee's spreads on labelled frames it never trained on.

    committee-calibrate heldout.extxyz --committee committee.yaml --out calib/ \
        [--methods alpha conformal isotonic] [--coverage 0.95] [--fit-fraction 0.5] [--seed 0] \
        [--reference ref.yaml] [--apply isotonic] [--offsets] [--threshold-forces-std-max-eVA 0.1]

Per quantity (energy per atom, force components, stress components) each method — a global
α, split-conformal at ``--coverage``, isotonic — is fitted on one split of the frames and judged
on the other (held-out) split: NLL, miscalibration area, 68 %/95 % coverage before (raw spread)
and after, the committee's stored calibration (``current``) beside them.  Frames in the
committee's ``training.train_file`` are refused (structure hash); frames without reference
values are labelled by ``--reference`` (stored in ``<out>/labels.extxyz``).  Writes
``calibration_report.{json,csv,md}``, ``calibration.yaml`` (every fitted method),
``parity_<q>.png`` and ``calibration_curve_<q>.png``; ``--apply METHOD`` writes that method
into the committee YAML's ``calibration:`` block, ``--offsets`` fits per-member, per-element
energy offsets on all frames (heterogeneous committees) and writes them as ``energy_offsets:``.
A ``--threshold-…`` option reports the fraction of held-out frames it would send to the
reference, raw and per method (thresholds mean other things once spreads are calibrated).
"""
from __future__ import annotations

import argparse

from committee_calc import cli
from committee_calc.calibration_maps import METHODS
from committee_calc.calibration_report import SuiteSettings
from committee_calc.calibration_run import run_calibration
from committee_calc.config import training_file, write_domain
from committee_calc.domain import TRUST_MEASURES
from committee_calc.errors import ConfigError
from committee_calc.measures import MEASURES, cli_limit_value
from committee_calc.structures import read_structures

QUANTITIES = ("energy", "forces", "stress")


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="committee-calibrate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structures", help="labelled frames (extxyz: REF_energy, REF_forces[, REF_stress])")
    cli.add_committee_arguments(p)
    p.add_argument("--reference", help="reference YAML: labels frames without reference values")
    cli.add_output_argument(p)
    cli.add_executor_arguments(p, reference_tasks=True, distributes="the reference calls of frames without labels, "
                               "each a task (the calibration itself runs here)")
    g = p.add_argument_group("calibration")
    g.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    g.add_argument("--quantities", nargs="+", choices=QUANTITIES, default=list(QUANTITIES))
    g.add_argument("--coverage", type=float, default=0.95, help="split-conformal coverage, a fraction in (0, 1)")
    g.add_argument("--fit-fraction", type=float, default=0.5, help="share of frames fitted on, in (0, 1)")
    g.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed of the fit/held-out split")
    g.add_argument("--apply", choices=METHODS, default=None,
                   help="write this method's calibration into the committee YAML")
    g.add_argument("--offsets", action="store_true",
                   help="fit per-member, per-element energy offsets and write them into the committee YAML")
    g.add_argument("--energy-key", default="REF_energy")
    g.add_argument("--forces-key", default="REF_forces")
    g.add_argument("--stress-key", default="REF_stress")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--record-domain", action="store_true",
                   help="write the training set's domain (elements, volume per atom, pressure) and the "
                        "--threshold-forces-std-max-eVA/-energy-std-per-atom-meV values as trust: into "
                        "the committee YAML (committee-only runs warn outside them)")
    g = p.add_argument_group("thresholds to translate (fraction of held-out frames above them)")
    for m in MEASURES.values():
        dest = m.option("threshold")
        unit = f" [{m.display_unit()}]" if m.cli_unit else ""
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=cli_limit_value, default=None,
                       metavar="X", help=f"{m.help}{unit}")
    g.add_argument("--logic", choices=("any", "all"), default="any")
    return p


def run(argv=None) -> int:
    """The driver; raises committee_calc errors (``main`` maps them to exit code 2)."""
    args = build_parser().parse_args(argv)
    cli.check_outputs(args)
    settings = SuiteSettings(methods=tuple(args.methods), coverage=args.coverage,
                             fit_fraction=args.fit_fraction, seed=args.seed, quantities=tuple(args.quantities))
    thresholds = cli.limits_from_args(args, "threshold")
    if args.apply and args.apply not in settings.methods:
        raise ConfigError(f"--apply {args.apply} is not among --methods {list(settings.methods)}")
    if args.record_domain:
        training_file(args.committee)  # refused before any output
    frames = read_structures(args.structures)
    committee = cli.load_committee_from_args(args)
    cli.check_species(committee, frames)
    reference = cli.load_reference_from_args(args)
    keys = {"energy_key": args.energy_key, "forces_key": args.forces_key, "stress_key": args.stress_key}
    res = run_calibration(frames, committee, args.out, settings, committee_file=args.committee,
                          reference=reference, thresholds=thresholds, logic=args.logic, apply=args.apply,
                          offsets=args.offsets, keys=keys, plots=not args.no_plots)
    for q, d in res.report["quantities"].items():
        if "skipped" in d:
            print(f"{q}: skipped ({d['skipped']})")
            continue
        for m, r in d["methods"].items():
            print(f"{q:7s} {m:10s} NLL {r['nll']:9.3f}  miscal. {r['miscalibration_area']:.3f}  "
                  f"68 %: {100 * r['coverage_68']:5.1f} %  95 %: {100 * r['coverage_95']:5.1f} %")
    if args.apply:
        print(f"wrote the {args.apply} calibration into {args.committee}")
    if args.offsets:
        print(f"wrote energy offsets into {args.committee}")
    if args.record_domain:
        trust = {k: float(v) for k, v in thresholds.items() if k in TRUST_MEASURES and isinstance(v, (int, float))}
        block = write_domain(args.committee, stress_key=args.stress_key, trust=trust or None)
        print(f"wrote domain {block} and trust {trust} into {args.committee}")
    print(f"report in {args.out} ({res.n_reference_calls} reference calls)")
    return 0


def main(argv=None) -> int:
    """Console entry point ``committee-calibrate``."""
    return cli.run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
