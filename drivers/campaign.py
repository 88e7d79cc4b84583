"""committee-campaign: active relaxation campaign — relax, stop on U, label, fine-tune, go on.

::

    committee-campaign candidates.extxyz --committee committee.yaml --reference reference.yaml \\
        --out runs/campaign --u-max 0.2 --fmax 0.02 --verify-fmax 0.05 \\
        --max-rounds 10 --label-budget 200 [--cell] [--threshold-forces-std-max-eVA 0.5]

Round after round, every unfinished candidate relaxes with the committee until the relative
force uncertainty U = max‖σ_F‖/max‖F̄‖ exceeds U_max (Hessmann et al.) or a --threshold-…
limit is exceeded; the stopped structures are labelled with the reference (above a --cap-… hard
cap a candidate ends unfinished, unlabelled: too far from the training data), structures
converged on the committee get a reference single point (a candidate is ``converged`` only
when the reference force is below --verify-fmax), and the committee is fine-tuned from its
current weights on its seed set + all labels, with the settings of the committee YAML's
``training:`` section (written by train_committee).  Outputs in --out: ``campaign.json``
(state, rounds, labels per round), ``summary.csv``, ``final.extxyz``, ``labels.extxyz``,
``round_NNN/`` (relaxed structures, trajectories, ``committee.yaml`` with held-out errors).
Rerunning the same command resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys

from committee_calc.campaign import run_campaign
from committee_calc.campaign.runner import campaign_progress
from committee_calc.cli import (
    ArgumentParser,
    add_committee_arguments,
    add_gate_arguments,
    check_species,
    finite_float,
    limits_from_args,
    load_committee_from_args,
    load_reference_from_args,
    molecules_from_args,
    nonnegative_int,
    positive_int,
    run_cli,
)
from committee_calc.committee import require_stress
from committee_calc.errors import ConfigError
from committee_calc.relax.gated import OPTIMIZERS, policy_thresholds
from committee_calc.structures import read_structures
from committee_calc.summary_md import write_summary_md


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-campaign", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", help="structures: extxyz/cif/ASE-db file or a folder of files")
    add_committee_arguments(p)
    add_gate_arguments(p, retrain=False, reference_tasks=True, stops=True)  # every threshold stops and labels
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--u-max", type=float, default=None,
                   help="U_max: stop a relaxation when U > U_max (default 0.2; same as "
                        "--threshold-force-uncertainty-relative)")
    p.add_argument("--fmax-eVA", "--fmax", dest="fmax", type=float, default=0.05,
                   help="force convergence on the committee, eV/Å")
    p.add_argument("--verify-fmax-eVA", "--verify-fmax", dest="verify_fmax", type=float, default=None,
                   help="reference max force of a converged candidate, eV/Å (default --fmax)")
    p.add_argument("--verify-stress-GPa", type=float, default=0.1,
                   help="reference residual stress of a converged candidate with --cell, GPa")
    p.add_argument("--max-steps", type=positive_int, default=200, help="optimiser steps per round")
    p.add_argument("--polish", type=nonnegative_int, default=0,
                   help="reference optimiser steps at most after a failed verification, each a label "
                        "(default 0: the candidate relaxes on with the retrained committee)")
    p.add_argument("--max-rounds", type=positive_int, default=10, help="rounds at most")
    p.add_argument("--label-budget", type=positive_int, default=None, help="labels (reference calls) at most")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="FIRE")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--pressure-GPa", type=finite_float, default=0.0, help="external pressure with --cell")
    p.add_argument("--fix-symmetry", action="store_true", help="keep the starting space group")
    t = p.add_argument_group("retraining")
    t.add_argument("--heldout", default=None,
                   help="held-out set (extxyz, seed-set keys); default: --heldout-fraction of the labels")
    t.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="fraction of the labels held out (never trained on) without --heldout")
    t.add_argument("--max-epochs", type=positive_int, default=None,
                   help="fine-tune epochs (default: training.finetune_epochs of the committee YAML)")
    t.add_argument("--n-jobs", type=positive_int, default=1, help="members trained at the same time")
    t.add_argument("--device", default=None, help="training device (default: the YAML's, or cpu)")
    return p


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # everything is validated before the first output file is written
    if args.labels:
        raise ConfigError("a campaign keeps its labels in OUT/labels.extxyz; drop --labels")
    thresholds, u_max = policy_thresholds("stop", limits_from_args(args, "threshold"), args.u_max)
    images = read_structures(args.candidates, labels=False)
    committee = load_committee_from_args(args)
    check_species(committee, images)
    require_stress(committee, args.cell, "--cell")
    reference = load_reference_from_args(args)
    if reference is None:
        raise ConfigError("a campaign labels with a reference: give --reference reference.yaml")
    res = run_campaign(
        images, args.committee, reference, args.out, u_max=0.2 if u_max is None else u_max,
        thresholds=thresholds, caps=limits_from_args(args, "cap"), fmax=args.fmax, max_steps=args.max_steps,
        max_rounds=args.max_rounds,
        label_budget=args.label_budget, cell=args.cell, pressure_GPa=args.pressure_GPa,
        optimizer=args.optimizer, fix_symmetry=args.fix_symmetry, verify_fmax=args.verify_fmax,
        verify_stress_GPa=args.verify_stress_GPa, polish=args.polish, heldout_file=args.heldout,
        heldout_fraction=args.heldout_fraction, max_epochs=args.max_epochs, n_jobs=args.n_jobs,
        device=args.device, molecules=molecules_from_args(args), progress=campaign_progress(args.max_rounds))
    print(f"{'id':<14s} {'status':<16s} {'rounds':>6s} {'ref calls':>9s} {'E_committee':>14s} "
          f"{'E_reference':>14s} {'ref fmax':>9s}  [eV/atom, eV/Å]")
    for r in res.candidates:
        e, e_ref, f_ref = (r[k] for k in ("energy_per_atom_eV", "reference_energy_per_atom_eV",
                                          "reference_fmax_eVA"))
        print(f"{r['id']:<14s} {r['status']:<16s} {r['rounds']:>6d} {r['reference_calls']:>9d} "
              f"{'-' if e is None else format(e, '.5f'):>14s} "
              f"{'-' if e_ref is None else format(e_ref, '.5f'):>14s} "
              f"{'-' if f_ref is None else format(f_ref, '.4f'):>9s}")
    write_summary_md(res.out, "committee-campaign summary", f"committee-campaign {res.status}: {res.reason}.", [
        ("rounds", str(res.n_rounds)), ("reference calls", str(res.n_reference_calls)), ("labels", str(res.n_labels)),
        ("converged, reference-verified", f"{sum(r['status'] == 'converged' for r in res.candidates)} of "
                                          f"{len(res.candidates)}"), ("committee", str(res.committee))],
        files=[("summary.csv", "one row per candidate"), ("final.extxyz", "final structures"),
               ("labels.extxyz", "every reference label"), ("campaign.json", "state to resume from")])
    print(f"campaign {res.status} after {res.n_rounds} rounds: {res.n_reference_calls} reference calls, "
          f"{res.n_labels} labels; {res.reason}; committee {res.committee}; outputs in {res.out}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
