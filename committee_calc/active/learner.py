"""Active learning over a crystal-structure landscape (query by committee).

::

    learner = ActiveLearner(landscape, reference=TBLite(method="GFN2-xTB"),
                            trainer=RidgeTrainer(species=["H", "O"]), out_dir="al",
                            strategy="highest_uncertainty", quantity="dE", batch_size=10,
                            threshold_eV=kjmol_to_ev(2.0), energy_cutoff_eV=kjmol_to_ev(20))
    summary = learner.run()

Loop: pool = structures within ``energy_cutoff_eV`` (per unit) of the
baseline minimum; initial batch by FPS from the lowest-baseline structure;
then repeat {train on all labels -> predict the unlabelled pool -> stop? ->
select a batch -> label with the reference into the label store}.  Stops when
the fraction of unlabelled candidates with σ > threshold falls to
``target_fraction`` or below (``"converged"``), when no candidates are left
(``"pool_empty"``), at ``max_train_size`` labels, or ``max_iterations``.

Training quantity (``quantity``): ``E``, ``E+F``, ``dE``, ``dE+dF`` — the Δ
forms train on reference minus baseline; predictions add the baseline back.
σ is the committee ``energy_std`` divided by the molecules (or atoms) per
structure; thresholds and cutoffs are in eV per that unit.

Resumable: labels go to an append-only :class:`~committee_calc.labels.LabelStore`
(each with ``prov_pool_index``); ``state.json`` (atomic) holds the pending
batch and history.  A rerun after a kill labels only the pending structures
not yet in the store, so nothing is labelled twice.

Trainer protocol: ``trainer(train_file, work_dir, use_forces) -> committee``
where the file holds the training targets under ``AL_energy`` [eV] and
``AL_forces`` [eV/Å] and ``committee.predict(list_of_atoms)`` returns
schema dicts (``energy``, ``energy_std``, ``forces_std_max``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import select as sel
from ..errors import ConfigError
from ..fileio import load_json, save_json_atomic, write_structures_atomic
from ..analysis.landscape import Landscape, candidate_pool

QUANTITIES = {"E": (False, False), "E+F": (False, True), "dE": (True, False), "dE+dF": (True, True)}
_ALIASES = {"ΔE": "dE", "ΔE+ΔF": "dE+dF", "DE": "dE", "DE+DF": "dE+dF", "delta_E": "dE"}
TRAIN_ENERGY_KEY, TRAIN_FORCES_KEY = "AL_energy", "AL_forces"


def parse_quantity(q) -> str:
    q = _ALIASES.get(q, q)
    if q not in QUANTITIES:
        raise ConfigError(f"unknown training quantity {q!r}; use one of {list(QUANTITIES)}")
    return q


def training_frames(labels, quantity):
    """Label-store frames -> training frames with AL_energy/AL_forces (Δ if asked)."""
    delta, forces = QUANTITIES[parse_quantity(quantity)]
    out = []
    for f in labels:
        a = f.copy()
        a.calc = None
        e = float(f.info["REF_energy"])
        if delta:
            e -= float(f.info["BASE_energy"])
        a.info = {TRAIN_ENERGY_KEY: e, "prov_pool_index": f.info.get("prov_pool_index")}
        a.arrays = {k: v for k, v in a.arrays.items() if k in ("numbers", "positions")}
        if forces:
            F = np.asarray(f.arrays["REF_forces"], float)
            if delta:
                if "BASE_forces" not in f.arrays:
                    raise ConfigError("Δ-force training needs baseline forces in the landscape")
                F = F - f.arrays["BASE_forces"]
            a.arrays[TRAIN_FORCES_KEY] = F
        out.append(a)
    return out


class ActiveLearner:
    """Query-by-committee loop (see module docstring for the algorithm)."""

    def __init__(self, landscape: Landscape, reference, trainer, out_dir, strategy="highest_uncertainty",
                 quantity="dE", batch_size=10, initial_size=None, threshold_eV=0.01,
                 energy_cutoff_eV=None, target_fraction=0.0, max_train_size=None,
                 max_iterations=1000, ei_window_eV=0.0, descriptors=None, seed=0,
                 label_store=None, progress=False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
        if strategy not in sel.STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; use one of {sel.STRATEGIES}")
        self.quantity = parse_quantity(quantity)
        self.delta, self.use_forces = QUANTITIES[self.quantity]
        if self.delta and landscape.baseline_energy is None:
            raise ConfigError(f"training quantity {self.quantity!r} is Δ-learning but the landscape has no "
                              "baseline energies; add them or train on 'E'/'E+F'")
        if self.delta and self.use_forces and landscape.baseline_forces is None:
            raise ConfigError("training quantity 'dE+dF' needs baseline forces in the landscape")
        from ..units import check_positive

        self.threshold = check_positive("uncertainty threshold", threshold_eV)
        if not 0.0 <= float(target_fraction) < 1.0:
            raise ConfigError(f"target_fraction must be in [0, 1), got {target_fraction!r}")
        self.landscape, self.trainer, self.strategy = landscape, trainer, strategy
        self.pool = candidate_pool(landscape, energy_cutoff_eV)
        if self.pool.size == 0:
            raise ConfigError("the energy cutoff leaves no candidate structures; raise it")
        if self.pool.size < 2 and energy_cutoff_eV is not None:
            raise ConfigError(f"the energy cutoff {energy_cutoff_eV} eV per {landscape.unit} leaves only "
                              "the global minimum as a candidate; raise it")
        self.batch_size = int(batch_size)
        self.initial_size = int(initial_size or batch_size)
        self.target_fraction = float(target_fraction)
        self.max_train_size = max_train_size
        self.max_iterations, self.ei_window = int(max_iterations), float(ei_window_eV)
        self.seed, self.progress = seed, progress
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        from ..reference import as_reference

        self.reference = as_reference(reference, failed_dir=self.out_dir / "failed")
        if label_store is None:
            from ..labels import LabelStore

            label_store = LabelStore(self.out_dir / "labels.extxyz")
        self.store = label_store
        self._X = descriptors
        self.state_path = self.out_dir / "state.json"
        self.committee = None

    # -------------------------------------------------------------- helpers
    @property
    def X(self):
        if self._X is None:
            from ..descriptors import standardise, structure_descriptors

            self._X = standardise(structure_descriptors([self.landscape.structures[i] for i in range(len(self.landscape))]))
        return self._X

    def labelled(self) -> list:
        return [int(f.info["prov_pool_index"]) for f in self.store.read()
                if f.info.get("prov_pool_index") is not None]

    def _label(self, idx, iteration, committee_results=None):
        ls = self.landscape
        atoms = ls.structures[idx].copy()
        res = self.reference.compute(atoms, ("energy", "forces"))
        base = None
        if ls.baseline_energy is not None:
            base = {"energy": float(ls.baseline_energy[idx])}
            if ls.baseline_forces is not None:
                base["forces"] = ls.baseline_forces[idx]
        self.store.append(atoms, res, committee_results=committee_results, baseline_results=base,
                          provenance={"driver": "active_learn", "iteration": iteration,
                                      "pool_index": int(idx), "name": ls.names[idx]})

    def train(self, iteration):
        frames = training_frames(self.store.read(), self.quantity)
        work = self.out_dir / f"iter{iteration:03d}"
        work.mkdir(exist_ok=True)
        train_file = work / "train.extxyz"
        write_structures_atomic(train_file, frames)
        self.committee = self.trainer(train_file, work, self.use_forces)
        return self.committee

    def predict(self, indices, committee=None):
        """Per index: total energy per unit [eV], σ per unit [eV], forces_std_max [eV/Å]."""
        committee = committee or self.committee
        ls = self.landscape
        res = committee.predict([ls.structures[i] for i in indices])
        e = np.array([r.get("energy", np.nan) for r in res], float)
        s = np.array([r.get("energy_std", np.inf) for r in res], float)
        f = np.array([r.get("forces_std_max", np.inf) for r in res], float)
        idx = np.asarray(indices, int)
        if self.delta:
            e = e + ls.baseline_energy[idx]
        n = ls.n_units[idx]
        return e / n, np.where(np.isfinite(s), s, np.inf) / n, f

    def _select(self, cand, e, s, f, labelled, n):
        rng = np.random.default_rng([int(self.seed), len(labelled)])
        st = self.strategy
        if st == "random":
            loc = sel.random_above_threshold(s, n, self.threshold, rng)
        elif st == "highest_uncertainty":
            loc = sel.highest_uncertainty(s, n, lower=self.threshold)
        elif st == "highest_uncertainty_fps":
            loc = sel.highest_uncertainty_fps(s, self.X[cand], n, self.threshold)
        elif st == "fps":
            loc = sel.farthest_point_sampling(self.X[cand], n, start=int(np.argmax(s)))
        elif st == "energy_force_dbscan":
            above = np.flatnonzero(s > self.threshold)
            sub = sel.energy_force_dbscan(e[above], f[above], self.X[cand][above], n)
            loc = [int(above[k]) for k in sub]
        else:  # expected_improvement over the whole pool with a ridge RS surrogate
            from ..members.ridge import ridge_rs_fit_predict

            frames = {int(fr.info["prov_pool_index"]): fr for fr in self.store.read()}
            ys = [float(frames[i].info["REF_energy"]) / self.landscape.n_units[i] for i in labelled]
            fp = ridge_rs_fit_predict(self.X[self.pool], seed=self.seed)
            pos = {int(p): k for k, p in enumerate(self.pool)}
            picks = sel.kriging_believer(fp, [pos[i] for i in labelled], ys, n, self.ei_window)
            cpos = {int(c): k for k, c in enumerate(cand)}
            loc = [cpos[int(self.pool[p])] for p in picks if int(self.pool[p]) in cpos]
        return [int(cand[k]) for k in loc]

    # -------------------------------------------------------------- loop
    def run(self) -> dict:
        from ..progress import progress_iter

        state = load_json(self.state_path, default=None) or {"iteration": 0, "pending": [], "history": [],
                                                               "stopped": None}
        state.setdefault("config", {"strategy": self.strategy, "quantity": self.quantity,
                                    "batch_size": self.batch_size, "threshold_eV": self.threshold,
                                    "pool_size": int(self.pool.size)})
        if state["config"].get("quantity") != self.quantity or state["config"].get("strategy") != self.strategy:
            raise ConfigError(f"{self.state_path} belongs to a run with {state['config']}; use a new out_dir")
        if state.get("stopped"):
            self.train(state["iteration"])
            return self._summary(state)
        labelled = self.labelled()
        if not labelled and not state["pending"]:
            base = (self.landscape.baseline_per_unit()[self.pool] if self.landscape.baseline_energy is not None
                    else np.zeros(self.pool.size))
            first = sel.farthest_point_sampling(self.X[self.pool], min(self.initial_size, self.pool.size),
                                                start=int(np.argmin(base)))
            state["pending"] = [int(self.pool[k]) for k in first]
            save_json_atomic(self.state_path, state)
        while True:
            done = set(self.labelled())
            todo = [i for i in state["pending"] if i not in done]
            for i in progress_iter(todo, enabled=self.progress, desc=f"label it{state['iteration']}"):
                self._label(i, state["iteration"])
            labelled = self.labelled()
            state["pending"] = []
            self.train(state["iteration"])
            cand = np.array([i for i in self.pool if i not in set(labelled)], int)
            rec = {"iteration": state["iteration"], "n_train": len(labelled), "n_candidates": int(cand.size)}
            stop = None
            if cand.size == 0:
                stop = "pool_empty"
            else:
                e, s, f = self.predict(cand)
                frac = float(np.mean(s > self.threshold))
                rec.update(fraction_above=frac, sigma_max=float(np.max(s)), sigma_mean=float(np.mean(s)))
                if frac <= self.target_fraction:
                    stop = "converged"
                elif self.max_train_size is not None and len(labelled) >= self.max_train_size:
                    stop = "max_train_size"
                elif state["iteration"] + 1 >= self.max_iterations:
                    stop = "max_iterations"
            if stop is None:
                n = self.batch_size
                if self.max_train_size is not None:
                    n = min(n, int(self.max_train_size) - len(labelled))
                batch = self._select(cand, e, s, f, labelled, n)
                if not batch:
                    stop = "converged"
            rec["stop"] = stop
            state["history"].append(rec)
            if stop is not None:
                state["stopped"] = stop
                save_json_atomic(self.state_path, state)
                return self._summary(state)
            state["iteration"] += 1
            state["pending"] = batch
            save_json_atomic(self.state_path, state)

    def _summary(self, state) -> dict:
        return {"stopped": state["stopped"], "iterations": state["iteration"] + 1,
                "n_train": len(self.labelled()), "pool_size": int(self.pool.size),
                "history": state["history"], "committee": self.committee}


class BackendTrainer:
    """Trainer over :func:`committee_calc.train.train_committee` (MACE, NequIP, ...).

    Trains ``n_members`` models on the AL training file in ``work_dir`` and
    loads the committee YAML it writes.  Options go to ``train_committee``.
    """

    def __init__(self, backend="mace", n_members=4, **options):
        self.backend, self.n_members, self.options = backend, int(n_members), options

    def __call__(self, train_file, work_dir, use_forces):
        from ..config import load_committee
        from ..train import train_committee

        yaml_path = train_committee(str(train_file), str(work_dir), backend=self.backend,
                                    n_members=self.n_members, energy_key=TRAIN_ENERGY_KEY,
                                    forces_key=TRAIN_FORCES_KEY if use_forces else None,
                                    stress_key=None, **self.options)
        return load_committee(yaml_path)
