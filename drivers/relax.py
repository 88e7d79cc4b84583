"""committee-relax: uncertainty-gated relaxation of a candidate pool.

::

    committee-relax candidates.extxyz --committee committee.yaml --reference reference.yaml \\
        --labels labels.extxyz --out runs/relax --fmax 0.05 --cell \\
        --policy fallback --threshold-forces-std-max-eVA 0.1 [--cluster]

Policies: ``fallback`` (reference step above the thresholds, label appended),
``stop`` (stop when U = max‖σ_F‖/max‖F̄‖ > U_max, from ``--threshold-force-uncertainty-relative``
or ``--u-max``; other thresholds still fall back), ``stop_and_label`` (as stop, and label the
last structure).  After a fallback a candidate stays on the reference until the spread is below
threshold × ``--reentry-factor``.  With a reference, every committee minimum is checked by a
reference single point; where it disagrees, ``--polish N`` reference-only steps follow (status
``converged`` only when the reference agrees, else ``unverified``; ``--no-verify`` skips it).
Candidates relax in flight together (batched committee calls, ``--atom-budget``; ``--no-batch``:
one after another, same results); ``--workers N``/``--scheduler``/``--cluster-config``: in chunks on
Dask workers; ``--shard k/N``: share k into <out>/shard-k-of-N (``committee-merge`` combines them).
Guards end a blown-up candidate as ``exploded`` before any reference call.  Outputs in ``--out``:
``relaxed.extxyz``, ``summary.csv``, ``trajectories/``, ``clusters.csv`` (``--cluster``),
``landscape.png``.  Rerunning the same command resumes: finished candidates are skipped, unfinished
ones continue from their last saved frame; failed references are retried, max_steps candidates
continue when --max-steps is larger.  Exit code 2 when the reference failed for every candidate.
"""
from __future__ import annotations

import argparse
import sys

