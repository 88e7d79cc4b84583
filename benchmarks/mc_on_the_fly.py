"""On-the-fly learning inside threshold MC on a small molecular crystal (water, 4 molecules).

Reference: tblite GFN1-xTB (periodic; ``--method GFN2-xTB`` for GFN2).  Committee: a
resampling committee of ridge-fitted pair-basis potentials
(:class:`committee_calc.members.ridge.PairRidgeCommittee`), trained first on
"minima" only (the landscape structures), then retrained on the fly on the
gate's labels.  Prints:

* before (committee fixed, no reference: a committee-only gate): chains terminated by
  the hard cap (or non-finite committee output);
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

Neural-network committee (``--committee-backend mace``): the same system,
starts, seeds, moves, lid, cap/threshold and arms, but the committee is a
tiny MACE committee trained with the project's own trainer:
:func:`committee_calc.train.train_committee` on the minima (+ perturbations)
for the "before" arm, and :func:`committee_calc.train.make_retrainer` every
``--retrain-every`` labels in the on-the-fly arm (each round trains on the
minima plus every label so far, like the ridge refit).  Members differ by
seed and bootstrap subset; α is calibrated after every fit on the
out-of-bag residuals of the bootstrap (:func:`oob_alpha`; default
``ratio``: ``bias`` collapses to α = 0.01 here).  Settings: ``MACE_OPTIONS``
below, 4 members, ``--mace-epochs`` 40 epochs on the 40 initial structures
and the same structure-epochs per retrain, float64, CPU, ``--train-jobs`` 2
members at a time; one fit takes ~2.5–3.5 min on the 2 shared cores, so use
a large K (``--retrain-every 100``: ~17 min in all; 50: ~30 min).
Start structures are chosen without committee descriptors in both backends
(farthest point sampling in the SOAP/pair space from the lowest xTB minimum),
so the MACE and ridge runs start from the same structures.

    python benchmarks/mc_on_the_fly.py [--steps 150 --chains 8 --out /tmp/mc_otf]
    python benchmarks/mc_on_the_fly.py --committee-backend mace --retrain-every 100 --out /tmp/mc_otf_mace
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

from committee_calc.errors import GateStop, NonFiniteOutputError  # noqa: E402
from committee_calc.gate import Gate  # noqa: E402
from committee_calc.labels import LabelStore  # noqa: E402
from committee_calc.mc.moves import MoveSet, make_whole, random_rotation  # noqa: E402
from committee_calc.mc.starts import select_starts  # noqa: E402
from committee_calc.mc.threshold import ThresholdMC, lid_from_units  # noqa: E402
from committee_calc.measures import parse_limits  # noqa: E402
from committee_calc.train.ridge import PairRidgeCommittee  # noqa: E402
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


class RidgeBackend:
    """In-process ridge pair committee: ``initial`` and ``retrain`` refit in seconds."""

    name = "ridge"

    def __init__(self, a, out):
        self.opts = {"resampling": a.resampling, "calibration": a.calibration}
        self.seed = a.seed

    def fit(self, structures, E, F):
        com = make_model(structures, E, F, seed=self.seed, **self.opts)
        com.alpha, com.error_floor_eV = com.ridge_model.alpha, com.ridge_model.bias_std
        return com


#: tiny MACE for CPU: 2 interactions, 8 scalar channels (max_L 0), r_max 4.5 Å
MACE_OPTIONS = {"num_channels": 8, "max_L": 0, "r_max": 4.5, "num_interactions": 2, "correlation": 2,
                "max_ell": 2, "num_radial_basis": 6, "MLP_irreps": "8x0e", "radial_MLP": "[16]",
                "batch_size": 5, "valid_batch_size": 10, "lr": 0.01, "energy_weight": 20,
                "forces_weight": 1}


def write_training_set(path, structures, E, F):
    """Plain extxyz with REF_energy [eV] / REF_forces [eV/Å] (the label-store keys)."""
    from ase.io import write

    frames = []
    for s, e, f in zip(structures, E, F):
        a = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        a.info["REF_energy"] = float(e)
        a.arrays["REF_forces"] = np.asarray(f, float).reshape(len(a), 3)
        frames.append(a)
    write(str(path), frames, format="extxyz")
    return str(path)


def oob_alpha(yaml_path, committee, E, calibration):
    """(α, error floor [eV]) from out-of-bag residuals of the members' bootstrap sets.

    ``E`` (n,) [eV] reference energies of the training file, in its order.
    ``"bias"``: maximum likelihood of r_i ~ N(0, α²σ_i² + σ_b²) (the ridge
    committee's estimator); ``"ratio"``: α² = Σr²/Σσ², floor 0.  r_i: mean of
    the members that did not see structure i minus E_i (structures seen by
    ≤ 2 of the 4 members); σ_i²: variance over all members (ddof=1).
    """
    import yaml
    from ase.io import read

    from committee_calc.train.ridge import _calibrate_with_bias

    spec = yaml.safe_load(open(yaml_path))
    frames = read(spec["training"]["train_file"], index=":")
    subsets = [np.unique(r["bootstrap_indices"]) for r in spec["training"]["members"]]
    P = np.array([r["energy_members"] for r in committee.with_calibration(None).predict(frames)]).T
    E = np.asarray(E, float)
    if calibration == "none":
        return 1.0, 0.0
    if calibration == "bias":
        return _calibrate_with_bias(E, P, subsets)
    seen = np.zeros(P.shape, bool)
    for m, sub in enumerate(subsets):
        seen[m, sub] = True
    ok = np.flatnonzero((~seen).sum(0) >= 2)
    if len(ok) < 3:
        return 1.0, 0.0
    r2 = np.array([(E[i] - P[~seen[:, i], i].mean()) ** 2 for i in ok])
    return float(np.sqrt(r2.sum() / P[:, ok].var(0, ddof=1).sum())), 0.0


class MaceBackend:
    """MACE committee via the project's trainer: ``train_committee`` then ``make_retrainer``."""

    name = "mace"

    def __init__(self, a, out):
        self.out, self.calibration = out / "mace", a.calibration
        self.train_opts = {"n_members": a.members, "seeds": [100 * a.seed + k for k in range(a.members)],
                           "bootstrap": True, "max_epochs": a.mace_epochs, "model_options": MACE_OPTIONS,
                           "n_jobs": a.train_jobs, "stress_key": None, "device": "cpu"}
        self.budget = None     # structure-epochs per member, fixed by the initial training
        self.n_fits, self.train_s = 0, 0.0

    def fit(self, structures, E, F):
        from committee_calc.config import load_committee
        from committee_calc.train import make_retrainer, train_committee

        t = time.time()
        data = write_training_set(self.out / f"train_{self.n_fits:03d}.extxyz", structures, E, F)
        if self.n_fits == 0:   # the minima-only committee
            yaml_path = train_committee(data, self.out / "initial", backend="mace", **self.train_opts)
            self.budget = self.train_opts["max_epochs"] * len(structures)
        else:                  # an on-the-fly round: make_retrainer's next round_NNN, with the
            # same optimisation budget (structure-epochs) as the initial training
            opts = dict(self.train_opts, max_epochs=max(5, round(self.budget / len(structures))))
            retrainer = make_retrainer(backend="mace", out_dir=self.out / "otf", **opts)
            retrainer(data)
            yaml_path = retrainer.last_yaml
        raw = load_committee(yaml_path, molecules=N_MOL)
        alpha, floor = oob_alpha(yaml_path, raw, E, self.calibration)
        com = raw.with_calibration({"energy": alpha, "forces": alpha})
        com.alpha, com.error_floor_eV, com.yaml_path = alpha, floor, yaml_path
        self.n_fits += 1
        self.train_s += time.time() - t
        print(f"[mace] fit {self.n_fits}: {len(structures)} structures, α={alpha:.3g}, "
              f"{time.time() - t:.0f} s", flush=True)
        return com


def run_chain(s, gate, c, a, lid, callback=None, **kw):
    """One chain (seed ``[seed, c]``) through ``gate``; a start structure the gate stops on
    (hard cap, or non-finite committee output without a reference) counts as a chain
    terminated at step 0."""
    mc = ThresholdMC(s, gate, MOVES, lid_eV=lid, seed=[a.seed, c], **kw)
    try:
        return mc, mc.run(a.steps, callback=callback)
    except (GateStop, NonFiniteOutputError) as exc:
        mc.terminated = f"stopped at the start structure: {exc}"
        return mc, []


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--committee-backend", choices=("ridge", "mace"), default="ridge")
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
    p.add_argument("--resampling", choices=("stable", "fixed-size"), default="stable",
                   help="ridge only")
    p.add_argument("--calibration", choices=("bias", "ratio", "none"), default=None,
                   help="α estimator; default bias (ridge), ratio (mace); none: α = 1 (mace only)")
    p.add_argument("--members", type=int, default=4, help="mace only: committee members")
    p.add_argument("--mace-epochs", type=int, default=40, help="mace only: epochs per training")
    p.add_argument("--train-jobs", type=int, default=2, help="mace only: members trained at a time")
    p.add_argument("--out", default="/tmp/mc_on_the_fly")
    a = p.parse_args(argv)
    if a.calibration is None:
        a.calibration = "ratio" if a.committee_backend == "mace" else "bias"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    backend = (MaceBackend if a.committee_backend == "mace" else RidgeBackend)(a, out)
    if a.committee_backend == "mace":
        (out / "mace").mkdir(exist_ok=True)

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
    committee0 = backend.fit(land, E_land, F_land)
    t_init = time.time() - t0
    # starts: lowest xTB minimum, then FPS in SOAP/pair space (no committee features: the
    # same starts for every backend)
    idx = select_starts(minima, a.chains)
    starts = [minima[i] for i in idx]
    lid = lid_from_units(len(starts[0]), N_MOL, lid_kjmol=a.lid_kjmol)
    thr = parse_limits(energy_std_per_molecule_kjmol=a.threshold_kjmol)
    cap = parse_limits(energy_std_per_molecule_kjmol=a.cap_kjmol, what="hard cap")

    # -- before: committee trained on the landscape only, no reference (a committee-only
    # gate); the cap, or non-finite committee output, stops chains
    t1 = time.time()
    before_gate = Gate(committee0, hard_cap=cap, molecules=N_MOL)
    before = [run_chain(s, before_gate, c, a, lid) for c, s in enumerate(starts)]
    t_before = time.time() - t1

    # -- on the fly: gate -> xTB label -> retrain every K labels
    store_path = out / "labels.extxyz"
    store_path.unlink(missing_ok=True)

    def retrain(path):
        frames = LabelStore(path).read()
        retrain.n_labels = len(frames)
        E = list(E_land) + [f.info["REF_energy"] for f in frames]
        F = list(F_land) + [f.arrays["REF_forces"] for f in frames]
        return backend.fit(land + frames, E, F)

    retrain.n_labels = 0
    gate = Gate(committee0, xtb(a.method), thresholds=thr, hard_cap=cap, label_store=store_path,
                provenance={"driver": "mc-benchmark"}, retrain=retrain, retrain_every=a.retrain_every,
                molecules=N_MOL, retrain_errors="raise")
    traj = []

    def keep(mc, rec):  # accepted MC structures answered by the committee: never labelled
        if rec["accepted"] and rec["gate_decision"] == "committee" and rec["step"] > 0:
            traj.append(mc.atoms.copy())

    t1 = time.time()
    otf = [run_chain(s, gate, c, a, lid, callback=keep, run_id=f"otf{c}") for c, s in enumerate(starts)]
    # the final committee: minima + every label (the gate's last one if it was fitted on all of them)
    final = retrain(str(store_path)) if len(gate.label_store) > retrain.n_labels else gate.committee
    t_otf = time.time() - t1

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

    e0, e1 = err(committee0), err(final)
    n_eval = sum(len(r) for _, r in otf)
    n_lab = sum(sum(x["gate_decision"] == "reference" for x in r) for _, r in otf)
    res = {
        "committee_backend": a.committee_backend,
        "reference": a.method, "chains": a.chains, "steps_per_chain": a.steps,
        "lid_kjmol_per_molecule": a.lid_kjmol, "threshold_kjmol": a.threshold_kjmol,
        "cap_kjmol": a.cap_kjmol, "retrain_every": a.retrain_every,
        "calibration": a.calibration,
        **({"resampling": a.resampling} if a.committee_backend == "ridge" else
           {"members": a.members, "mace_epochs": a.mace_epochs, "mace_options": MACE_OPTIONS}),
        "before_terminated_by_cap": sum(bool(m.terminated) for m, _ in before),
        "before_cap_stop_steps": [stop_step(m) for m, _ in before],
        "before_evaluated_steps": sum(len(r) for _, r in before),
        "otf_terminated_by_cap": sum(bool(m.terminated) for m, _ in otf),
        "otf_cap_stop_steps": [stop_step(m) for m, _ in otf],
        "otf_evaluated_steps": n_eval, "otf_labelled_steps": n_lab,
        "otf_labelled_fraction": n_lab / max(n_eval, 1), "otf_retrains": gate.n_retrains,
        "heldout_structures": len(pool),
        "heldout_rmse_kjmol_per_molecule_before": e0[0],
        "heldout_rmse_kjmol_per_molecule_after": e1[0],
        "heldout_maxerr_kjmol_per_molecule_before": e0[1],
        "heldout_maxerr_kjmol_per_molecule_after": e1[1],
        "heldout_rms_sigma_kjmol_per_molecule_before": e0[2],
        "heldout_rms_sigma_kjmol_per_molecule_after": e1[2],
        "alpha_before": committee0.alpha, "alpha_after": final.alpha,
        "error_floor_kjmol_per_molecule_before": committee0.error_floor_eV / N_MOL / KJMOL,
        "error_floor_kjmol_per_molecule_after": final.error_floor_eV / N_MOL / KJMOL,
        "initial_training_s": round(t_init, 1), "before_arm_s": round(t_before, 1),
        "otf_arm_s": round(t_otf, 1),
        "wall_s": round(time.time() - t0, 1),
    }
    (out / "result.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k:45s} {v}")
    return res


if __name__ == "__main__":
    main()
