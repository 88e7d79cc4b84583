"""Reference calls and final-energy error: gated vs reference-only relaxation of a pool.

    .venv/bin/python benchmarks/relax_reference_calls.py [--n 10] [--energy-meV 4] [--forces 0.2]
        [--polish 0] [--no-verify] [--old]

Pool: rattled 4-atom fcc Cu cells (lattice 3.56-3.70 Å, fixed cell), the same as
tests/test_relax.py.  Reference: EMT.  Committee: 4 perturbed-EMT members
(EMT + ε_k Σ exp(-((r-2 Å)/0.25 Å)²), ε = 45, -20, 30, -5 meV; helper module
tests/test_relax_members.py).  Both relaxations use FIRE, fmax 0.05 eV/Å.
The gated relaxation uses the library defaults: hysteresis (re-entry factor 0.7),
an optimiser restart per surface and a reference single point at every committee
minimum (``--no-verify``: none; ``--polish N``: reference-only steps when the
reference disagrees; ``--old``: the behaviour before hysteresis and verification).
Prints per candidate: reference-only steps (= reference calls), gated steps,
gated reference calls, final energy error [meV/atom], status and reference fmax
at the final structure, then the totals and the ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--energy-meV", type=float, default=4.0, help="energy_std_per_atom threshold")
    p.add_argument("--forces", type=float, default=0.2, help="forces_std_max threshold, eV/Å")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--polish", type=int, default=0, help="reference-only steps after a failed check")
    p.add_argument("--no-verify", action="store_true", help="no reference check at committee minima")
    p.add_argument("--old", action="store_true", help="earlier behaviour: one mixed surface, no check")
    args = p.parse_args(argv)

    from ase.calculators.emt import EMT
    from ase.optimize import FIRE

    from committee_calc import CommitteeCalculator
    from committee_calc.gate import Gate
    from committee_calc.relax.gated import GatedRelaxer
    from test_relax_members import MEMBER_EPS, PerturbedEMT, cu_pool

    t0 = time.time()
    settings = (dict(reentry_factor=1.0, restart_on_switch=False, max_reentries=None,
                     stall_steps=None, verify=False) if args.old
                else dict(verify=not args.no_verify, polish=args.polish))
    print(f"{'id':6s} {'ref-only':>8s} {'gated':>6s} {'ref calls':>9s} {'dE meV/at':>10s} "
          f"{'E(EMT) meV/at':>14s} {'status':>10s} {'ref fmax':>8s}")
    tot_ref_only = tot_ref = 0
    errs, errs_emt, statuses = [], [], {}
    for atoms in cu_pool(args.n):
        b = atoms.copy()
        b.calc = EMT()
        opt = FIRE(b, logfile=None)
        opt.run(fmax=args.fmax, steps=1000)
        n_ref_only = opt.nsteps + 1  # one reference call per evaluated geometry
        gate = Gate(CommitteeCalculator([PerturbedEMT(e) for e in MEMBER_EPS]), EMT(),
                    thresholds={"energy_std_per_atom_meV": args.energy_meV,
                                "forces_std_max_eVA": args.forces})
        res = GatedRelaxer(gate, fmax=args.fmax, max_steps=1000, **settings).relax(atoms)
        c = res.atoms.copy()
        c.calc = EMT()
        n = len(atoms)
        err = 1e3 * (res.energy - b.get_potential_energy()) / n
        err_emt = 1e3 * (c.get_potential_energy() - b.get_potential_energy()) / n
        errs.append(err)
        errs_emt.append(err_emt)
        tot_ref_only += n_ref_only
        tot_ref += res.n_reference_calls
        print(f"{atoms.info['candidate_id']:6s} {n_ref_only:8d} {res.steps + 1:6d} "
              f"{res.n_reference_calls:9d} {err:10.2f} {err_emt:14.2f} {res.status:>10s} "
              f"{res.reference_fmax:8.4f}")
        statuses[res.status] = statuses.get(res.status, 0) + 1
    print(f"total reference calls: gated {tot_ref}, reference-only {tot_ref_only}, "
          f"ratio {tot_ref / tot_ref_only:.3f}; statuses {statuses}")
    print(f"final energy error (reported energy) max |dE| {max(map(abs, errs)):.2f} meV/atom; "
          f"EMT energy at the gated minimum max |dE| {max(map(abs, errs_emt)):.3f} meV/atom")
    print(f"wall time {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
