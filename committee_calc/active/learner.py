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

Committee predictions are read through ``Gate(committee).evaluate_many`` (the
one evaluator); labels are made by the one
:class:`~committee_calc.labeller.Labeller` (reference energy and forces, the
baseline values, provenance with ``pool_index``).  Resumable: ``state.json``
(atomic) holds the pending batch and history; a rerun after a kill labels the
pending batch again and the labeller returns the labels already in the store
without a reference call, so nothing is computed twice.  A landscape
structure counts as labelled when its geometry (structure hash) is in the store.

Trainer protocol: ``trainer(train_file, work_dir, use_forces) -> committee``
where the file holds the training targets under ``AL_energy`` [eV] and
``AL_forces`` [eV/Å] (:class:`committee_calc.train.ridge.RidgeTrainer`,
:class:`committee_calc.active.trainers.BackendTrainer`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import keys as K
from ..analysis import select as sel
from ..analysis.landscape import Landscape, candidate_pool
from ..descriptors import standardise, structure_descriptors
from ..errors import ConfigError
from ..fileio import load_json, save_json_atomic, write_structures_atomic
from ..gate import Gate
from ..labeller import Labeller
from ..progress import Progress
from ..scale.labelling import label_pending
from ..structures import structure_hash
from ..units import check_positive

QUANTITIES = {"E": (False, False), "E+F": (False, True), "dE": (True, False), "dE+dF": (True, True)}
_ALIASES = {"ΔE": "dE", "ΔE+ΔF": "dE+dF", "DE": "dE", "DE+DF": "dE+dF", "delta_E": "dE"}
TRAIN_ENERGY_KEY, TRAIN_FORCES_KEY = "AL_energy", "AL_forces"


def _check_count(name, value) -> None:
    """An integer >= 1 (a size or a number of iterations); ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def parse_quantity(q) -> str:
    """Canonical training quantity (E, E+F, dE, dE+dF; Δ spellings accepted); ConfigError otherwise."""
    q = _ALIASES.get(q, q)
    if q not in QUANTITIES:
        raise ConfigError(f"unknown training quantity {q!r}; use one of {list(QUANTITIES)}")
    return q


def training_frames(labels, quantity, energy_key="REF_energy", forces_key="REF_forces",
                    baseline_prefix="BASE_"):
    """Label-store frames -> training frames with AL_energy [eV] / AL_forces (N,3) [eV/Å]
    (reference minus baseline for the Δ quantities; the keys are the label store's)."""
    delta, forces = QUANTITIES[parse_quantity(quantity)]
    out = []
    for f in labels:
        a = f.copy()
        a.calc = None
        e = float(f.info[energy_key])
        if delta:
            e -= float(f.info[baseline_prefix + K.ENERGY])
        a.info = {TRAIN_ENERGY_KEY: e, "prov_pool_index": f.info.get("prov_pool_index")}
        a.arrays = {k: v for k, v in a.arrays.items() if k in ("numbers", "positions")}
        if forces:
            F = np.asarray(f.arrays[forces_key], float)
            if delta:
                if baseline_prefix + K.FORCES not in f.arrays:
                    raise ConfigError("Δ-force training needs baseline forces in the landscape")
                F = F - f.arrays[baseline_prefix + K.FORCES]
            a.arrays[TRAIN_FORCES_KEY] = F
        out.append(a)
    return out


def committee_results(committee, images, progress=False, batch_size=None) -> list:
    """Committee results per image through ``Gate(committee).evaluate_many`` (batched committee
    calls of ``batch_size`` structures, default 16; ``progress``: a progress line per batch);
    None for an image whose committee output is not finite (σ counts as infinite)."""
    many = Gate(committee).evaluate_many(images, nonfinite="none", progress=progress,
                                         batch_size=batch_size)
    return [None if r is None else r.committee_results for r in many]


class ActiveLearner:
    """Query-by-committee loop (see module docstring for the algorithm).

    landscape: the :class:`~committee_calc.analysis.landscape.Landscape`;
    reference: ASE calculator, ReferenceSpec or YAML; trainer: see the module docstring;
    threshold_eV, energy_cutoff_eV, ei_window_eV: eV per landscape unit (molecule or atom);
    label_store: LabelStore or path (default ``out_dir/labels.extxyz``).
    executor: a ``concurrent.futures.Executor`` (e.g. a Dask cluster's): each batch's labels as
    one task per label, appended here in order (:func:`committee_calc.scale.labelling.label_pending`).
    Raises ConfigError for inconsistent options (checked before anything is written).
    """

    def __init__(self, landscape: Landscape, reference, trainer, out_dir, strategy="highest_uncertainty",
                 quantity="dE", batch_size=10, initial_size=None, threshold_eV=0.01,
                 energy_cutoff_eV=None, target_fraction=0.0, max_train_size=None,
                 max_iterations=1000, ei_window_eV=0.0, descriptors=None, seed=0,
                 label_store=None, progress=False, executor=None):
        _check_count("batch size (--batch-size)", batch_size)
        for name, value in (("initial size (--initial-size)", initial_size),
                            ("max train size (--max-train-size)", max_train_size),
                            ("max iterations (--max-iterations)", max_iterations)):
            if value is not None:
                _check_count(name, value)
        if strategy not in sel.STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; use one of {sel.STRATEGIES}")
        self.quantity = parse_quantity(quantity)
        self.delta, self.use_forces = QUANTITIES[self.quantity]
        if self.delta and landscape.baseline_energy is None:
            raise ConfigError(f"training quantity {self.quantity!r} is Δ-learning but the landscape has no "
                              "baseline energies; add them or train on 'E'/'E+F'")
        if self.delta and self.use_forces and landscape.baseline_forces is None:
            raise ConfigError("training quantity 'dE+dF' needs baseline forces in the landscape")
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
        self.executor = executor  # a concurrent.futures.Executor: one reference task per label (scale-out)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.labeller = Labeller(reference, label_store if label_store is not None
                                 else self.out_dir / "labels.extxyz",
                                 provenance={"driver": "active_learn"})
        self.store = self.labeller.store
        self._by_hash: dict = {}
        for i, atoms in enumerate(landscape.structures):
            self._by_hash.setdefault(structure_hash(atoms), []).append(i)
        self._X = descriptors
        self.state_path = self.out_dir / "state.json"
        self.committee = None

    # -------------------------------------------------------------- helpers
    @property
    def X(self):
        if self._X is None:
            self._X = standardise(structure_descriptors(list(self.landscape.structures)))
        return self._X

    def labels(self) -> dict:
        """{landscape index: label frame} for every landscape structure in the store (store order)."""
        out = {}
        for f in self.store.read():
            for i in self._by_hash.get(f.info.get("label_hash"), ()):
                out.setdefault(i, f)
        return out

    def labelled(self) -> list:
        return list(self.labels())

    def _label(self, idx, iteration):
        """Reference label of landscape structure ``idx`` through the labeller (no call if stored)."""
        ls = self.landscape
        return self.labeller.label(ls.structures[idx], stress=False, baseline_results=ls.baseline(idx),
                                   provenance={"iteration": iteration, "pool_index": int(idx),
                                               "name": ls.names[idx]})

    def train(self, iteration):
        s = self.store
        frames = training_frames(s.read(), self.quantity, s.energy_key, s.forces_key, s.baseline_prefix)
        work = self.out_dir / f"iter{iteration:03d}"
        work.mkdir(exist_ok=True)
        train_file = work / "train.extxyz"
        write_structures_atomic(train_file, frames)
        self.committee = self.trainer(train_file, work, self.use_forces)
        return self.committee

    def predict(self, indices, committee=None):
        """Per index: total energy per unit [eV], σ per unit [eV], forces_std_max [eV/Å] (each (n,))."""
        ls = self.landscape
        coms = committee_results(committee or self.committee, [ls.structures[i] for i in indices],
                                 progress=self.progress)
        e = np.array([c[K.ENERGY] if c else np.nan for c in coms], float)
        s = np.array([c.get(K.ENERGY_STD, np.inf) if c else np.inf for c in coms], float)
        f = np.array([c.get(K.FORCES_STD_MAX, np.inf) if c else np.inf for c in coms], float)
        idx = np.asarray(indices, int)
        if self.delta:
            e = e + ls.baseline_energy[idx]
        n = ls.n_units[idx]
        return e / n, np.where(np.isfinite(s), s, np.inf) / n, f

    def _select(self, cand, e, s, f, labels, n):
        rng = np.random.default_rng([int(self.seed), len(labels)])
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
            pos = {int(p): k for k, p in enumerate(self.pool)}
            lab = [i for i in labels if i in pos]
            ys = [float(labels[i].info[self.store.energy_key]) / self.landscape.n_units[i] for i in lab]
            fp = sel.ridge_rs_fit_predict(self.X[self.pool], seed=self.seed)
            picks = sel.kriging_believer(fp, [pos[i] for i in lab], ys, n, self.ei_window)
            cpos = {int(c): k for k, c in enumerate(cand)}
            loc = [cpos[int(self.pool[p])] for p in picks if int(self.pool[p]) in cpos]
        return [int(cand[k]) for k in loc]

    # -------------------------------------------------------------- loop
    def run(self) -> dict:
        """Run (or resume) the loop; returns the summary (stopped, iterations, n_train,
        pool_size, history, committee)."""
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
        if not self.labelled() and not state["pending"]:
            base = (self.landscape.baseline_per_unit()[self.pool] if self.landscape.baseline_energy is not None
                    else np.zeros(self.pool.size))
            first = sel.farthest_point_sampling(self.X[self.pool], min(self.initial_size, self.pool.size),
                                                start=int(np.argmin(base)))
            state["pending"] = [int(self.pool[k]) for k in first]
            save_json_atomic(self.state_path, state)
        with Progress(self.label_budget(), "learn", unit="labels", initial=len(self.labelled()),
                      enabled=self.progress) as bar:
            return self._loop(state, bar)

    def label_budget(self) -> int:
        """The labels a run can take at most, known before it starts (the work its progress lines
        count): the candidate pool, at most ``max_train_size``, at most the initial batch plus
        ``batch_size`` per further iteration; a run that converges earlier jumps to the end."""
        n = min(int(self.pool.size), self.initial_size + (self.max_iterations - 1) * self.batch_size)
        return max(1, min(n, int(self.max_train_size)) if self.max_train_size is not None else n)

    def _loop(self, state, bar) -> dict:
        while True:
            if self.executor is not None:  # labels as tasks, appended here; the loop below then finds them
                label_pending(self.executor, self.labeller, self.landscape, state["pending"], state["iteration"],
                              progress=self.progress)
            for i in state["pending"]:
                self._label(i, state["iteration"])
                bar.update(1, postfix=f"iteration {state['iteration']}: labelled {self.landscape.names[i]}")
            labels = self.labels()
            state["pending"] = []
            self.train(state["iteration"])
            cand = np.array([i for i in self.pool if i not in labels], int)
            rec = {"iteration": state["iteration"], "n_train": len(labels), "n_candidates": int(cand.size)}
            stop = None
            if cand.size == 0:
                stop = "pool_empty"
            else:
                e, s, f = self.predict(cand)
                frac = float(np.mean(s > self.threshold))
                rec.update(fraction_above=frac, sigma_max=float(np.max(s)), sigma_mean=float(np.mean(s)))
                if frac <= self.target_fraction:
                    stop = "converged"
                elif self.max_train_size is not None and len(labels) >= self.max_train_size:
                    stop = "max_train_size"
                elif state["iteration"] + 1 >= self.max_iterations:
                    stop = "max_iterations"
            if stop is None:
                n = self.batch_size
                if self.max_train_size is not None:
                    n = min(n, int(self.max_train_size) - len(labels))
                batch = self._select(cand, e, s, f, labels, n)
                if not batch:
                    stop = "converged"
            rec["stop"] = stop
            state["history"].append(rec)
            bar.update(0, force=True, postfix=f"iteration {state['iteration']}: {len(labels)} labels, "
                       + (f"{100 * rec['fraction_above']:.0f}% of {cand.size} candidates above the threshold"
                          if "fraction_above" in rec else "no candidates left"))
            if stop is not None:
                state["stopped"] = stop
                save_json_atomic(self.state_path, state)
                bar.update(bar.total - bar.n, force=True, postfix=f"stopped: {stop}")  # the rest is not needed
                return self._summary(state)
            state["iteration"] += 1
            state["pending"] = batch
            save_json_atomic(self.state_path, state)

    def _summary(self, state) -> dict:
        return {"stopped": state["stopped"], "iterations": state["iteration"] + 1,
                "n_train": len(self.labelled()), "pool_size": int(self.pool.size),
                "history": state["history"], "committee": self.committee}
