"""Threshold Monte Carlo over crystal structures, every energy through the gate.

The threshold algorithm (Schön & Jansen, Angew. Chem. Int. Ed. 35, 1286
(1996)) explores the energy basins reachable from a start structure below an
energy *lid*: a trial structure is accepted if and only if its energy is
below the current lid,

    lid(step) = E0 + ΔE_lid + min(step // lid_every, max_lid_raises) · ΔE_raise,

where ``E0`` is the energy of the start structure.  ``mode="downhill"``
accepts only strict energy decreases instead (a monotone walk).

Every energy comes from one :class:`~committee_calc.gate.Gate`: the committee
when it is trusted, else the reference (labelled, optionally retrained on).
``Gate(committee)`` without a reference is the committee-only evaluator; a
plain ASE calculator runs as ``Gate(calc)``.  The chain ends, with the reason
recorded in :attr:`ThresholdMC.terminated`, when the gate stops on a hard cap
(:class:`~committee_calc.errors.GateStop`: ``"hard cap: …"``) or meets
non-finite committee output it has no reference for
(:class:`~committee_calc.errors.NonFiniteOutputError`: ``"non-finite output: …"``);
with a reference, non-finite output is labelled like any untrusted structure.

User constraints: ASE constraints on the start structure (``FixAtoms``, ``FixCartesian``,
…) are applied to every trial move against the current structure
(:meth:`ThresholdMC.constrained`), so fixed atoms never move, and are kept in the
saved state.  ``displace`` picks only atoms the constraints let move, ``translate`` and
``rotate`` only molecules without a held atom, so no evaluation is spent on a move the
constraints undo.  Cell moves need a free, 3-D periodic cell: on a structure with
constraints or a non-periodic direction (a slab's vacuum) they are refused
(:func:`check_cell_moves`); the default move sets drop them there with a one-line note.

Biased sampling: with ``bias`` (:class:`committee_calc.bias.HAL`/:class:`~committee_calc.bias.UDD`)
the chain compares biased energies E + B(σ_E) (:func:`committee_calc.bias.apply_bias` on the gate's
answer); the records keep the unbiased trial energy and the bias beside them.

Resumability: :meth:`ThresholdMC.state` is a JSON-able dict with the current
structure (and its constraints), energies, lid schedule, adapted step sizes, counters and the
numpy ``bit_generator.state``; :meth:`ThresholdMC.from_state` continues the
same Markov chain with the same random stream.  A step whose label was
appended just before a kill is labelled again on resume through the gate's
labeller, which finds the stored label instead of calling the reference.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

from .. import keys as K
from ..bias import apply_bias, bias_from_dict, energy_calibrator
from ..errors import ConfigError, GateStop, NonFiniteOutputError
from ..gate import require_gate
from ..keys import BIAS_ENERGY, ENERGY_UNBIASED
from ..structures import atoms_from_dict, atoms_to_dict, is_bulk
from ..units import check_positive, kjmol_to_ev
from .moves import CELL_MOVES, DEFAULT_ATOM_MOVES, DEFAULT_MOVES, MoveSet, Topology, free_atoms, make_whole, parse_moves

MODES = ("threshold", "downhill")
log = logging.getLogger("committee_calc.mc")


def lid_from_units(n_atoms, n_molecules=None, lid_kjmol=None, lid_eV_per_atom=None) -> float:
    """Lid (or lid raise) [eV, whole cell] from kJ/mol per molecule or eV/atom.

    Give exactly one of ``lid_kjmol`` (needs ``n_molecules``) or
    ``lid_eV_per_atom``.  Raises ConfigError (both/neither, no molecule count)
    or UnitError (not a positive finite number).
    """
    if (lid_kjmol is None) == (lid_eV_per_atom is None):
        raise ConfigError("give exactly one of lid_kjmol (per molecule) or lid_eV_per_atom")
    if lid_kjmol is not None:
        if not n_molecules:
            raise ConfigError("a lid in kJ/mol per molecule needs the molecule count")
        return kjmol_to_ev(check_positive("lid_kjmol", lid_kjmol)) * int(n_molecules)
    return check_positive("lid_eV_per_atom", lid_eV_per_atom) * int(n_atoms)


def cell_move_problem(atoms) -> str | None:
    """Why cell moves cannot act on ``atoms`` (a phrase), or None: a structure with ASE
    constraints (a cell move would carry the held atoms with the cell) or without a full 3-D
    periodic cell (the cell would stretch the vacuum along a non-periodic direction)."""
    if atoms.constraints:
        names = sorted({type(c).__name__ for c in atoms.constraints})
        return f"the structure has constraints {names}"
    if not is_bulk(atoms):
        return (f"the structure is not 3-D periodic (pbc={[bool(p) for p in atoms.pbc]}, cell "
                f"rank {atoms.cell.rank}): the cell would stretch the vacuum")
    return None


def is_default_moves(moves) -> bool:
    """True when ``moves`` (a MoveSet spec dict) is one of the default move sets
    (:data:`~committee_calc.mc.moves.DEFAULT_MOVES`, :data:`~committee_calc.mc.moves.DEFAULT_ATOM_MOVES`)."""
    return isinstance(moves, dict) and any(moves == parse_moves(d) for d in (DEFAULT_MOVES, DEFAULT_ATOM_MOVES))


def check_cell_moves(moves, atoms):
    """``moves`` (MoveSet or spec dict) usable on ``atoms``: unchanged when the structure has
    no constraints and a 3-D periodic cell or the set has no cell moves; a default move set
    (:func:`is_default_moves`) without its cell moves, with a one-line note (log warning).
    Raises ConfigError for cell moves given explicitly on such a structure."""
    cell = [n for n in (moves if isinstance(moves, MoveSet) else MoveSet(moves)).names
            if n in CELL_MOVES]
    why = cell_move_problem(atoms) if cell else None
    if why is None:
        return moves
    if is_default_moves(moves):
        log.warning("MC: cell moves %s dropped from the default move set: %s", cell, why)
        return {n: v for n, v in moves.items() if n not in CELL_MOVES}
    raise ConfigError(f"cell moves {cell} cannot be used: {why}. Remove them from the moves "
                      "(e.g. --moves displace=1:0.1), or give a 3-D periodic structure without "
                      "constraints")


class ThresholdMC:
    """Threshold (lid) or downhill Monte Carlo on one structure.

    Parameters
    ----------
    atoms:
        start structure (copied; the caller's object is never touched).
    gate:
        the :class:`~committee_calc.gate.Gate` every energy comes from
        (``Gate(committee)`` for committee only; hard caps on the gate).
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
    run_id:
        written with every gate call (``info={"mc_run": run_id, "mc_step": k}``)
        so labels can be traced back to their chain and step.
    bias:
        a HAL/UDD bias (or its dict) for biased sampling, or None.

    Raises ConfigError / UnitError / MoleculeError for invalid input.
    """

    def __init__(self, atoms, gate, moves, lid_eV=None, mode="threshold",
                 lid_raise_eV=0.0, lid_every=None, max_lid_raises=None, molecules=None,
                 seed=None, adaptive_target=None, adaptive_every=50, run_id="mc", bond_mult=1.1,
                 bias=None):
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
        if adaptive_target is not None and not 0.0 < float(adaptive_target) < 1.0:
            raise ConfigError(f"adaptive_target must be in (0, 1), got {adaptive_target!r}")
        self.adaptive_target = None if adaptive_target is None else float(adaptive_target)
        self.adaptive_every = int(adaptive_every)
        if len(atoms) == 0:
            raise ConfigError("the start structure has no atoms")
        moves = check_cell_moves(moves, atoms)
        self.moves = moves if isinstance(moves, MoveSet) else MoveSet(moves)
        self.atoms, self.topology = make_whole(atoms, labels=molecules, mult=bond_mult)
        self._find_free_units()
        self.gate, self.bias = require_gate(gate, "ThresholdMC"), bias_from_dict(bias)
        self.run_id = str(run_id)
        self.rng = np.random.default_rng(seed)
        self.step_index = 0
        self.e0 = None
        self.energy = None
        self.n_accepted = 0
        self.terminated = None
        self.window = {n: [0, 0] for n in self.moves.names}  # attempts, accepts

    # ------------------------------------------------------------------ lid
    def lid_at(self, step: int) -> float:
        """Lid [eV, total] in force at ``step`` (inf in downhill mode)."""
        if self.lid_eV is None or self.e0 is None:
            return math.inf
        raises = step // self.lid_every if self.lid_every else 0
        if self.max_lid_raises is not None:
            raises = min(raises, self.max_lid_raises)
        return self.e0 + self.lid_eV + raises * self.lid_raise_eV

    def _find_free_units(self) -> None:
        """The atoms (``displace``) and molecules (``translate``, ``rotate``: no held atom) a
        move may pick; ConfigError when the constraints leave a chosen move nothing to move."""
        self.free_atoms = free_atoms(self.atoms)
        held = np.bincount(self.topology.labels, weights=~self.free_atoms,
                           minlength=self.topology.n_molecules)
        self.free_molecules = held == 0
        for name, free, what in (("displace", self.free_atoms, "atom"),
                                 ("translate", self.free_molecules, "molecule without a held atom"),
                                 ("rotate", self.free_molecules, "molecule without a held atom")):
            if name in self.moves.names and not free.any():
                raise ConfigError(f"the move {name!r} has nothing to move: the constraints hold "
                                  f"every {what.split()[0]} ({what} needed); free some atoms or "
                                  "drop the move")

    def _held(self, details) -> bool:
        """True when a proposed move picked a held atom or a molecule with a held atom."""
        if "atom" in details:
            return not self.free_atoms[details["atom"]]
        return "molecule" in details and not self.free_molecules[details["molecule"]]

    @property
    def n_molecules(self) -> int:
        return self.topology.n_molecules

    def _evaluate(self, atoms, step):
        res = self.gate.evaluate(atoms, step=step, info={"mc_run": self.run_id, "mc_step": int(step)})
        return res if self.bias is None else replace(res, results=apply_bias(
            res.results, self.bias, len(atoms), energy_calibrator(self.gate)))

    def initialise(self) -> dict:
        """Evaluate the start structure (step 0); sets E0 and the lid.

        Raises GateStop (start above the hard cap) or NonFiniteOutputError
        (non-finite committee output at the start and no reference).
        """
        try:
            res = self._evaluate(self.atoms, 0)
        except GateStop as exc:
            raise GateStop(
                f"the start structure already exceeds the hard uncertainty cap ({exc}); the "
                "committee cannot be trusted there: label it and retrain, or raise the cap"
            ) from exc
        except NonFiniteOutputError as exc:
            raise NonFiniteOutputError(f"the start structure: {exc}") from exc
        self.e0 = self.energy = res.energy
        return self._record(0, "start", True, res)

    def _record(self, step, move, accepted, res=None, step_size=math.nan):
        """One step as a dict: the CSV columns of :mod:`committee_calc.mc.io` in eV, plus
        ``results`` (the committee's results with the gate's measures) when evaluated."""
        m = res.measures if res is not None else {}
        std = float(m.get(K.ENERGY_STD, math.nan))
        rec = {"step": step, "move": move, "accepted": bool(accepted),
               "trial_energy_eV": res.energy if res is not None else math.nan,
               "energy_eV": self.energy, "lid_eV": self.lid_at(step),
               "energy_std_eV": std,
               "energy_std_per_molecule_eV": std / self.n_molecules,
               "energy_std_per_atom_eV": std / len(self.atoms),
               "forces_std_max_eVA": float(m.get(K.FORCES_STD_MAX, math.nan)),
               "gate_decision": res.decision if res is not None else "stop",
               "gate_reason": res.reason if res is not None else self.terminated,
               "label_index": res.label_index if res is not None else None,
               "step_size": step_size}
        if res is not None and ENERGY_UNBIASED in res.results:
            rec.update(trial_energy_unbiased_eV=res.results[ENERGY_UNBIASED], bias_energy_eV=res.results[BIAS_ENERGY])
        if res is not None:
            rec["results"] = {**m, **(res.committee_results or res.results)}
        return rec

    # ------------------------------------------------------------------ step
    def accepts(self, trial_energy: float, step: int) -> bool:
        if not math.isfinite(trial_energy):
            return False
        if self.mode == "downhill":
            return trial_energy < self.energy
        return trial_energy < self.lid_at(step)

    def step(self) -> dict:
        """One MC step; returns its record (see :meth:`_record`).  A gate stop ends the chain:
        ``terminated`` holds the reason and the record's decision is ``"stop"``."""
        if self.e0 is None:
            raise ConfigError("call initialise() (or resume from a state) before step()")
        if self.terminated:
            raise ConfigError(f"the chain has terminated ({self.terminated}); start a new one")
        k = self.step_index + 1
        trial, name, details = self.moves.propose(self.atoms, self.topology, self.rng)
        while self._held(details):  # pick again among the free atoms/molecules (same move)
            trial, name, details = self.moves.propose(self.atoms, self.topology, self.rng, name)
        trial = self.constrained(trial)
        step_size = self.moves.steps[name]
        try:
            res = self._evaluate(trial, k)
        except (GateStop, NonFiniteOutputError) as exc:
            why = "hard cap" if isinstance(exc, GateStop) else "non-finite output"
            self.terminated, self.step_index = f"{why}: {exc}", k
            return self._record(k, name, False, step_size=step_size)
        self.step_index = k
        acc = self.accepts(res.energy, k)
        if acc:
            self.atoms, self.energy = trial, res.energy
            self.n_accepted += 1
        rec = self._record(k, name, acc, res, step_size)
        self._adapt(name, acc)
        return rec

    def constrained(self, trial):
        """``trial`` with the user's ASE constraints of the current structure applied to the move
        (``set_positions(..., apply_constraint=True)`` from the current positions): atoms held by
        ``FixAtoms`` stay where they are, ``FixCartesian``/``FixedLine``/``FixedPlane`` keep their
        fixed components, also under cell moves.  Without constraints ``trial`` is returned as is."""
        if not self.atoms.constraints:
            return trial
        out = self.atoms.copy()  # current positions and the constraints
        out.calc = None
        out.set_cell(trial.cell, scale_atoms=False)
        out.set_positions(trial.positions, apply_constraint=True)
        return out

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
        """Run until ``n_steps`` total steps or a gate stop; ``callback(self, record)`` per step."""
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
                "run_id": self.run_id, "rng": self.rng.bit_generator.state,
                "atoms": atoms_to_dict(self.atoms), "labels": self.topology.labels.tolist(),
                "bias": self.bias.to_dict() if self.bias else None}

    @classmethod
    def from_state(cls, state: dict, gate) -> ThresholdMC:
        """Rebuild a chain from :meth:`state` (same RNG stream, lid schedule, step sizes)
        evaluating through ``gate``.  A ``hard_cap`` entry of older states is ignored (caps
        belong to the gate)."""
        if state.get("version") != 1:
            raise ConfigError(f"unknown MC state version {state.get('version')!r}")
        mc = cls.__new__(cls)
        mc.gate, mc.bias = require_gate(gate, "ThresholdMC"), bias_from_dict(state.get("bias"))
        mc.mode = state["mode"]
        mc.lid_eV, mc.lid_raise_eV = state["lid_eV"], state["lid_raise_eV"]
        mc.lid_every, mc.max_lid_raises = state["lid_every"], state["max_lid_raises"]
        mc.moves = MoveSet({n: {"probability": p, "step": st} for n, p, st in state["moves"]},
                           step_bounds={n: tuple(b) for n, b in state["step_bounds"].items()})
        mc.moves.probabilities = np.array([p for _, p, _ in state["moves"]])  # exact, not renormalised
        mc.adaptive_target, mc.adaptive_every = state["adaptive_target"], state["adaptive_every"]
        mc.atoms = atoms_from_dict(state["atoms"])
        labels = np.asarray(state["labels"], dtype=int)
        mc.topology = Topology(labels=labels, n_molecules=int(labels.max()) + 1)
        mc.run_id = state["run_id"]
        why = cell_move_problem(mc.atoms) if set(mc.moves.names) & set(CELL_MOVES) else None
        if why:
            raise ConfigError(f"the saved MC state uses cell moves, which cannot be used: {why}; "
                              "start a new run (new --out) without cell moves")
        mc._find_free_units()
        mc.rng = np.random.default_rng()
        mc.rng.bit_generator.state = state["rng"]
        mc.step_index, mc.e0, mc.energy = state["step"], state["e0_eV"], state["energy_eV"]
        mc.n_accepted, mc.terminated = state["n_accepted"], state["terminated"]
        mc.window = {k: list(v) for k, v in state["window"].items()}
        return mc


__all__ = ["MODES", "ThresholdMC", "cell_move_problem", "check_cell_moves", "free_atoms",
           "is_default_moves", "lid_from_units"]
