"""committee-relax: uncertainty-gated relaxation of a candidate pool.

::

    committee-relax candidates.extxyz --committee committee.yaml --reference reference.yaml \\
        --labels labels.extxyz --out runs/relax --fmax 0.05 --cell \\
        --policy fallback --threshold-forces-std-max-eVA 0.1 [--cluster]

Policies: ``fallback`` (reference step above the thresholds, label appended),
``stop`` (stop a relaxation when U = max‖σ_F‖/max‖F̄‖ > U_max, given by
``--threshold-force-uncertainty-relative`` or ``--u-max``; other thresholds, if
any, still fall back), ``stop_and_label`` (as stop, and label the last
structure).  Outputs in ``--out``: ``relaxed.extxyz``, ``summary.csv``,
``trajectories/``, ``clusters.csv`` (with ``--cluster``), ``landscape.png``.
Rerunning the same command resumes: finished candidates are skipped,
unfinished ones continue from their last saved frame.
"""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("committee_calc.relax")


def build_parser() -> argparse.ArgumentParser:
    from committee_calc.cli import add_committee_arguments, add_gate_arguments
    from committee_calc.relax.gated import OPTIMIZERS, POLICIES

    p = argparse.ArgumentParser(prog="committee-relax", description=__doc__.split("\n\n")[0],
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
    p.add_argument("--pressure-GPa", type=float, default=0.0, help="external pressure with --cell")
    p.add_argument("--fix-symmetry", action="store_true", help="keep the starting space group")
    p.add_argument("--cluster", action="store_true", help="DBSCAN-cluster the relaxed pool")
    p.add_argument("--cluster-eps", type=float, default=0.5,
                   help="DBSCAN eps in standardised descriptor units")
    p.add_argument("--descriptor", choices=("auto", "committee", "soap", "pair"), default="auto")
    p.add_argument("--top", type=int, default=10, help="rows printed from the ranked table")
    p.add_argument("--no-progress", action="store_true")
    return p


def check_species(committee, images) -> None:
    """Every candidate element must be known to every member (before anything is written)."""
    members = getattr(committee, "members", None) or getattr(getattr(committee, "committee", None),
                                                             "members", [])
    for i, atoms in enumerate(images):
        for m in members:
            try:
                m.check_atoms(atoms)
            except Exception as exc:
                raise type(exc)(f"candidate {i}: {exc}") from None


def check_reference(path) -> None:
    """Load the reference YAML and import its calculator(s) now, not at the first fallback."""
    if not path:
        return
    from committee_calc.members.ase_member import import_object
    from committee_calc.reference import load_reference

    spec = load_reference(path)
    import_object(spec.calculator)
    if spec.dispersion:
        import_object(spec.dispersion["calculator"])


def make_relaxer(args, committee):
    from committee_calc.cli import build_gate_from_args
    from committee_calc.errors import ConfigError
    from committee_calc.relax.gated import GatedRelaxer

    u_max = args.u_max if args.u_max is not None else args.threshold_force_uncertainty_relative
    if args.policy == "stop":
        # U_max is the stop criterion here, not a fallback threshold
        args.threshold_force_uncertainty_relative = None
    elif args.policy == "stop_and_label":
        if u_max is None:
            raise ConfigError("--policy stop_and_label needs --u-max or --threshold-force-uncertainty-relative")
        if not args.reference or not args.labels:
            raise ConfigError("--policy stop_and_label needs --reference and --labels")
        args.threshold_force_uncertainty_relative = u_max  # the gate labels exactly when U > U_max
    has_thresholds = any(getattr(args, k) is not None for k in vars(args) if k.startswith("threshold_"))
    if args.policy == "fallback" and not has_thresholds:
        raise ConfigError("--policy fallback needs at least one --threshold-* option and --reference")
    if has_thresholds:
        gate = build_gate_from_args(args, driver="relax", committee=committee)
    else:
        gate = committee  # stop policy without fallback: committee only
    return GatedRelaxer(gate, policy=args.policy, u_max=u_max, optimizer=args.optimizer,
                        fmax=args.fmax, max_steps=args.max_steps, cell=args.cell,
                        pressure_GPa=args.pressure_GPa, fix_symmetry=args.fix_symmetry)


def run(argv=None) -> int:
    from pathlib import Path

    from committee_calc.cli import load_committee_from_args, read_structures
    from committee_calc.analysis.cluster import CLUSTER_COLUMNS, cluster_structures, plot_landscape, ranked_table
    from committee_calc.fileio import CsvLog
    from committee_calc.relax.pool import RelaxPool, candidate_ids, read_relaxed

    args = build_parser().parse_args(argv)
    images = read_structures(args.candidates)
    committee = load_committee_from_args(args)
    check_species(committee, images)
    check_reference(args.reference)
    relaxer = make_relaxer(args, committee)
    ids = candidate_ids(images)
    pool = RelaxPool(relaxer, args.out, progress=not args.no_progress)
    rows = pool.run(images, ids)
    out = Path(args.out)

    finished = [r for r in rows if r.get("energy_per_atom_eV") not in (None, "")]
    labels = None
    if args.cluster and finished:
        relaxed = {a.info["candidate"]: a for a in read_relaxed(out)}
        structs = [relaxed[r["id"]] for r in finished]
        labels = cluster_structures(structs, committee=committee, eps=args.cluster_eps,
                                    descriptor=args.descriptor)
        table = ranked_table(finished, labels)
        path = out / "clusters.csv"
        tmp = out / ".clusters.csv.new"
        if tmp.exists():
            tmp.unlink()
        log_ = CsvLog(tmp, CLUSTER_COLUMNS)
        for t in table:
            log_.append(t)
        tmp.replace(path)
        print(f"{len(table)} distinct minima among {len(finished)} relaxed candidates "
              f"(DBSCAN eps={args.cluster_eps}); lowest:")
        for t in table[:args.top]:
            print(f"  #{t['rank']:<3d} {t['id']:<14s} {t['relative_energy_meV_atom']:8.1f} meV/atom "
                  f"± {t['energy_std_per_atom_meV']:.1f}  rho={t['density_gcm3']:.3f} g/cm3 "
                  f"({t['n_members']} in cluster)")
    if finished:
        plot_landscape(finished, out / "landscape.png", labels=labels,
                       title=f"{len(finished)} relaxed candidates")
    n_ref = sum(int(r.get("reference_calls") or 0) for r in rows)
    n_steps = sum(int(r.get("steps") or 0) + 1 for r in rows)
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    print(f"{len(rows)} candidates: {status}; reference calls {n_ref} / {n_steps} evaluations; "
          f"outputs in {out}")
    return 0


def main(argv=None) -> int:
    from committee_calc.cli import run_cli

    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
