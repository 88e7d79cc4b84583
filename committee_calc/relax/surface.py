"""The calculator a gated relaxation's optimiser sees: one surface at a time.

Every evaluation goes through the relaxer's :class:`~committee_calc.gate.Gate`.
The *surface* of the relaxation is the decision of its last evaluation
(``committee`` or ``reference``).  Hysteresis: on the reference surface the
gate is asked with ``threshold_scale = reentry_factor`` (< 1), so a structure
that fell back returns to the committee only once its spread is below
``threshold × reentry_factor``.  A change of surface sets ``switched`` (the
relaxer restarts its optimiser with fresh memory); a change back to the
committee counts as a re-entry.

``forced`` (reference only: verification, polishing, a structure pinned to
the reference) evaluates the committee for the record and takes the reference
result: ``gate.evaluate(..., threshold_scale=0)`` falls back on any spread, and
a structure the gate still trusts (zero spread, no thresholds) is labelled
through ``gate.label``.

Batching (:mod:`.batched`): the relaxation flow asks :meth:`PolicyCalculator.need` before every
evaluation of a new geometry; that checks the geometry guards (:mod:`.guards`, status
``exploded``) and yields, so a scheduler can compute the committee's output for many
relaxations in one batched call and hand it over with :meth:`PolicyCalculator.provide`.  The
calculator uses a handed-over output only for exactly that geometry (and the same committee);
otherwise, and always on the per-structure path, it asks the gate's committee itself.  Either
way the committee's answer passes the force guard before the gate decides (reference calls,
labels), so both paths take the same decisions.

Each new evaluation becomes a checkpoint *frame* (passed to ``on_frame``): a
copy of the structure with the user's constraints (not ``FixSymmetry``), the
result used, the committee uncertainties and :class:`RelaxState` in ``info``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from .. import keys as K
from ..errors import CommitteeCalculationError, CommitteeError, ConfigError, GateStop
from ..io import attach_uncertainties, read_uncertainties
from ..structures import same_geometry

RESULT_KEYS = (K.ENERGY, K.FORCES, K.STRESS)
#: what a relaxation is doing: gated descent, pinned to the reference, verification, polishing
PHASES = ("relax", "pinned", "verify", "polish")
#: what :meth:`PolicyCalculator.need` yields: the relaxation waits for a committee evaluation
EVALUATE = "evaluate"


class Stop(Exception):
    """Ends a relaxation from inside an evaluation with ``status`` and ``reason``."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class RelaxState:
    """Counters and surface of one relaxation; saved in every frame's ``info`` (``relax_*``).

    evaluations: index of the next new geometry; steps: index of the current one;
    committee, reference, labels: calls made; switches, reentries: surface changes (all, and
    back to the committee); surface: decision of the last evaluation (None before the first);
    phase: one of :data:`PHASES`; verify_step: step of the verification (-1: not yet).
    """

    evaluations: int = 0
    steps: int = 0
    committee: int = 0
    reference: int = 0
    labels: int = 0
    switches: int = 0
    reentries: int = 0
    surface: str | None = None
    phase: str = "relax"
    verify_step: int = -1

    def info(self) -> dict:
        return {"relax_step": int(self.steps), "relax_committee_calls": self.committee,
                "relax_reference_calls": self.reference, "relax_labels": self.labels,
                "relax_switches": self.switches, "relax_reentries": self.reentries,
                "relax_phase": self.phase, "relax_verify_step": self.verify_step}

    @classmethod
    def from_frame(cls, frame) -> RelaxState:
        """The state a checkpoint frame was written in (frames of earlier versions: phase relax)."""
        i = frame.info
        phase = str(i.get("relax_phase", "relax"))
        return cls(evaluations=int(i.get("relax_step", 0)), steps=int(i.get("relax_step", 0)),
                   committee=int(i.get("relax_committee_calls", 0)),
                   reference=int(i.get("relax_reference_calls", 0)),
                   labels=int(i.get("relax_labels", 0)), switches=int(i.get("relax_switches", 0)),
                   reentries=int(i.get("relax_reentries", 0)),
                   surface=str(i.get(K.GATE_DECISION, K.COMMITTEE)),
                   phase=phase if phase in PHASES else "relax",
                   verify_step=int(i.get("relax_verify_step", -1)))


def resume_results(frame):
    """(atoms, results, committee_results, decision) stored on a checkpoint frame, or None."""
    res = dict(frame.calc.results) if frame.calc is not None else {}
    if K.ENERGY not in res or K.FORCES not in res:
        return None
    com = read_uncertainties(frame) or None
    return frame, res, com, str(frame.info.get(K.GATE_DECISION, K.COMMITTEE))


