"""Labels needed to reach a held-out force error: unbiased vs HAL- and UDD-biased MD active learning.

System: a 13-atom Lennard-Jones cluster (ε = 0.1 eV, σ = 2.5 Å, Ar masses, non-periodic; ASE's
``LennardJones`` is the cheap reference).  Model: the in-process ridge pair-basis resampling
committee (:class:`committee_calc.train.ridge.PairRidgeCommittee`, 8 members, forces in the fit,
its own out-of-sample α).  Held-out set: reference Langevin MD of the cluster at 400 K and
600 K (a hotter, more distorted region than the sampling temperature).

One active-learning run (per method and seed): start from 2 rattled icosahedra; then, per
iteration, fit the committee on all labels, run committee MD (:class:`~committee_calc.md.dynamics.CommitteeMD`
through ``Gate(committee)``, NVT Langevin at ``--temperature-K``, ``--md-steps`` steps, a frame
every 3 steps; the run stops early where two atoms come closer than ``--min-distance-A``),
label the written frame with the largest committee force spread ``forces_std_max`` with the
reference, and record the committee's force RMSE on the held-out set.  Methods differ only in
the ``bias`` of the dynamics: none, HAL (``−τ σ_E``) and UDD (``A (exp(−σ_E²/(N b²)) − 1)``),
:mod:`committee_calc.bias`.  Every method sees the same seeds (initial structures, velocities).

Printed: the held-out RMSE after every label (mean and median over seeds), the labels needed
until the RMSE first reaches ``--target-eVA`` (median over seeds; runs that never reach it count
as ``> max``), and how many MD runs a safety stop cut short.  Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/biased_sampling.py [--seeds 6] [--labels 12]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import numpy as np

EPS_EV, SIGMA_A = 0.1, 2.5


def lj():
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=SIGMA_A, epsilon=EPS_EV, rc=3 * SIGMA_A, smooth=True)


def start():
    from ase.cluster import Icosahedron

    a = Icosahedron("Ar", 2, latticeconstant=2 ** (2 / 3) * SIGMA_A)  # 13 atoms
    a.center(vacuum=8.0)
    a.pbc = False
    return a


def label(atoms):
    b = atoms.copy()
    b.calc = lj()
    e, f = b.get_potential_energy(), b.get_forces()
    b.calc = None
    b.info["REF_energy"], b.arrays["REF_forces"] = e, f
    return b


def reference_md(temperature_K, n, seed, every=20):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    a = start()
    a.calc = lj()
    MaxwellBoltzmannDistribution(a, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    dyn = Langevin(a, 4 * units.fs, temperature_K=temperature_K, friction=0.02,
                   rng=np.random.default_rng(seed))
    out = []
    for _ in range(n):
        dyn.run(every)
        out.append(label(a))
    return out


def fit(frames, seed):
    from committee_calc.train.ridge import PairRidgeCommittee

    m = PairRidgeCommittee(["Ar"], n_members=8, force_weight=1.0, seed=seed, r_cut=3 * SIGMA_A, n_basis=12)
    m.fit(frames, [f.info["REF_energy"] for f in frames], [f.arrays["REF_forces"] for f in frames])
    return m.as_committee()


def force_rmse(committee, frames) -> float:
    err = []
    for f in frames:
        b = f.copy()
        b.calc = committee
        err.append(b.get_forces() - f.arrays["REF_forces"])
    return float(np.sqrt(np.mean(np.square(err))))


def al_run(bias, seed, test, args) -> tuple:
    """RMSE after 0..labels added labels, and the number of MD runs a safety check stopped."""
    from ase.io import read

    from committee_calc.gate import Gate
    from committee_calc.md.dynamics import CommitteeMD

    train = []
    for k, amp in enumerate((0.05, 0.1)):
        a = start()
        a.rattle(amp, seed=100 * seed + k)
        train.append(label(a))
    curve, stops = [force_rmse(fit(train, seed), test)], 0
    for it in range(args.labels):
        committee = fit(train, seed)
        with tempfile.TemporaryDirectory() as d:
            md = CommitteeMD(start(), Gate(committee), d, ensemble="nvt", timestep_fs=4.0,
                             temperature=args.temperature_K, write_interval=3, seed=1000 * seed + it,
                             bias=bias, min_distance_A=args.min_distance_A)
            res = md.run(args.md_steps)
            frames = read(res.trajectory, ":")
        stops += res.stopped
        spread = [f.info.get("committee_forces_std_max", 0.0) for f in frames]
        train.append(label(frames[int(np.argmax(spread))]))
        curve.append(force_rmse(fit(train, seed), test))
    return curve, stops


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--labels", type=int, default=12, help="labels added per run")
    ap.add_argument("--md-steps", type=int, default=60)
    ap.add_argument("--temperature-K", type=float, default=100.0)
    ap.add_argument("--min-distance-A", type=float, default=2.1, help="MD safety stop (0.84 σ)")
    ap.add_argument("--target-eVA", type=float, default=0.03, help="held-out force RMSE target")
    ap.add_argument("--hal-tau", type=float, default=4.0)
    ap.add_argument("--udd-a-eV", type=float, default=1.0)
    ap.add_argument("--udd-b-eV", type=float, default=0.005)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from committee_calc.bias import HAL, UDD

    t0 = time.perf_counter()
    test = reference_md(400, 15, 1) + reference_md(600, 15, 2)
    floor = force_rmse(fit(reference_md(400, 30, 7) + reference_md(600, 30, 8), 0), test)
    print(f"LJ13 (ε {EPS_EV} eV, σ {SIGMA_A} Å), ridge pair committee (8 members); held-out: {len(test)} "
          f"reference-MD frames at 400/600 K; sampling MD at {args.temperature_K:g} K, {args.md_steps} "
          f"steps x 4 fs per label; {args.seeds} seeds; target {args.target_eVA} eV/Å (floor of the "
          f"model class, 60 frames of the held-out distribution: {floor:.4f} eV/Å)")
    methods = {"unbiased": None, f"HAL tau={args.hal_tau:g}": HAL(args.hal_tau),
               f"UDD A={args.udd_a_eV:g} eV b={args.udd_b_eV:g} eV": UDD(args.udd_a_eV, args.udd_b_eV)}
    results = {}
    for name, bias in methods.items():
        runs = [al_run(bias, s, test, args) for s in range(args.seeds)]
        curves = np.array([c for c, _ in runs])
        need = [next((n for n, x in enumerate(c) if x <= args.target_eVA), None) for c in curves]
        results[name] = (curves, need, sum(s for _, s in runs))
    print(f"\nheld-out force RMSE [eV/Å] after n labels added (mean / median over {args.seeds} seeds)")
    print(f"{'method':<28} " + " ".join(f"{n:>6d}" for n in range(args.labels + 1)))
    for name, (curves, _, _) in results.items():
        print(f"{name + ' mean':<28} " + " ".join(f"{x:6.3f}" for x in curves.mean(axis=0)))
        print(f"{name + ' median':<28} " + " ".join(f"{x:6.3f}" for x in np.median(curves, axis=0)))
    print(f"\nlabels until the RMSE first reaches {args.target_eVA} eV/Å (per seed; '-' = not within "
          f"{args.labels}), median, safety-stopped MD runs")
    for name, (_, need, stops) in results.items():
        vals = [args.labels + 1 if n is None else n for n in need]
        med = float(np.median(vals))
        med_txt = f"> {args.labels}" if med > args.labels else f"{med:g}"
        print(f"{name:<28} {' '.join('-' if n is None else str(n) for n in need):<30} median {med_txt:<6}"
              f" reached {sum(n is not None for n in need)}/{args.seeds}  stops {stops}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