from committee_calc.cli import (
    ArgumentParser,
    add_committee_arguments,
    add_executor_arguments,
    add_gate_arguments,
    build_gate,
    cap_hint,
    check_outputs,
    finite_float,
    limits_from_args,
    load_committee_from_args,
    nonnegative_int,
    run_cli,
    spec_from_args,
)
from committee_calc.errors import ConfigError
from committee_calc.relax.gated import OPTIMIZERS, POLICIES, GatedRelaxer, policy_thresholds
from committee_calc.relax.guards import DEFAULT_GUARDS, FIELDS, Guards
from committee_calc.relax.pool import batches_natively, check_candidates
from committee_calc.scale.pool import run_pool_with
from committee_calc.structures import read_structures


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-relax", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", help="structures: extxyz/cif/ASE-db file or a folder of files")
    add_committee_arguments(p)
    add_gate_arguments(p)
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--policy", choices=POLICIES, default="fallback")
    p.add_argument("--u-max", type=float, default=None,
                   help="U_max for stop policies (same as --threshold-force-uncertainty-relative)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="FIRE")
    p.add_argument("--fmax-eVA", "--fmax", dest="fmax", type=float, default=0.05, help="force convergence, eV/Å")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--pressure-GPa", type=finite_float, default=0.0, help="external pressure with --cell")
    p.add_argument("--fix-symmetry", action="store_true",
                   help="keep the starting space group (the structure's own constraints are kept too)")
    p.add_argument("--stress-tol-GPa", type=float, default=0.1,
                   help="with --cell: residual stress allowed at convergence, GPa")
    p.add_argument("--reentry-factor", type=float, default=0.7, help="hysteresis: after a fallback "
                   "the committee is used again once its spread is below threshold x this factor")
    p.add_argument("--max-reentries", type=int, default=3, help="returns to the committee after "
                   "which the next fallback is final (-1: no limit)")
    p.add_argument("--stall-steps", type=int, default=20, help="end a candidate as 'stalled' when it "
                   "moves < 1e-4 Å in this many steps (0: never)")
    p.add_argument("--no-verify", action="store_true", help="do not check committee minima with a "
                   "reference single point (default: checked when a reference is given)")
    p.add_argument("--polish", type=int, default=0, metavar="N", help="reference-only steps at most "
                   "when the reference disagrees at a committee minimum (0: none, status 'unverified')")
    p.add_argument("--no-batch", action="store_true", help="relax one candidate after another")
    p.add_argument("--atom-budget", type=nonnegative_int, default=0, help="atoms per batched "
                   "committee call (0: grown while the time per atom falls)")
    for name, what in FIELDS:
        p.add_argument(f"--guard-{name.replace('_', '-')}", type=finite_float,
                       default=getattr(DEFAULT_GUARDS, name), help=f"{what} (0: off)")
    p.add_argument("--cluster", action="store_true", help="DBSCAN-cluster the relaxed pool")
    p.add_argument("--cluster-eps", type=float, default=0.5,
                   help="DBSCAN eps in standardised descriptor units")
    p.add_argument("--descriptor", choices=("auto", "committee", "soap", "pair"), default="auto")
    p.add_argument("--top", type=nonnegative_int, default=10, help="rows printed from the ranked table")
    p.add_argument("--no-progress", action="store_true")
    add_executor_arguments(p, shard=True, distributes="chunks of candidates, each relaxed and labelled in a worker")
    return p


def make_relaxer(args, committee) -> GatedRelaxer:
    """The relaxer of the options; ``args`` is not modified.  The policy's thresholds come from
    :func:`~committee_calc.relax.gated.policy_thresholds`; hard caps and the label store apply to
    every policy (policy ``stop`` has no fallback thresholds: the committee answers every step)."""
    thresholds, u_max = policy_thresholds(args.policy, limits_from_args(args, "threshold"), args.u_max)
    if args.policy == "stop_and_label" and not (args.reference and args.labels):
        raise ConfigError("--policy stop_and_label needs --reference and --labels")
    gate = build_gate(args, driver="relax", committee=committee, thresholds=thresholds)
    return GatedRelaxer(gate, policy=args.policy, u_max=u_max, optimizer=args.optimizer,
                        fmax=args.fmax, max_steps=args.max_steps, cell=args.cell,
                        pressure_GPa=args.pressure_GPa, fix_symmetry=args.fix_symmetry,
                        stress_tol_GPa=args.stress_tol_GPa, reentry_factor=args.reentry_factor,
                        max_reentries=None if args.max_reentries == -1 else args.max_reentries,
                        stall_steps=args.stall_steps, verify=False if args.no_verify else None,
                        polish=args.polish,
                        guards=Guards(*(getattr(args, f"guard_{n}") or None for n, _ in FIELDS)))


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)  # everything is validated before the first output file is written
    check_outputs(args)
    images = read_structures(args.candidates, labels=False)
    committee = load_committee_from_args(args)
    check_candidates(committee, images, atom_budget=args.atom_budget)  # before any cluster starts
    relaxer, batch = make_relaxer(args, committee), not args.no_batch and batches_natively(committee)
    res = run_pool_with(spec, relaxer, images, args.out, args.committee, args.molecules, args.shard,
                        cluster=args.cluster, cluster_eps=args.cluster_eps, descriptor=args.descriptor,
                        progress=not args.no_progress, batch=batch, atom_budget=args.atom_budget or None)
    if res.clusters is not None:
        print(f"{len(res.clusters)} distinct minima among {len(res.finished)} relaxed candidates "
              f"(DBSCAN eps={args.cluster_eps}); lowest:")
        for t in res.clusters[:args.top]:
            print(f"  #{t['rank']:<3d} {t['id']:<14s} {t['relative_energy_meV_atom']:8.1f} meV/atom "
                  f"± {t['energy_std_per_atom_meV']:.1f}  rho={t['density_gcm3']:.3f} g/cm3 "
                  f"({t['n_members']} in cluster)")
    for r in res.rows:  # name the option that set the cap, as the other drivers do
        if r["status"] == "hard_cap":
            print(f"{r['id']}: {r['reason']}{cap_hint(r['reason'])}")
    print(res.describe())
    if res.all_failed:  # nearly always the reference's settings: a user-facing error (exit 2)
        raise res.failure()
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
