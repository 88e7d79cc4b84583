"""Uncertainty-gated relaxation of one structure.

::

    from committee_calc.gate import Gate
    from committee_calc.relax.gated import GatedRelaxer

    gate = Gate(committee, reference, thresholds={"forces_std_max": 0.05}, label_store=store)
    result = GatedRelaxer(gate, policy="fallback", fmax=0.05, cell=True, polish=10).relax(atoms)
    result.status, result.energy, result.reference_energy, result.n_reference_calls

    GatedRelaxer(Gate(committee), policy="stop", u_max=0.2).relax(atoms)   # committee only

Every energy/force evaluation of the optimiser goes through the one evaluator,
a :class:`~committee_calc.gate.Gate` (``Gate(committee)`` without a reference
is the committee-only evaluator).  What happens when the committee is
uncertain is the *policy*:

``fallback``
    above the gate's thresholds the reference result drives the step and the
    structure is appended to the label store.  The relaxation runs on one
    surface at a time (:mod:`.surface`): once it fell back it stays on the
    reference until the spread is below ``threshold × reentry_factor``
    (hysteresis, default 0.7), and every change of surface restarts the
    optimiser with fresh memory from the current geometry (counters go on).
    After ``max_reentries`` returns to the committee, the next fallback is
    final (the committee keeps sending the structure back where it is
    uncertain: its minimum is not one to trust).  ``reentry_factor=1,
    restart_on_switch=False, max_reentries=None`` is the behaviour of earlier
    versions (one mixed surface, discontinuous at the threshold).
``stop``
    Hessmann et al.: the relaxation stops as soon as the relative force
    uncertainty ``U = max_i ‖σ_F,i‖ / max_i ‖F̄_i‖`` (result key
    ``force_uncertainty_relative``) of the committee *exceeds* ``u_max``
    (strictly ``U > u_max``; the denominator floored at ``fmax``, so that a
    force-free point stops only when max‖σ_F‖ > u_max·fmax, see
    :meth:`GatedRelaxer.stop_criterion`); status ``"uncertain"``, the
    returned structure is the one where the criterion fired.
``stop_and_label``
    as ``stop``, and that last structure is labelled through
    :meth:`Gate.label <committee_calc.gate.Gate.label>` (the paper's pool cycles).

End of a relaxation (``RelaxResult.status``, each with a ``reason`` sentence)
    ``converged``: the test of :mod:`.criteria` holds (generalised force <
    ``fmax``; with ``cell`` also residual stress ≤ ``stress_tol_GPa``) and,
    when verified, the *reference* agrees.  ``unverified``: converged on the
    committee surface, the reference disagrees and ``polish`` steps did not fix
    it.  ``stalled``: no progress over ``stall_steps`` steps
    (:class:`~.criteria.StallDetector`).  ``max_steps``: the step budget is
    spent (the reason names the force reached against the target).
    ``uncertain``: a stop policy fired on U.  ``threshold``: a stop threshold
    (``stop_thresholds``, the campaign's ``--threshold-…``) was exceeded.  ``hard_cap``: the
    gate's hard cap raised :class:`~committee_calc.errors.GateStop`.  ``exploded``: a geometry guard
    (:mod:`.guards`: atoms too close, volume blown up, committee forces blown up) fired, before
    the committee (geometry) or the reference (forces) saw it.  (``reference_failed`` is
    set by the pool when the reference raises.)

Verification (``verify``, default on when the gate has a reference)
    a structure that converged on the committee surface gets a reference
    single point (through ``gate.label``: appended to the label store, which
    de-duplicates); if the reference does not pass the convergence test, up to
    ``polish`` reference-only optimiser steps follow.  A structure that
    converged on the reference surface is verified already.  Without a
    reference (or ``verify=False``) ``converged`` means the committee surface
    (``RelaxResult.verified`` is None).

The path itself (descent, restarts, verification, polishing) is :mod:`.flow`, advanced
evaluation by evaluation: :meth:`GatedRelaxer.relax` runs one structure, :mod:`.batched`
runs many with one batched committee call per round (same code, same trajectories).

The user's ``atoms`` is never modified: the relaxer works on a copy that keeps
the user's constraints (``FixAtoms`` …), also with ``fix_symmetry`` (added to
them), on resume and on the returned structure.  Call counters are the gate's
own counters over this relaxation: a structure the label store already holds
costs no reference call and adds no label.
"""
from __future__ import annotations

import math

import numpy as np

from .. import keys as K
from ..committee import require_stress
from ..errors import ConfigError
from ..gate import require_gate
from ..measures import MEASURES, check_limits, compute_measures, parse_limits
from ..units import check_positive
from .flow import RelaxResult, RelaxTask
from .guards import DEFAULT_GUARDS, Guards
from .policy import OPTIMIZERS, POLICIES, STATUSES, count_setting, optimizer_class, policy_thresholds
from .surface import Stop