class PolicyCalculator(Calculator):
    """Gate evaluation + surface bookkeeping + checkpoint frames + stop policies.

    relaxer: the :class:`~committee_calc.relax.gated.GatedRelaxer`; state: its
    :class:`RelaxState`; reuse: a resumed frame's stored result (no new call for it);
    constraints: the user's constraints, put on every frame; volume0: the start volume [Å³]
    for the volume guard (``relaxer.guards``, None: no guards).
    """

    implemented_properties = (K.ENERGY, K.FREE_ENERGY, K.FORCES, K.STRESS)

    def __init__(self, relaxer, info, on_frame, state, reuse=None, constraints=(), volume0=None):
        super().__init__()
        self.r = relaxer
        self.gate = relaxer.gate
        self.info = dict(info or {})
        self.on_frame = on_frame
        self.state = state
        self.reuse = reuse
        self.constraints = list(constraints)
        self.forced = state.phase != "relax"
        self.switched = False
        self.reevaluate = False  # the next evaluation is of the current geometry again
        self.frames = []
        self.last = None  # (results, committee_results, decision)
        self.guards, self.volume0 = getattr(relaxer, "guards", None), volume0
        self._checked = None  # geometry last passed by the geometry guards
        self._given = None  # (geometry, committee output, committee) handed over by provide

    def check_state(self, atoms, tol=1e-15):
        """ASE's test, with a fast path for the common case of bit-identical atoms (every
        relaxation step reads the current results a few times): same answer, no ``allclose``."""
        a = self.atoms
        if a is not None and a.arrays.keys() == atoms.arrays.keys() \
                and np.array_equal(a.cell.array, atoms.cell.array) and np.array_equal(a.pbc, atoms.pbc) \
                and all(np.array_equal(a.arrays[k], atoms.arrays[k]) for k in all_changes
                        if k in a.arrays):
            return []
        return super().check_state(atoms, tol)

    # ------------------------------------------------------------------ batching
    def needs(self, atoms) -> bool:
        """True when reading the results of ``atoms`` evaluates a new geometry (not the current
        one, not the resumed frame's)."""
        if self.reuse is not None and same_geometry(self.reuse[0], atoms):
            return False
        return self.atoms is None or K.FORCES not in self.results or bool(self.check_state(atoms))

    def need(self, atoms):
        """Generator: before ``atoms`` is evaluated anew, check the geometry guards (raise
        :class:`Stop` ``exploded``) and yield :data:`EVALUATE` once; nothing when it is current."""
        if self.needs(atoms):
            self._guard_geometry(atoms)
            yield EVALUATE

    def provide(self, atoms, committee_results) -> None:
        """Hand over the committee's output for the geometry of ``atoms`` (batched elsewhere)."""
        self._given = (_geometry(atoms), committee_results, self.gate.committee)

    def _guard_geometry(self, atoms):
        geo = _geometry(atoms)
        if self.guards is not None and not _same(geo, self._checked):
            why = self.guards.geometry(atoms, self.volume0)
            if why is not None:
                start = self.state.evaluations == 0  # the input itself, before any step
                raise Stop("exploded", f"exploded: {why}" + (" in the input structure (before any step: fix "
                                                               "the structure or loosen --guard-*)" if start else ""))
        self._checked = geo

    def _committee(self, atoms, props):
        """The committee's output for ``atoms``: handed over, else computed now; force guard."""
        given, self._given = self._given, None
        if given is not None and given[2] is self.gate.committee and _same(given[0], _geometry(atoms)):
            com = given[1]
        else:
            com = member_call(lambda: self.gate.committee_output(atoms, props))
        why = None if self.guards is None or com is None else self.guards.forces(com.get(K.FORCES))
        if why is not None:
            self.state.committee += 1  # asked, never decided on
            raise Stop("exploded", f"exploded: {why}")
        return com

    def reevaluate_here(self, phase: str) -> None:
        """Evaluate the current geometry again, reference only, in ``phase`` (verification)."""
        self.state.phase, self.forced, self.reevaluate = phase, True, True
        self.reset()

    def _gate_calls(self):
        g = self.gate
        return g.n_committee_calls, g.n_reference_calls, g.n_labels

    def _count(self, before):
        s = self.state
        c, r, n = (a - b for a, b in zip(self._gate_calls(), before))
        s.committee, s.reference, s.labels = s.committee + c, s.reference + r, s.labels + n

    def properties(self) -> tuple:
        """What every evaluation asks the gate for (stress with a cell relaxation)."""
        return (K.ENERGY, K.FORCES) + ((K.STRESS,) if self.r.cell else ())

    def _evaluate(self, atoms, step):
        """(results, committee_results, decision) of ``atoms`` on the current surface."""
        props = self.properties()
        self._guard_geometry(atoms)  # already done by need() on the flow's path
        com = self._committee(atoms, props)
        if not self.forced:
            scale = self.r.reentry_factor if self.state.surface == K.REFERENCE else 1.0
            res = self.gate.evaluate(atoms, step=step, info=self.info, properties=props,
                                     threshold_scale=scale, committee_results=com)
            return dict(res.results), res.committee_results, res.decision
        info = dict(self.info, reason=self.state.phase)
        res = self.gate.evaluate(atoms, step=step, info=info, properties=props, threshold_scale=0.0,
                                 committee_results=com)
        if res.decision == K.REFERENCE:
            return dict(res.results), res.committee_results, K.REFERENCE
        com = res.committee_results
        label = self.gate.label(atoms, com, info=dict(info, step=step))
        results = {k: v for k, v in (com or {}).items() if k in K.COMMITTEE_KEYS}
        results.update(label.results)
        return results, com, K.REFERENCE

    def calculate(self, atoms=None, properties=(K.ENERGY,), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms, s = self.atoms, self.state
        step = s.steps if self.reevaluate else s.evaluations
        s.steps = step
        if self.reuse is not None and same_geometry(self.reuse[0], atoms):
            _, results, com, decision = self.reuse
            self.reuse, new = None, False
        else:
            self.reuse, new = None, True
            before = self._gate_calls()
            try:
                results, com, decision = self._evaluate(atoms, step)
            except GateStop as exc:
                raise Stop("hard_cap", f"hard cap exceeded: {exc}") from None
            finally:
                self._count(before)
        if not self.reevaluate:
            s.evaluations += 1
        self.reevaluate = False
        if new and not self.forced and s.surface is not None and decision != s.surface:
            s.switches += 1
            s.reentries += decision == K.COMMITTEE
            self.switched = True
        s.surface = decision
        self.results = {k: results[k] for k in RESULT_KEYS if k in results}
        self.results[K.FREE_ENERGY] = self.results[K.ENERGY]
        if K.STRESS in properties and K.STRESS not in self.results:
            raise ConfigError("the cell is relaxed but the result has no stress; use members and "
                              "a reference that compute stress, or relax positions only")
        self.last = (results, com, decision)
        frame = self._frame(atoms, results, com, decision)
        self.frames.append(frame)
        if self.on_frame is not None and new:
            self.on_frame(frame)
        if self.r.policy != "fallback" and com is not None and not self.forced \
                and self.r.stop_criterion(com):
            if self.r.policy == "stop_and_label" and decision != K.REFERENCE and new:
                before = self._gate_calls()
                try:
                    self.gate.label(atoms, com, info=dict(self.info, step=step, reason="stop_and_label"))
                finally:
                    self._count(before)
            u = com[K.FORCE_UNCERTAINTY_RELATIVE]
            raise Stop("uncertain", f"relative force uncertainty U = {u:.4g} > U_max = {self.r.u_max:g}")

    def _frame(self, atoms, results, com, decision):
        f = atoms.copy()
        f.set_constraint(copy.deepcopy(self.constraints))
        f.calc = SinglePointCalculator(f, **{k: results[k] for k in RESULT_KEYS if k in results})
        if com:
            attach_uncertainties(f, com, members=False)
        f.info.update(self.info)
        f.info.update(self.state.info())
        f.info[K.GATE_DECISION] = decision
        return f


def member_call(fn):
    """``fn()`` (a committee call on one structure or a batch); an exception of a member that is
    not one of ours (a crashing calculator, an SCF failure) becomes CommitteeCalculationError,
    so that only the structure(s) of the call end ``committee_failed``."""
    try:
        return fn()
    except CommitteeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any member's own failure
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise CommitteeCalculationError(f"a committee member failed: {type(exc).__name__}: {text}") from exc


def _geometry(atoms) -> tuple:
    return atoms.numbers.copy(), atoms.positions.copy(), np.array(atoms.cell[:], float)


def _same(a, b) -> bool:
    """Exactly the same geometry (bit for bit: a handed-over result is for that geometry only)."""
    return b is not None and all(np.array_equal(x, y) for x, y in zip(a, b))


__all__ = ["EVALUATE", "PHASES", "PolicyCalculator", "RelaxState", "Stop", "resume_results"]
