"""Uncertainty-gated relaxation of one structure.

::

    from committee_calc.gate import Gate
    from committee_calc.relax.gated import GatedRelaxer

    gate = Gate(committee, reference, thresholds={"forces_std_max": 0.05}, label_store=store)
    result = GatedRelaxer(gate, policy="fallback", fmax=0.05, cell=True).relax(atoms)
    result.energy, result.n_reference_calls, result.atoms

    GatedRelaxer(Gate(committee), policy="stop", u_max=0.2).relax(atoms)   # committee only

Every energy/force evaluation of the optimiser goes through the one evaluator,
a :class:`~committee_calc.gate.Gate` (``Gate(committee)`` without a reference
is the committee-only evaluator).  What happens when the committee is
uncertain is the *policy*:

``fallback``
    the gate's decision is used as is: above its thresholds the reference
    result drives the step and the structure is appended to the label store;
    the optimiser goes on on the mixed surface.
``stop``
    Hessmann et al.: the relaxation stops as soon as the relative force
    uncertainty ``U = max_i ‖σ_F,i‖ / max_i ‖F̄_i‖`` (result key
    ``force_uncertainty_relative``) of the committee *exceeds* ``u_max``
    (strictly ``U > u_max``); status ``"uncertain"``, the returned structure
    is the one where the criterion fired.
``stop_and_label``
    as ``stop``, and that last structure is labelled through
    :meth:`Gate.label <committee_calc.gate.Gate.label>` (the paper's pool cycles).

:func:`policy_thresholds` gives the gate thresholds a policy implies.  The
relaxation also ends at ``fmax`` (status ``"converged"``), ``max_steps``
(``"max_steps"``) or when the gate's hard cap raises
:class:`~committee_calc.errors.GateStop` (``"hard_cap"``).  The user's
``atoms`` is never modified: the relaxer works on a copy.

Call counters (``n_committee_calls``, ``n_reference_calls``, ``n_labels``) are
the gate's own counters over this relaxation: a structure the label store
already holds costs no reference call and adds no label.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

from .. import keys as K
from ..errors import ConfigError, GateStop
from ..gate import require_gate
from ..io import attach_uncertainties, read_uncertainties
from ..structures import is_bulk, same_geometry
from ..units import check_positive

POLICIES = ("fallback", "stop", "stop_and_label")
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
STATUSES = ("converged", "max_steps", "uncertain", "hard_cap")
_RESULT_KEYS = (K.ENERGY, K.FORCES, K.STRESS)


def optimizer_class(name: str):
    """The ASE optimiser class of ``name`` (one of :data:`OPTIMIZERS`); ConfigError otherwise."""
    import ase.optimize as opt

    key = str(name).upper()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    return getattr(opt, key)


def policy_thresholds(policy: str, thresholds=None, u_max=None) -> tuple:
    """The gate thresholds and U_max a policy implies -> ``(thresholds, u_max)``.

    thresholds: ``{measure key: value}`` in internal units (e.g. from
        :func:`committee_calc.cli.limits_from_args`); not modified.
    u_max: U_max of the stop policies; default ``thresholds["force_uncertainty_relative"]``.

    ``fallback``: the thresholds as given (at least one needed).
    ``stop``: U_max is the stop criterion, not a fallback threshold: it is
    removed; other thresholds, if any, still fall back (none: committee only).
    ``stop_and_label``: U_max needed; the threshold on U is set to U_max, so
    the gate labels exactly when U > U_max.
    Raises :class:`~committee_calc.errors.ConfigError`.
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    th = dict(thresholds or {})
    u_max = u_max if u_max is not None else th.get(K.FORCE_UNCERTAINTY_RELATIVE)
    if policy == "stop":
        th.pop(K.FORCE_UNCERTAINTY_RELATIVE, None)
    elif policy == "stop_and_label":
        if u_max is None:
            raise ConfigError("policy 'stop_and_label' needs U_max (--u-max or "
                              "--threshold-force-uncertainty-relative)")
        th[K.FORCE_UNCERTAINTY_RELATIVE] = u_max
    elif not th:
        raise ConfigError("policy 'fallback' needs at least one threshold (--threshold-* option) "
                          "and a reference")
    return th, u_max


