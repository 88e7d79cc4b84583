"""Threshold Monte Carlo over crystal structures, every energy through the gate.

The threshold algorithm (Schön & Jansen) explores the energy basins reachable
from a start structure below an energy *lid*: a trial structure is accepted
if and only if its energy is below the current lid,

    lid(step) = E0 + ΔE_lid + min(step // lid_every, max_lid_raises) · ΔE_raise,

where ``E0`` is the energy of the start structure.  ``mode="downhill"``
accepts only strict energy decreases instead (a monotone walk).

Energies come from a :class:`~committee_calc.gate.Gate` (committee when it is
trusted, else the reference, labelled and optionally retrained on) or from
any plain ASE calculator.  A gate hard-cap stop (``GateStop``) ends the chain
with the reason recorded.

Resumability: :meth:`ThresholdMC.state` is a JSON-able dict with the current
structure, energies, lid schedule, adapted step sizes, counters and the
numpy ``bit_generator.state``; :meth:`ThresholdMC.from_state` continues the
same Markov chain with the same random stream.  The driver saves it
atomically after every step.
"""
from __future__ import annotations

import math

import numpy as np
from ase import Atoms

from ..errors import ConfigError, GateStop
from .moves import MoveSet, Topology, make_whole
from ..units import check_positive, kjmol_to_ev

MODES = ("threshold", "downhill")


def lid_from_units(n_atoms, n_molecules=None, lid_kjmol=None, lid_eV_per_atom=None) -> float:
    """Lid (or lid raise) in total eV from kJ/mol per molecule or eV/atom."""
    if (lid_kjmol is None) == (lid_eV_per_atom is None):
        raise ConfigError("give exactly one of lid_kjmol (per molecule) or lid_eV_per_atom")
    if lid_kjmol is not None:
        if not n_molecules:
            raise ConfigError("a lid in kJ/mol per molecule needs the molecule count")
        return kjmol_to_ev(check_positive("lid_kjmol", lid_kjmol)) * int(n_molecules)
    return check_positive("lid_eV_per_atom", lid_eV_per_atom) * int(n_atoms)


def _is_gate(calc) -> bool:
    return hasattr(calc, "evaluate") and hasattr(calc, "n_reference_calls")


def evaluate_energy(calc, atoms, step=None, info=None, hard_cap=None) -> dict:
    """Energy [eV] of ``atoms`` via a gate or plain calculator (``atoms`` untouched).

    Returns ``{"energy", "decision", "reason", "measures", "label_index",
    "results"}`` where ``results`` holds the committee's uncertainty keys
    when a committee was evaluated.  ``GateStop`` propagates.  ``hard_cap``
    ({measure: value}, internal units) applies the gate's hard cap to a plain
    committee calculator (committee-only runs, no reference).
    """
    if _is_gate(calc):
        res = calc.evaluate(atoms, step=step, info=info)
        return {"energy": float(res.results["energy"]), "decision": res.decision,
                "reason": res.reason, "measures": dict(res.measures or {}),
                "label_index": res.label_index,
                "results": dict(res.committee_results or res.results)}
    work = atoms.copy()
    work.calc = calc
    energy = float(work.get_potential_energy())
    results = dict(getattr(calc, "results", {}) or {})
    measures = {k: float(results[k]) for k in ("energy_std", "energy_std_per_atom",
                                                "energy_std_per_molecule", "forces_std_max",
                                                "force_uncertainty_relative")
                if k in results}
    capped = {k: measures.get(k, math.inf) for k, cap in (hard_cap or {}).items()
              if not measures.get(k, math.inf) <= cap}
    if capped:
        raise GateStop("committee uncertainty above the hard cap: " + ", ".join(
            f"{k}={v:.4g} > {hard_cap[k]:.4g}" for k, v in capped.items()))
    return {"energy": energy, "decision": "calculator", "reason": "", "measures": measures,
            "label_index": None, "results": results}


def _atoms_to_dict(atoms) -> dict:
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}


def _atoms_from_dict(d) -> Atoms:
    return Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])