class GatedRelaxer:
    """Relax structures through a gate with a policy for uncertain steps (module docstring).

    Parameters
    ----------
    gate: a :class:`committee_calc.gate.Gate`, the one evaluator (``Gate(committee)``:
        committee only); anything else is a ConfigError.
    policy: ``fallback`` | ``stop`` | ``stop_and_label``.
    u_max: U_max for the stop policies (relative force uncertainty, no unit).
    stop_thresholds: with policy ``stop``, further stop limits ``{measure key: value}`` (parsed by
        :func:`~committee_calc.measures.parse_limits`, fixed numbers): a committee evaluation with
        a measure above one (NaN: above) ends the relaxation as ``threshold`` at that structure,
        like the U stop (``uncertain``); None: none.
    optimizer: ``FIRE`` | ``BFGS`` | ``LBFGS``; optimizer_kwargs passed to it.
    fmax: convergence on the largest force [eV/Å] (generalised force with ``cell``).
    max_steps: optimiser steps at most (counted over resumes; polishing not included).
    cell: also relax the cell (ASE ``FrechetCellFilter``) at ``pressure_GPa``.
    constant_volume: with ``cell``, relax the cell shape at fixed volume.
    stress_tol_GPa: with ``cell``, residual stress allowed at convergence [GPa].
    fix_symmetry: keep the starting space group (ASE ``FixSymmetry``, needs spglib), together
        with the structure's own constraints.
    reentry_factor: in (0, 1]; back to the committee below threshold × factor.
    restart_on_switch: restart the optimiser (fresh memory) when the surface changes.
    max_reentries: returns to the committee before a fallback is final (None: no limit).
    stall_steps, stall_tol: no progress over that many steps within ``stall_tol`` [Å] ends the
        relaxation as ``stalled`` (None: no stall test).
    verify: reference single point at a committee minimum (None: when the gate has a reference).
    polish: reference-only steps at most after a failed verification (0: none).
    guards: :class:`~.guards.Guards` (default limits) ending a blown-up candidate as
        ``exploded`` before any reference call; None: no guards.
    Raises :class:`~committee_calc.errors.ConfigError` for invalid settings,
    MemberPropertyError for ``cell`` with a committee that cannot compute stress.
    """

    def __init__(self, gate, policy="fallback", u_max=None, optimizer="FIRE", fmax=0.05,
                 max_steps=500, cell=False, pressure_GPa=0.0, fix_symmetry=False,
                 symprec=1e-3, optimizer_kwargs=None, constant_volume=False, stress_tol_GPa=0.1,
                 reentry_factor=0.7, restart_on_switch=True, max_reentries=3, stall_steps=20,
                 stall_tol=1e-4, verify=None, polish=0, guards=DEFAULT_GUARDS, stop_thresholds=None):
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
        self.stop_thresholds = parse_limits(stop_thresholds, what="stop threshold")
        if self.stop_thresholds and policy != "stop":
            raise ConfigError(f"stop_thresholds end a relaxation of policy 'stop'; with policy {policy!r} "
                              "give them to the gate as thresholds")
        check_limits({}, self.stop_thresholds, molecules=gate.molecules if gate.molecules is not None
                     else getattr(gate.committee, "molecules", None))
        self.optimizer = optimizer_class(optimizer)
        self.optimizer_name = str(optimizer).upper()
        self.fmax = check_positive("fmax", fmax)
        self.max_steps = count_setting("max_steps", max_steps)
        self.cell, self.fix_symmetry, self.symprec = bool(cell), bool(fix_symmetry), symprec
        require_stress(gate.committee, self.cell, "cell relaxation (--cell)")
        self.pressure_GPa = float(pressure_GPa)
        self.constant_volume = bool(constant_volume)
        if self.constant_volume and not self.cell:
            raise ConfigError("constant_volume relaxes the cell shape: give cell=True too")
        self.stress_tol_GPa = check_positive("stress_tol_GPa", stress_tol_GPa)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.reentry_factor = check_positive("reentry_factor", reentry_factor)
        if self.reentry_factor > 1:
            raise ConfigError(f"reentry_factor must be in (0, 1], got {reentry_factor!r}")
        self.restart_on_switch = bool(restart_on_switch)
        self.max_reentries = None if max_reentries is None else count_setting("max_reentries", max_reentries)
        self.stall_steps = None if not stall_steps else count_setting("stall_steps", stall_steps)
        self.stall_tol = check_positive("stall_tol", stall_tol)
        if verify and gate.reference is None:
            raise ConfigError("verify=True needs a gate with a reference calculator")
        self.verify = gate.reference is not None if verify is None else bool(verify)
        self.polish = count_setting("polish", polish)
        if guards is not None and not isinstance(guards, Guards):
            raise ConfigError(f"guards must be a Guards or None (no guards), got {guards!r}")
        self.guards = guards

    def settings(self) -> dict:
        """The settings that decide a relaxation's path (JSON-able; written to ``pool.json``)."""
        return {"policy": self.policy, "u_max": self.u_max, "optimizer": self.optimizer_name,
                "fmax": self.fmax, "max_steps": self.max_steps, "cell": self.cell,
                "pressure_GPa": self.pressure_GPa, "fix_symmetry": self.fix_symmetry,
                **({"constant_volume": True} if self.constant_volume else {}),
                "stress_tol_GPa": self.stress_tol_GPa, "reentry_factor": self.reentry_factor,
                "restart_on_switch": self.restart_on_switch, "max_reentries": self.max_reentries,
                "stall_steps": self.stall_steps, "stall_tol": self.stall_tol,
                "verify": self.verify, "polish": self.polish,
                **({"stop_thresholds": dict(self.stop_thresholds)} if self.stop_thresholds else {}),
                **(self.guards.settings() if self.guards is not None else {"guards": None})}

    def stop_criterion(self, committee_results) -> bool:
        """Hessmann's criterion: True when U = max‖σ_F‖/max‖F̄‖ strictly exceeds U_max (NaN: True),
        with the denominator floored at ``fmax``: at a force-free point (a minimum, or atoms held
        in place by symmetry while the cell relaxes) U = σ/|F| diverges whatever σ is, so there
        the stop asks max‖σ_F‖ > U_max·fmax — the committee disagrees about forces that matter
        for convergence.  Raises ConfigError when the results have no U (no committee).

        With ``stop_thresholds``, a measure above its stop threshold (after the U test) raises
        :class:`~committee_calc.relax.surface.Stop` with status ``threshold`` and a reason naming
        the measures: the calculator (:mod:`.surface`) calls this after the structure's frame is
        recorded, so the relaxation ends at that structure, as on U."""
        if self._u_stop(committee_results):
            return True
        self.check_stop_thresholds(committee_results)
        return False

    def check_stop_thresholds(self, committee_results) -> None:
        """Raise :class:`~committee_calc.relax.surface.Stop` (status ``threshold``) when a measure
        of ``committee_results`` (:func:`~committee_calc.measures.compute_measures`; missing or NaN
        counts as above) exceeds its stop threshold."""
        if not self.stop_thresholds:
            return
        n_atoms = len(np.asarray(committee_results.get(K.FORCES, ())).reshape(-1, 3))
        measures = compute_measures(committee_results, n_atoms, committee_results.get(K.N_MOLECULES))
        over = {k: measures.get(k, math.nan) for k, t in self.stop_thresholds.items()
                if not measures.get(k, math.nan) <= t}
        if over:
            text = ", ".join(f"{k}={v:.4g} > {self.stop_thresholds[k]:.4g} {MEASURES[k].unit}"
                             for k, v in over.items())
            raise Stop("threshold", f"committee uncertainty above the stop threshold: {text}")

    def _u_stop(self, committee_results) -> bool:
        if K.FORCE_UNCERTAINTY_RELATIVE not in committee_results:
            raise ConfigError(f"policy {self.policy!r} needs the committee's relative force "
                              "uncertainty; the gate's calculator gives none (not a committee?)")
        u = float(committee_results[K.FORCE_UNCERTAINTY_RELATIVE])
        if not math.isfinite(u):
            return True
        forces, spread = committee_results.get(K.FORCES), committee_results.get(K.FORCES_STD_ATOM)
        if forces is None or spread is None or not len(spread):
            return u > self.u_max
        f = float(np.max(np.linalg.norm(np.asarray(forces, float).reshape(-1, 3), axis=1)))
        return float(np.max(spread)) > self.u_max * max(f, self.fmax)

    def relax(self, atoms, info=None, on_frame=None, resume=None) -> RelaxResult:
        """Relax a copy of ``atoms``.

        info: dict copied into every frame and passed to the gate (provenance,
            e.g. ``{"candidate": "c07"}``).
        on_frame: callable(frame Atoms) after each *new* evaluation (checkpointing).
        resume: a frame previously passed to ``on_frame``: the relaxation
            restarts there (geometry from the frame, constraints from ``atoms``,
            phase — relaxing, verifying, polishing — and counters from its ``info``);
            its stored result is reused (no new call).
        Raises ConfigError (cell relaxation of a non-bulk structure, no stress),
        and what the gate raises besides GateStop (e.g. ReferenceCalculationError).
        """
        task = self.start(atoms, info, on_frame, resume)
        while task.advance():  # one structure: the calculator asks the committee itself
            pass
        return task.result

    def start(self, atoms, info=None, on_frame=None, resume=None) -> RelaxTask:
        """The relaxation of :meth:`relax` as a :class:`~committee_calc.relax.flow.RelaxTask`,
        advanced evaluation by evaluation (the batched path, :mod:`.batched`)."""
        return RelaxTask(self, atoms, info, on_frame, resume)


__all__ = ["GatedRelaxer", "RelaxResult", "POLICIES", "OPTIMIZERS", "STATUSES",
           "optimizer_class", "policy_thresholds"]
