"""On-the-fly learning inside threshold MC on a small molecular crystal (water, 4 molecules).

Reference: tblite GFN1-xTB (periodic; ``--method GFN2-xTB`` for GFN2).  Committee: a
resampling committee of ridge-fitted pair-basis potentials
(:class:`committee_calc.ridge_committee.PairRidgeCommittee`), trained first on
"minima" only (the landscape structures), then retrained on the fly on the
gate's labels.  Prints:

* before (committee fixed, no reference): chains terminated by the hard cap;
* on the fly (gate: threshold → xTB label → retrain every K labels): chains
  terminated, labelled fraction of evaluated MC steps;
* committee energy error on held-out MC structures (accepted, never labelled)
  before and after on-the-fly training, with the committee's RMS σ there
  (calibration check: σ ≪ error means an overconfident committee, which the
  hard cap cannot catch).

Design (Butler, Hafizi & Day): both arms use the same start structures
(farthest point sampling from the lowest-energy minimum), the same per-chain
seeds, move set, lid and hard cap on the same measure (σ per molecule); the
cap/threshold ratio is the paper's 50/10 kJ/mol, scaled to this system's
lid.  The on-the-fly arm has one gate and one growing label set shared by
its chains, run one after another; each retrain fits the initial (minima)
data plus every label.  Members are resampled "stable" (a structure's member
assignments never change when labels are appended) and α is calibrated
with an error floor (``calibration="bias"``); ``--resampling fixed-size
--calibration ratio`` gives the earlier committee for comparison.

    python benchmarks/mc_on_the_fly.py [--steps 150 --chains 8 --out /tmp/mc_otf]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402

from committee_calc.gate import Gate  # noqa: E402
from committee_calc.labels import LabelStore  # noqa: E402
from committee_calc.mc_moves import MoveSet, make_whole, random_rotation  # noqa: E402
from committee_calc.montecarlo import ThresholdMC, select_starts  # noqa: E402
from committee_calc.ridge_committee import PairRidgeCommittee  # noqa: E402
from committee_calc.units import KJMOL  # noqa: E402

N_MOL = 4
MOVES = {"translate": {"probability": 2, "step": 0.25}, "rotate": {"probability": 2, "step": 15},
         "cell_volume": {"probability": 1, "step": 0.04}, "cell_angle": {"probability": 1, "step": 2},
         "cell_length": {"probability": 1, "step": 0.03}}


def xtb(method):
    from tblite.ase import TBLite

    return TBLite(method=method, verbosity=0)


def reference(structures, method):
    E, F = [], []
    for s in structures:
        a = s.copy()
        a.calc = xtb(method)
        E.append(a.get_potential_energy())
        F.append(a.get_forces())
    return np.array(E), F


def landscape(n, seed=0, a=4.6):
    """Water crystals: 4 molecules on an fcc-like sublattice, random orientations and cells."""
    rng = np.random.default_rng(seed)
    w = molecule("H2O")
    out = []
    for _ in range(n):
        cell = np.diag(a * (1 + 0.04 * rng.standard_normal(3))) + 0.15 * rng.standard_normal((3, 3))
        atoms = Atoms(cell=cell, pbc=True)
        for f in [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]:
            m = w.copy()
            m.positions = (m.positions - m.get_center_of_mass()) @ random_rotation(rng).T
            m.translate(np.array(f) @ cell)
            atoms += m
        atoms.wrap()
        out.append(make_whole(atoms)[0])
    return out


def make_model(structures, E, F, seed=0, resampling="stable", calibration="bias"):
    model = PairRidgeCommittee(["H", "O"], n_members=8, subsample=0.7, seed=seed, r_cut=5.0,
                               n_basis=10, ridge=1e-7, force_weight=0.1, resampling=resampling,
                               calibration=calibration)
    model.fit(structures, E, F)
    com = model.as_committee(molecules=N_MOL)
    com.ridge_model = model
    return com


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--landscape", type=int, default=10)
    p.add_argument("--perturb", type=int, default=3, help="perturbed copies per minimum in training")
    p.add_argument("--method", default="GFN1-xTB")
    p.add_argument("--lid-kjmol", type=float, default=10.0)
    p.add_argument("--threshold-kjmol", type=float, default=2.0)
    p.add_argument("--cap-kjmol", type=float, default=10.0)
    p.add_argument("--retrain-every", type=int, default=5)
    p.add_argument("--heldout", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resampling", choices=("stable", "fixed-size"), default="stable")
    p.add_argument("--calibration", choices=("bias", "ratio"), default="bias")
    p.add_argument("--out", default="/tmp/mc_on_the_fly")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    minima = landscape(a.landscape, seed=a.seed)
    E_min, _ = reference(minima, a.method)
    for s, e in zip(minima, E_min):
        s.info["energy"] = float(e)
    # initial training set: the "minima" and a few tiny rigid perturbations of each
    rng0 = np.random.default_rng(a.seed + 7)
    small = MoveSet({"translate": {"probability": 1, "step": 0.05}, "rotate": {"probability": 1, "step": 3}})
    land = list(minima)
    for s in minima:
        w, topo = make_whole(s)
        land += [small.propose(w, topo, rng0)[0] for _ in range(a.perturb)]
    E_land, F_land = reference(land, a.method)
    opts = {"resampling": a.resampling, "calibration": a.calibration}
    committee0 = make_model(land, E_land, F_land, seed=a.seed, **opts)
    idx = select_starts(minima, a.chains, committee=committee0)
    starts = [minima[i] for i in idx]
    lid = a.lid_kjmol * KJMOL * N_MOL
    thr = {"energy_std_per_molecule": a.threshold_kjmol * KJMOL}
    cap = {"energy_std_per_molecule": a.cap_kjmol * KJMOL}

    # -- before: committee trained on the landscape only, no reference; the cap stops chains
    before = []
    for c, s in enumerate(starts):
        mc = ThresholdMC(s, committee0, MOVES, lid_eV=lid, seed=[a.seed, c], hard_cap=cap)
        before.append((mc, mc.run(a.steps)))

    # -- on the fly: gate -> xTB label -> retrain every K labels
    store_path = out / "labels.extxyz"
    store_path.unlink(missing_ok=True)

    def retrain(path):
        frames = LabelStore(path).read()
        E = list(E_land) + [f.info["REF_energy"] for f in frames]
        F = list(F_land) + [f.arrays["REF_forces"] for f in frames]
        return make_model(land + frames, E, F, seed=a.seed, **opts)

    gate = Gate(committee0, xtb(a.method), thresholds=thr, hard_cap=cap, label_store=store_path,
                provenance={"driver": "mc-benchmark"}, retrain=retrain, retrain_every=a.retrain_every,
                molecules=N_MOL)
    otf, traj = [], []

    def keep(mc, rec):  # accepted MC structures answered by the committee: never labelled
        if rec["accepted"] and rec["gate_decision"] == "committee" and rec["step"] > 0:
            traj.append(mc.atoms.copy())

    for c, s in enumerate(starts):
        mc = ThresholdMC(s, gate, MOVES, lid_eV=lid, seed=[a.seed, c], run_id=f"otf{c}")
        otf.append((mc, mc.run(a.steps, callback=keep)))
    final = retrain(str(store_path)) if len(gate.label_store) else gate.committee

    # -- held-out MC structures: a random subset of the accepted, unlabelled ones
    rng = np.random.default_rng(a.seed + 99)
    pool = [traj[i] for i in rng.choice(len(traj), size=min(a.heldout, len(traj)), replace=False)]
    E_ho, _ = reference(pool, a.method)

    def err(com):
        pr = com.predict(pool)
        d = (np.array([r["energy"] for r in pr]) - E_ho) / N_MOL / KJMOL
        sd = np.array([r["energy_std"] for r in pr]) / N_MOL / KJMOL
        return float(np.sqrt(np.mean(d ** 2))), float(np.max(np.abs(d))), float(np.sqrt(np.mean(sd ** 2)))

    def stop_step(mc):
        return mc.step_index if mc.terminated else None

    n_eval = sum(len(r) for _, r in otf)
    n_lab = sum(sum(x["gate_decision"] == "reference" for x in r) for _, r in otf)
    res = {
        "reference": a.method, "chains": a.chains, "steps_per_chain": a.steps,
        "lid_kjmol_per_molecule": a.lid_kjmol, "threshold_kjmol": a.threshold_kjmol,
        "cap_kjmol": a.cap_kjmol, "retrain_every": a.retrain_every,
        "resampling": a.resampling, "calibration": a.calibration,
        "before_terminated_by_cap": sum(bool(m.terminated) for m, _ in before),
        "before_cap_stop_steps": [stop_step(m) for m, _ in before],
        "otf_terminated_by_cap": sum(bool(m.terminated) for m, _ in otf),
        "otf_cap_stop_steps": [stop_step(m) for m, _ in otf],
        "otf_evaluated_steps": n_eval, "otf_labelled_steps": n_lab,
        "otf_labelled_fraction": n_lab / n_eval, "otf_retrains": gate.n_retrains,
        "heldout_structures": len(pool),
        "heldout_rmse_kjmol_per_molecule_before": err(committee0)[0],
        "heldout_rmse_kjmol_per_molecule_after": err(final)[0],
        "heldout_maxerr_kjmol_per_molecule_before": err(committee0)[1],
        "heldout_maxerr_kjmol_per_molecule_after": err(final)[1],
        "heldout_rms_sigma_kjmol_per_molecule_before": err(committee0)[2],
        "heldout_rms_sigma_kjmol_per_molecule_after": err(final)[2],
        "alpha_before": committee0.ridge_model.alpha, "alpha_after": final.ridge_model.alpha,
        "error_floor_kjmol_per_molecule_before": committee0.ridge_model.bias_std / N_MOL / KJMOL,
        "error_floor_kjmol_per_molecule_after": final.ridge_model.bias_std / N_MOL / KJMOL,
        "wall_s": round(time.time() - t0, 1),
    }
    (out / "result.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k:45s} {v}")
    return res


if __name__ == "__main__":
    main()