class ThresholdMC:
    """Threshold (lid) or downhill Monte Carlo on one structure.

    Parameters
    ----------
    atoms:
        start structure (copied; the caller's object is never touched).
    calculator:
        a Gate (preferred) or any ASE calculator.
    moves:
        a :class:`MoveSet` or its dict spec.
    lid_eV:
        ΔE_lid [eV, total] above the start energy; > 0 (required in threshold mode).
    lid_raise_eV, lid_every, max_lid_raises:
        raise the lid by ``lid_raise_eV`` every ``lid_every`` steps, at most
        ``max_lid_raises`` times (None = unlimited).
    molecules:
        (N,) molecule labels, or None to find molecules from connectivity.
    seed:
        seed of the ``numpy.random.Generator`` (PCG64).
    adaptive_target, adaptive_every:
        tune each move's step so its acceptance approaches the target
        fraction, updated after every ``adaptive_every`` attempts of it.
    hard_cap:
        {measure: value} (internal units) for a plain committee calculator;
        with a Gate, give the cap to the gate instead.
    run_id:
        written with every gate call (``info={"mc_run": run_id, "mc_step": k}``)
        so labels can be traced back and replayed on resume.
    """

    def __init__(self, atoms, calculator, moves, lid_eV=None, mode="threshold",
                 lid_raise_eV=0.0, lid_every=None, max_lid_raises=None, molecules=None,
                 seed=None, adaptive_target=None, adaptive_every=50, run_id="mc", bond_mult=1.1,
                 hard_cap=None):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if mode == "threshold" or lid_eV is not None:
            self.lid_eV = check_positive("lid (energy above the start structure)",
                                         lid_eV if lid_eV is not None else float("nan"))
        else:
            self.lid_eV = None
        self.lid_raise_eV = check_positive("lid_raise_eV", lid_raise_eV, allow_zero=True)
        if lid_every is not None and (int(lid_every) != lid_every or lid_every < 1):
            raise ConfigError(f"lid_every must be a positive integer, got {lid_every!r}")
        self.lid_every = int(lid_every) if lid_every else None
        self.max_lid_raises = None if max_lid_raises is None else int(max_lid_raises)
        self.moves = moves if isinstance(moves, MoveSet) else MoveSet(moves)
        if adaptive_target is not None and not 0.0 < float(adaptive_target) < 1.0:
            raise ConfigError(f"adaptive_target must be in (0, 1), got {adaptive_target!r}")
        self.adaptive_target = None if adaptive_target is None else float(adaptive_target)
        self.adaptive_every = int(adaptive_every)
        if len(atoms) == 0:
            raise ConfigError("the start structure has no atoms")
        self.atoms, self.topology = make_whole(atoms, labels=molecules, mult=bond_mult)
        self.calculator = calculator
        self.run_id = str(run_id)
        self.rng = np.random.default_rng(seed)
        self.step_index = 0
        self.e0 = None
        self.energy = None
        self.n_accepted = 0
        self.terminated = None
        self.window = {n: [0, 0] for n in self.moves.names}  # attempts, accepts
        self.hard_cap = dict(hard_cap or {})
        #: callable(atoms, step) -> evaluation or None, consulted once (first step after a resume)
        self.label_lookup = None

    # ------------------------------------------------------------------ lid
    def lid_at(self, step: int) -> float:
        """Lid [eV, total] in force at ``step`` (inf in downhill mode)."""
        if self.lid_eV is None or self.e0 is None:
            return math.inf
        raises = step // self.lid_every if self.lid_every else 0
        if self.max_lid_raises is not None:
            raises = min(raises, self.max_lid_raises)
        return self.e0 + self.lid_eV + raises * self.lid_raise_eV

    @property
    def n_molecules(self) -> int:
        return self.topology.n_molecules

    def _evaluate(self, atoms, step):
        if self.label_lookup is not None:
            lookup, self.label_lookup = self.label_lookup, None  # only the first step after resume
            found = lookup(atoms, step)
            if found is not None:
                return found
        return evaluate_energy(self.calculator, atoms, step=step,
                               info={"mc_run": self.run_id, "mc_step": int(step)},
                               hard_cap=self.hard_cap)

    def initialise(self) -> dict:
        """Evaluate the start structure (step 0); sets E0 and the lid."""
        try:
            ev = self._evaluate(self.atoms, 0)
        except GateStop as exc:
            raise GateStop(
                f"the start structure already exceeds the hard uncertainty cap ({exc}); the "
                "committee cannot be trusted there: label it and retrain, or raise the cap"
            ) from exc
        self.e0 = self.energy = ev["energy"]
        if not math.isfinite(self.e0):
            raise ConfigError(f"the start structure has a non-finite energy ({self.e0})")
        rec = self._record(0, "start", True, ev, trial_energy=self.e0)
        rec["results"] = ev["results"]
        return rec

    def _record(self, step, move, accepted, ev, trial_energy=None):
        m = ev.get("measures", {}) if ev else {}
        std = m.get("energy_std", ev["results"].get("energy_std", math.nan) if ev else math.nan)
        return {"step": step, "move": move, "accepted": bool(accepted),
                "trial_energy_eV": math.nan if trial_energy is None else float(trial_energy),
                "energy_eV": self.energy, "lid_eV": self.lid_at(step),
                "energy_std_eV": float(std),
                "energy_std_per_molecule_eV": float(std) / self.n_molecules,
                "energy_std_per_atom_eV": float(std) / len(self.atoms),
                "forces_std_max_eVA": float(m.get("forces_std_max", math.nan)),
                "gate_decision": ev.get("decision", "") if ev else "stop",
                "gate_reason": ev.get("reason", "") if ev else "",
                "label_index": ev.get("label_index") if ev else None,
                "step_size": self.moves.steps.get(move, math.nan) if move in self.moves.steps else math.nan}

    # ------------------------------------------------------------------ step
    def accepts(self, trial_energy: float, step: int) -> bool:
        if not math.isfinite(trial_energy):
            return False
        if self.mode == "downhill":
            return trial_energy < self.energy
        return trial_energy < self.lid_at(step)

    def step(self) -> dict:
        """One MC step; returns its record (see the driver's CSV columns)."""
        if self.e0 is None:
            raise ConfigError("call initialise() (or resume from a state) before step()")
        if self.terminated:
            raise ConfigError(f"the chain has terminated ({self.terminated}); start a new one")
        k = self.step_index + 1
        trial, name, _ = self.moves.propose(self.atoms, self.topology, self.rng)
        step_size = self.moves.steps[name]
        try:
            ev = self._evaluate(trial, k)
        except GateStop as exc:
            self.terminated = f"hard cap: {exc}"
            self.step_index = k
            rec = self._record(k, name, False, None)
            rec["gate_reason"] = self.terminated
            return rec
        acc = self.accepts(ev["energy"], k)
        if acc:
            self.atoms, self.energy = trial, ev["energy"]
            self.n_accepted += 1
        self.step_index = k
        rec = self._record(k, name, acc, ev, trial_energy=ev["energy"])
        rec["step_size"] = step_size
        rec["results"] = ev["results"]
        self._adapt(name, acc)
        return rec

    def _adapt(self, name, accepted):
        if self.adaptive_target is None:
            return
        w = self.window[name]
        w[0] += 1
        w[1] += int(accepted)
        if w[0] >= self.adaptive_every:
            rate = w[1] / w[0]
            self.moves.scale_step(name, float(np.clip(rate / self.adaptive_target, 0.5, 2.0))
                                  if rate > 0 else 0.5)
            w[0] = w[1] = 0

    def run(self, n_steps: int, callback=None) -> list:
        """Run until ``n_steps`` total steps or a hard-cap stop; ``callback(self, record)`` per step."""
        records = []
        if self.e0 is None:
            rec = self.initialise()
            records.append(rec)
            if callback:
                callback(self, rec)
        while self.step_index < n_steps and not self.terminated:
            rec = self.step()
            records.append(rec)
            if callback:
                callback(self, rec)
        return records

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """JSON-able state: enough to continue the same chain exactly."""
        return {"version": 1, "step": self.step_index, "mode": self.mode, "e0_eV": self.e0,
                "energy_eV": self.energy, "lid_eV": self.lid_eV, "lid_raise_eV": self.lid_raise_eV,
                "lid_every": self.lid_every, "max_lid_raises": self.max_lid_raises,
                "current_lid_eV": self.lid_at(self.step_index) if self.e0 is not None else None,
                "n_accepted": self.n_accepted, "terminated": self.terminated,
                "moves": [[n, float(p), float(self.moves.steps[n])]  # a list: order fixes the RNG mapping
                          for n, p in zip(self.moves.names, self.moves.probabilities)],
                "step_bounds": {n: list(b) for n, b in self.moves.step_bounds.items()},
                "window": self.window,
                "adaptive_target": self.adaptive_target, "adaptive_every": self.adaptive_every,
                "run_id": self.run_id, "hard_cap": self.hard_cap, "rng": self.rng.bit_generator.state,
                "atoms": _atoms_to_dict(self.atoms), "labels": self.topology.labels.tolist()}

    @classmethod
    def from_state(cls, state: dict, calculator) -> "ThresholdMC":
        """Rebuild a chain from :meth:`state` (same RNG stream, lid schedule, step sizes)."""
        if state.get("version") != 1:
            raise ConfigError(f"unknown MC state version {state.get('version')!r}")
        mc = cls.__new__(cls)
        mc.mode = state["mode"]
        mc.lid_eV, mc.lid_raise_eV = state["lid_eV"], state["lid_raise_eV"]
        mc.lid_every, mc.max_lid_raises = state["lid_every"], state["max_lid_raises"]
        mc.moves = MoveSet({n: {"probability": p, "step": st} for n, p, st in state["moves"]},
                           step_bounds={n: tuple(b) for n, b in state["step_bounds"].items()})
        mc.moves.probabilities = np.array([p for _, p, _ in state["moves"]])  # exact, not renormalised
        mc.adaptive_target, mc.adaptive_every = state["adaptive_target"], state["adaptive_every"]
        mc.atoms = _atoms_from_dict(state["atoms"])
        labels = np.asarray(state["labels"], dtype=int)
        mc.topology = Topology(labels=labels, n_molecules=int(labels.max()) + 1)
        mc.calculator = calculator
        mc.run_id = state["run_id"]
        mc.rng = np.random.default_rng()
        mc.rng.bit_generator.state = state["rng"]
        mc.step_index, mc.e0, mc.energy = state["step"], state["e0_eV"], state["energy_eV"]
        mc.n_accepted, mc.terminated = state["n_accepted"], state["terminated"]
        mc.window = {k: list(v) for k, v in state["window"].items()}
        mc.hard_cap = dict(state.get("hard_cap") or {})
        mc.label_lookup = None
        return mc


