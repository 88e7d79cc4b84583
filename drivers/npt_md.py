"""committee-md: NPT molecular dynamics on a committee, with the uncertainty gate or
query-by-committee selection afterwards.  Stateless and resumable: rerun the same
command to continue from the last written frame.

Modes
  online  every step goes through the gate: above the thresholds the reference is
          used and the structure labelled (optionally retraining every K labels).
  record  the committee alone drives the run (through the same gate, without
          thresholds: only the --cap-* hard caps act); uncertainties are recorded,
          then up to --n-select frames are selected (--select) and labelled by
          --reference into --labels.

Biased sampling: --bias hal --hal-tau T (E - T*sigma_E) or --bias udd --udd-a-eV A --udd-b-eV B
drive the run on the committee's biased surface (exact forces/stress); the log keeps the
unbiased energy and pressure beside the biased ones.

Outputs in --out: md_trajectory.extxyz, md_log.csv, md_state.json, md_selection.json
(record mode), uncertainty_trace.png, md_unphysical.extxyz (only when a safety check
stopped the run; exit code 3).

Example
  committee-md cell.cif --committee committee.yaml --reference dft.yaml --labels labels.extxyz \\
      --mode record --ensemble mtk_iso --temperature-K 100:400 --pressure-GPa 0.0 --steps 20000 \\
      --timestep-fs 1 --select fps --select-measure forces_std_max --n-select 20 --out md_gen1
"""
from __future__ import annotations

import argparse
import logging

from committee_calc import keys as K
from committee_calc.bias import add_bias_arguments, bias_from_args
from committee_calc.cli import (
    ArgumentParser,
    add_committee_arguments,
    add_gate_arguments,
    build_gate,
    cap_hint,
    check_outputs,
    check_species,
    finite_float,
    limits_from_args,
    load_committee_from_args,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_cli,
)
from committee_calc.committee import require_stress
from committee_calc.errors import ConfigError
from committee_calc.md.io import UNPHYSICAL
from committee_calc.md.runner import MODES, check_mode, run_md
from committee_calc.md.schedule import ENSEMBLES, NPT_ENSEMBLES, TemperatureSchedule
from committee_calc.md.select import MEASURES, METHODS, Selection, trust_from_option
from committee_calc.structures import read_structures

log = logging.getLogger("committee_calc.md")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-md", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structure", help="starting structure (any ASE format)")
    p.add_argument("--index", type=int, default=0, help="which structure of the file (default 0)")
    p.add_argument("--out", default="md_out", help="output folder (resumed if it holds a run)")
    add_committee_arguments(p)
    add_gate_arguments(p, reference_tasks=True)
    p.add_argument("--mode", choices=MODES, default="record")
    md = p.add_argument_group("dynamics")
    md.add_argument("--ensemble", choices=ENSEMBLES, default="mtk_iso")
    md.add_argument("--steps", type=positive_int, required=True, help="total number of MD steps")
    md.add_argument("--timestep-fs", type=float, default=1.0)
    md.add_argument("--temperature-K", dest="temperature_K", default="300",
                    help="'300' constant, '100:400' linear ramp, '100,200,300,400' set points")
    md.add_argument("--schedule-mode", choices=("hold", "ramp"), default="hold",
                    help="for comma-separated set points: hold each, or interpolate linearly")
    md.add_argument("--pressure-GPa", type=finite_float, default=0.0)
    md.add_argument("--tdamp-fs", type=positive_float, default=None, help="thermostat (default: 100 x --timestep-fs)")
    md.add_argument("--pdamp-fs", type=positive_float, default=None, help="barostat (default: 1000 x --timestep-fs)")
    md.add_argument("--anisotropic", action="store_true",
                    help="langevin/berendsen: let the cell shape change (mtk is always full-cell)")
    md.add_argument("--write-interval", type=positive_int, default=10,
                    help="frame + checkpoint every N steps (a step count, no unit)")
    md.add_argument("--seed", type=nonnegative_int, default=0, help="initial velocities / Langevin noise")
    add_bias_arguments(p)
    s = p.add_argument_group("safety")
    s.add_argument("--min-distance-A", type=nonnegative_float, default=0.6)
    s.add_argument("--max-volume-ratio", type=positive_float, default=2.0,
                   help="stop when V/V0 leaves [1/r, r] (dimensionless)")
    s.add_argument("--cutoff-A", type=positive_float, default=None,
                   help="committee cutoff for the cell-size check (default: from the members)")
    q = p.add_argument_group("selection after a record run")
    q.add_argument("--select", choices=METHODS + ("none",), default="highest")
    q.add_argument("--select-measure", choices=MEASURES, default=K.FORCES_STD_MAX)
    q.add_argument("--n-select", type=int, default=10, help="maximum frames labelled per generation")
    q.add_argument("--lower-trust", type=float, default=None,
                   help="below this σ frames are trusted; in the unit of --select-measure's --threshold-… "
                        "option (eV/Å for forces_std_max, meV for energy_std_per_atom, kJ/mol, eV)")
    q.add_argument("--upper-trust", type=float, default=None,
                   help="above this σ frames are discarded as unphysical (same unit)")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    bias = bias_from_args(args)
    check_outputs(args)
    images = read_structures(args.structure, labels=False)
    if not -len(images) <= args.index < len(images):
        raise ConfigError(f"--index {args.index} is out of range: {args.structure} holds {len(images)}")
    atoms = images[args.index]
    schedule = TemperatureSchedule.parse(args.temperature_K, args.steps, args.schedule_mode)
    check_mode(args.mode, limits_from_args(args, "threshold"), args.retrain_every)
    selection = None if args.mode == "online" or args.select == "none" else Selection(
        args.select, args.select_measure, args.n_select, *(trust_from_option(args.select_measure, v)
                                                             for v in (args.lower_trust, args.upper_trust)), args.seed)
    committee = load_committee_from_args(args)
    check_species(committee, [atoms])
    require_stress(committee, args.ensemble in NPT_ENSEMBLES, f"--ensemble {args.ensemble}")
    gate = build_gate(args, "md", committee=committee)
    run = run_md(atoms, gate, args.out, args.steps, mode=args.mode, selection=selection,
                 ensemble=args.ensemble, timestep_fs=args.timestep_fs, temperature=schedule,
                 pressure_GPa=args.pressure_GPa, tdamp_fs=args.tdamp_fs, pdamp_fs=args.pdamp_fs,
                 hydrostatic=not args.anisotropic, write_interval=args.write_interval,
                 min_distance_A=args.min_distance_A, max_volume_ratio=args.max_volume_ratio,
                 cutoff_A=args.cutoff_A, seed=args.seed, bias=bias)
    md = run.md
    log.info("MD steps %d..%d done, %d frames, %d labels by the gate", md.start_step,
             md.last_step, md.n_frames, md.n_labels)
    if run.labelled:
        log.info("labelled %d selected frames into %s", len(run.labelled), run.label_store)
    elif run.selected_steps:
        log.info("selected steps %s (give --labels and --reference to label them)", run.selected_steps)
    if run.plot:
        log.info("figure: %s", run.plot)
    if md.stopped:
        log.error("stopped at step %d: %s%s (outputs so far kept; offending structure in %s/%s)",
                  md.last_step, md.stop_reason, cap_hint(md.stop_reason), args.out, UNPHYSICAL)
        return 3
    return 0


def main(argv=None) -> int:
    """Console entry point (``committee-md``): errors become one line + exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