@dataclass(frozen=True)
class RelaxResult:
    """Outcome of one relaxation (units: eV, Å, eV/Å).

    atoms: final structure; its calculator holds the result used (energy,
        forces, stress), uncertainties sit in ``info``/``arrays`` under the
        ``committee_`` prefix, plus ``info['relax_status']``.
    status: one of :data:`STATUSES`; reason: a sentence saying why it ended.
    steps: optimiser steps (geometry updates), counted over resumes.
    energy: final energy [eV] (committee mean or reference, see ``decision``).
    energy_std, forces_std_max, force_uncertainty_relative: committee spread at
        the final structure [eV, eV/Å, 1] (NaN if never evaluated by the committee).
    fmax: final max force [eV/Å] the optimiser saw (includes cell dofs with ``cell``).
    n_committee_calls, n_reference_calls, n_labels: calls made for this structure.
    trajectory: list of Atoms, one per evaluated geometry (first = start).
    """

    atoms: object
    status: str
    reason: str
    steps: int
    energy: float
    energy_std: float
    forces_std_max: float
    force_uncertainty_relative: float
    fmax: float
    decision: str
    n_committee_calls: int
    n_reference_calls: int
    n_labels: int
    trajectory: list = field(default_factory=list, repr=False)


class _Stop(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _PolicyCalculator(Calculator):
    """The calculator the optimiser sees: gate evaluation + bookkeeping + policy."""

    implemented_properties = (K.ENERGY, K.FREE_ENERGY, K.FORCES, K.STRESS)

    def __init__(self, relaxer, info, on_frame, counts, reuse=None):
        super().__init__()
        self.r = relaxer
        self.gate = relaxer.gate
        self.info = dict(info or {})
        self.on_frame = on_frame
        self.counts = counts
        self.reuse = reuse  # (atoms, results, committee_results, decision) of a resumed frame
        self.frames = []
        self.last = None  # (results, committee_results, decision)

    def _gate_calls(self):
        g = self.gate
        return g.n_committee_calls, g.n_reference_calls, g.n_labels

    def _count(self, before):
        """Add the gate's calls since ``before`` (a :meth:`_gate_calls` tuple) to the counters."""
        for key, b, a in zip(("committee", "reference", "labels"), before, self._gate_calls()):
            self.counts[key] += a - b

    def calculate(self, atoms=None, properties=(K.ENERGY,), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        step = self.counts["steps"] = self.counts["evaluations"]
        if self.reuse is not None and same_geometry(self.reuse[0], atoms):
            results, com, decision = self.reuse[1], self.reuse[2], self.reuse[3]
            self.reuse = None
            new = False
        else:
            self.reuse = None
            props = (K.ENERGY, K.FORCES) + ((K.STRESS,) if self.r.cell else ())
            before = self._gate_calls()
            try:
                res = self.gate.evaluate(atoms, step=step, info=self.info, properties=props)
            except GateStop as exc:
                raise _Stop("hard_cap", f"hard cap exceeded: {exc}") from None
            finally:
                self._count(before)
            results, com, decision = dict(res.results), res.committee_results, res.decision
            new = True
        self.counts["evaluations"] += 1
        self.results = {k: results[k] for k in _RESULT_KEYS if k in results}
        self.results[K.FREE_ENERGY] = self.results[K.ENERGY]
        if K.STRESS in properties and K.STRESS not in self.results:
            raise ConfigError("the cell is relaxed but the result has no stress; use members and "
                              "a reference that compute stress, or relax positions only")
        self.last = (results, com, decision)
        frame = self._frame(atoms, results, com, decision, step)
        self.frames.append(frame)
        if self.on_frame is not None and new:
            self.on_frame(frame)
        if self.r.policy != "fallback" and com is not None and self.r.stop_criterion(com):
            if self.r.policy == "stop_and_label" and decision != K.REFERENCE and new:
                before = self._gate_calls()
                try:
                    self.gate.label(atoms, com, info=dict(self.info, step=step, reason="stop_and_label"))
                finally:
                    self._count(before)
            u = com[K.FORCE_UNCERTAINTY_RELATIVE]
            raise _Stop("uncertain", f"relative force uncertainty U = {u:.4g} > U_max = {self.r.u_max:g}")

    def _frame(self, atoms, results, com, decision, step):
        f = atoms.copy()
        f.constraints = []
        f.calc = SinglePointCalculator(f, **{k: results[k] for k in _RESULT_KEYS if k in results})
        if com:
            attach_uncertainties(f, com, members=False)
        f.info.update(self.info)
        f.info.update({"relax_step": int(step), K.GATE_DECISION: decision,
                       "relax_committee_calls": self.counts["committee"],
                       "relax_reference_calls": self.counts["reference"],
                       "relax_labels": self.counts["labels"]})
        return f


class GatedRelaxer:
    """Relax structures through a gate with a policy for uncertain steps.

    Parameters
    ----------
    gate: a :class:`committee_calc.gate.Gate`, the one evaluator (``Gate(committee)``:
        committee only); anything else is a ConfigError.
    policy: ``fallback`` | ``stop`` | ``stop_and_label`` (see module docstring).
    u_max: U_max for the stop policies (relative force uncertainty, no unit).
    optimizer: ``FIRE`` | ``BFGS`` | ``LBFGS``; optimizer_kwargs passed to it.
    fmax: convergence on the max force [eV/Å] (generalised force with ``cell``).
    max_steps: optimiser steps at most (counted over resumes).
    cell: also relax the cell (ASE ``FrechetCellFilter``) at ``pressure_GPa``.
    constant_volume: with ``cell``, relax the cell shape at fixed volume.
    fix_symmetry: keep the starting space group (ASE ``FixSymmetry``, needs spglib).
    Raises :class:`~committee_calc.errors.ConfigError` for invalid settings.
    """

    def __init__(self, gate, policy="fallback", u_max=None, optimizer="FIRE", fmax=0.05,
                 max_steps=500, cell=False, pressure_GPa=0.0, fix_symmetry=False,
                 symprec=1e-3, optimizer_kwargs=None, constant_volume=False):
        require_gate(gate, "GatedRelaxer")
        if policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")
        if policy != "fallback":
            if u_max is None:
                raise ConfigError(f"policy {policy!r} needs u_max (the relative force uncertainty "
                                  "U_max, e.g. --threshold-force-uncertainty-relative 0.2)")
            u_max = check_positive("u_max", u_max)
        if policy == "stop_and_label" and (gate.reference is None or gate.label_store is None):
            raise ConfigError("policy 'stop_and_label' needs a gate with a reference and a label store")
        self.gate, self.policy, self.u_max = gate, policy, u_max
        self.optimizer = optimizer_class(optimizer)
        self.optimizer_name = str(optimizer).upper()
        self.fmax = check_positive("fmax", fmax)
        if int(max_steps) < 0:
            raise ConfigError(f"max_steps must be >= 0, got {max_steps}")
        self.max_steps = int(max_steps)
        self.cell, self.fix_symmetry, self.symprec = bool(cell), bool(fix_symmetry), symprec
        self.pressure_GPa = float(pressure_GPa)
        self.constant_volume = bool(constant_volume)
        if self.constant_volume and not self.cell:
            raise ConfigError("constant_volume relaxes the cell shape: give cell=True too")
        self.optimizer_kwargs = dict(optimizer_kwargs or {})

    def stop_criterion(self, committee_results) -> bool:
        """Hessmann's criterion: True when U = max‖σ_F‖/max‖F̄‖ strictly exceeds U_max (NaN: True).
        Raises ConfigError when the results have no U (the gate's committee is no committee)."""
        if K.FORCE_UNCERTAINTY_RELATIVE not in committee_results:
            raise ConfigError(f"policy {self.policy!r} needs the committee's relative force "
                              "uncertainty; the gate's calculator gives none (not a committee?)")
        u = float(committee_results[K.FORCE_UNCERTAINTY_RELATIVE])
        return not math.isfinite(u) or u > self.u_max

    def relax(self, atoms, info=None, on_frame=None, resume=None) -> RelaxResult:
        """Relax a copy of ``atoms``.

        info: dict copied into every frame and passed to the gate (provenance,
            e.g. ``{"candidate": "c07"}``).
        on_frame: callable(frame Atoms) after each *new* evaluation (checkpointing).
        resume: a frame previously passed to ``on_frame``: the relaxation
            restarts there; its stored result is reused (no new call) and the
            step/call counters continue.
        Raises ConfigError (cell relaxation of a non-bulk structure, no stress),
        and what the gate raises besides GateStop (e.g. ReferenceCalculationError).
        """
        start = resume if resume is not None else atoms
        work = start.copy()
        work.calc = None
        counts = {"evaluations": 0, "steps": 0, "committee": 0, "reference": 0, "labels": 0}
        reuse = None
        if resume is not None:
            i = resume.info
            counts.update(evaluations=int(i.get("relax_step", 0)),
                          committee=int(i.get("relax_committee_calls", 0)),
                          reference=int(i.get("relax_reference_calls", 0)),
                          labels=int(i.get("relax_labels", 0)))
            reuse = _resume_results(resume)
        if self.fix_symmetry:
            from ase.constraints import FixSymmetry

            work.set_constraint(FixSymmetry(work, symprec=self.symprec))
        calc = _PolicyCalculator(self, info, on_frame, counts, reuse)
        work.calc = calc
        target = work
        if self.cell:
            from ase.filters import FrechetCellFilter

            if not is_bulk(work):
                raise ConfigError("cell relaxation needs a 3-D periodic structure; drop --cell")
            target = FrechetCellFilter(work, scalar_pressure=self.pressure_GPa * GPa,
                                       constant_volume=self.constant_volume)
        opt = self.optimizer(target, logfile=None, **self.optimizer_kwargs)
        remaining = max(self.max_steps - counts["evaluations"], 0)
        status, reason = "max_steps", f"reached max_steps = {self.max_steps}"
        try:
            for _ in opt.irun(fmax=self.fmax, steps=remaining):
                pass
            if _fmax(target) < self.fmax:
                status, reason = "converged", f"max force below fmax = {self.fmax:g} eV/Å"
        except _Stop as stop:
            status, reason = stop.status, stop.reason
        return self._result(calc, target, status, reason)

    def _result(self, calc, target, status, reason):
        c = calc.counts
        if not calc.frames:  # hard cap at the very first evaluation
            return RelaxResult(None, status, reason, c["steps"], math.nan, math.nan, math.nan,
                               math.nan, math.nan, "none", c["committee"], c["reference"],
                               c["labels"], [])
        final = calc.frames[-1].copy()
        final.calc = SinglePointCalculator(final, **calc.frames[-1].calc.results)
        results, com, decision = calc.last
        fmax = float(_fmax(target)) if status != "hard_cap" else math.nan
        final.info.update(relax_status=status, relax_fmax=fmax)
        com = com or {}
        return RelaxResult(
            atoms=final, status=status, reason=reason, steps=int(final.info["relax_step"]),
            energy=float(results[K.ENERGY]), energy_std=float(com.get(K.ENERGY_STD, math.nan)),
            forces_std_max=float(com.get(K.FORCES_STD_MAX, math.nan)),
            force_uncertainty_relative=float(com.get(K.FORCE_UNCERTAINTY_RELATIVE, math.nan)),
            fmax=fmax, decision=decision, n_committee_calls=c["committee"],
            n_reference_calls=c["reference"], n_labels=c["labels"], trajectory=calc.frames)


def _fmax(target) -> float:
    f = target.get_forces()
    return float(np.sqrt((f ** 2).sum(axis=1)).max()) if len(f) else 0.0


def _resume_results(frame):
    """(atoms, results, committee_results, decision) stored on a checkpoint frame."""
    res = dict(frame.calc.results) if frame.calc is not None else {}
    if K.ENERGY not in res or K.FORCES not in res:
        return None
    com = read_uncertainties(frame) or None
    return frame, res, com, str(frame.info.get(K.GATE_DECISION, K.COMMITTEE))


__all__ = ["GatedRelaxer", "RelaxResult", "POLICIES", "OPTIMIZERS", "STATUSES",
           "optimizer_class", "policy_thresholds"]