def label_replay(store, run_id):
    """``lookup(atoms, step)`` for :attr:`ThresholdMC.label_lookup`: on resume, a label that
    the interrupted run appended for this very step and structure (same ``mc_run``,
    ``mc_step`` and ``label_hash``) is reused instead of calling the reference again,
    so a kill between the label append and the state save never duplicates a label."""
    from ..io import read_uncertainties
    from ..structures import structure_hash

    def lookup(atoms, step):
        if store is None or not len(store):
            return None
        h = structure_hash(atoms)
        for i, frame in enumerate(store.read()):
            if (str(frame.info.get("prov_mc_run")) == str(run_id)
                    and int(frame.info.get("prov_mc_step", -1)) == int(step)
                    and frame.info.get("label_hash") == h):
                com = read_uncertainties(frame, prefix=store.committee_prefix)
                measures = {k: float(com[k]) for k in ("energy_std", "energy_std_per_atom",
                                                       "energy_std_per_molecule", "forces_std_max")
                            if k in com}
                return {"energy": float(frame.info[store.energy_key]), "decision": "reference",
                        "reason": "label of the interrupted run reused on resume",
                        "measures": measures, "label_index": i, "results": com}
        return None

    return lookup


# ---------------------------------------------------------------- seeding
def select_starts(structures, n: int, energies=None, committee=None, descriptors=None) -> list:
    """Indices of ``n`` start structures: farthest point sampling in descriptor space,
    starting from the lowest-energy structure.

    ``energies`` (n_structures,) [eV]: given, else ``info["energy"]``, else
    predicted by ``committee``.  ``descriptors`` (n_structures, d): given, else
    :func:`committee_calc.descriptors.structure_descriptors` (standardised).
    """
    from ..analysis.select import farthest_point_sampling

    structures = list(structures)
    if not structures:
        raise ConfigError("no structures to choose start structures from")
    if int(n) < 1:
        raise ConfigError(f"the number of start structures must be >= 1, got {n}")
    n = min(int(n), len(structures))
    if energies is None:
        if all("energy" in a.info for a in structures):
            energies = [a.info["energy"] for a in structures]
        elif committee is not None:
            energies = [r["energy"] for r in committee.predict(structures)]
        else:
            raise ConfigError("start-structure selection needs energies: info['energy'] on "
                              "every structure, or a committee to predict them")
    energies = np.asarray(energies, dtype=float)
    if energies.shape != (len(structures),):
        raise ConfigError(f"got {energies.shape} energies for {len(structures)} structures")
    start = int(np.nanargmin(energies))
    if n == 1:
        return [start]
    if descriptors is None:
        from ..descriptors import standardise, structure_descriptors

        descriptors = standardise(structure_descriptors(structures, committee=committee))
    X = np.asarray(descriptors, dtype=float)
    return [int(i) for i in farthest_point_sampling(X, n, start=start)]
