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
    (strictly ``U > u_max``); status ``"uncertain"``, the returned structure
    is the one where the criterion fired.
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
    ``uncertain``: a stop policy fired.  ``hard_cap``: the gate's hard cap
    raised :class:`~committee_calc.errors.GateStop`.  (``reference_failed`` is
    set by the pool when the reference raises.)

Verification (``verify``, default on when the gate has a reference)
    a structure that converged on the committee surface gets a reference
    single point (through ``gate.label``: appended to the label store, which
    de-duplicates); if the reference does not pass the convergence test, up to
    ``polish`` reference-only optimiser steps follow.  A structure that
    converged on the reference surface is verified already.  Without a
    reference (or ``verify=False``) ``converged`` means the committee surface
    (``RelaxResult.verified`` is None).

The user's ``atoms`` is never modified: the relaxer works on a copy that keeps
the user's constraints (``FixAtoms`` …), also with ``fix_symmetry`` (added to
them), on resume and on the returned structure.  Call counters are the gate's
own counters over this relaxation: a structure the label store already holds
costs no reference call and adds no label.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ase.calculators.singlepoint import SinglePointCalculator

from .. import keys as K
from ..committee import require_stress
from ..errors import ConfigError
from ..gate import require_gate
from ..structures import is_bulk
from ..units import check_positive, gpa_to_ev_per_a3
from .criteria import StallDetector, convergence, max_force, stress_residual_GPa
from .policy import OPTIMIZERS, POLICIES, STATUSES, count_setting, optimizer_class, policy_thresholds
from .surface import PolicyCalculator, RelaxState, Stop, resume_results


@dataclass(frozen=True)
class RelaxResult:
    """Outcome of one relaxation (units: eV, Å, eV/Å, GPa).

    atoms: final structure (user constraints kept); its calculator holds the result used
        (energy, forces, stress), uncertainties sit in ``info``/``arrays`` under the
        ``committee_`` prefix, plus ``info['relax_status']``.
    status: one of :data:`STATUSES`; reason: a sentence saying why it ended.
    steps: optimiser steps (geometry updates), counted over resumes and restarts.
    energy: final energy [eV] (committee mean or reference, see ``decision``).
    energy_std, forces_std_max, force_uncertainty_relative: committee spread at
        the final structure [eV, eV/Å, 1] (NaN if never evaluated by the committee).
    fmax: final largest generalised force [eV/Å] (includes cell dofs with ``cell``).
    n_committee_calls, n_reference_calls, n_labels: calls made for this structure.
    trajectory: list of Atoms, one per evaluation (first = start).
    committee_energy, reference_energy: both at the final structure [eV] (NaN where not known:
        no reference result there).
    reference_fmax: largest atomic force of the reference there [eV/Å] (constraints applied);
        reference_stress_GPa: its residual stress max |σ − σ_target| [GPa] (with ``cell``).
    verified: True (the reference agrees), False (it does not), None (not checked).
    n_switches, n_polish_steps: surface changes; reference-only steps after verification.
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
    committee_energy: float = math.nan
    reference_energy: float = math.nan
    reference_fmax: float = math.nan
    reference_stress_GPa: float = math.nan
    verified: bool | None = None
    n_switches: int = 0
    n_polish_steps: int = 0


class GatedRelaxer:
    """Relax structures through a gate with a policy for uncertain steps (module docstring).

    Parameters
    ----------
    gate: a :class:`committee_calc.gate.Gate`, the one evaluator (``Gate(committee)``:
        committee only); anything else is a ConfigError.
    policy: ``fallback`` | ``stop`` | ``stop_and_label``.
    u_max: U_max for the stop policies (relative force uncertainty, no unit).
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
    Raises :class:`~committee_calc.errors.ConfigError` for invalid settings,
    MemberPropertyError for ``cell`` with a committee that cannot compute stress.
    """

    def __init__(self, gate, policy="fallback", u_max=None, optimizer="FIRE", fmax=0.05,
                 max_steps=500, cell=False, pressure_GPa=0.0, fix_symmetry=False,
                 symprec=1e-3, optimizer_kwargs=None, constant_volume=False, stress_tol_GPa=0.1,
                 reentry_factor=0.7, restart_on_switch=True, max_reentries=3, stall_steps=20,
                 stall_tol=1e-4, verify=None, polish=0):
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

    def settings(self) -> dict:
        """The settings that decide a relaxation's path (JSON-able; written to ``pool.json``)."""
        return {"policy": self.policy, "u_max": self.u_max, "optimizer": self.optimizer_name,
                "fmax": self.fmax, "max_steps": self.max_steps, "cell": self.cell,
                "pressure_GPa": self.pressure_GPa, "fix_symmetry": self.fix_symmetry,
                **({"constant_volume": True} if self.constant_volume else {}),
                "stress_tol_GPa": self.stress_tol_GPa, "reentry_factor": self.reentry_factor,
                "restart_on_switch": self.restart_on_switch, "max_reentries": self.max_reentries,
                "stall_steps": self.stall_steps, "stall_tol": self.stall_tol,
                "verify": self.verify, "polish": self.polish}

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
            restarts there (geometry from the frame, constraints from ``atoms``,
            phase — relaxing, verifying, polishing — and counters from its ``info``);
            its stored result is reused (no new call).
        Raises ConfigError (cell relaxation of a non-bulk structure, no stress),
        and what the gate raises besides GateStop (e.g. ReferenceCalculationError).
        """
        work = atoms.copy()
        work.calc = None
        user = list(work.constraints)
        state, reuse = RelaxState(), None
        if resume is not None:
            state, reuse = RelaxState.from_frame(resume), resume_results(resume)
            work.set_cell(resume.cell, scale_atoms=False)
            work.positions = resume.positions  # the array itself: constraints do not apply
        if self.fix_symmetry:
            from ase.constraints import FixSymmetry

            # FixSymmetry first: the user's constraints act on the symmetrised step and win
            work.set_constraint([FixSymmetry(work, symprec=self.symprec)] + user)
        calc = PolicyCalculator(self, info, on_frame, state, reuse, constraints=user)
        work.calc = calc
        target = work
        if self.cell:
            from ase.filters import FrechetCellFilter

            if not is_bulk(work):
                raise ConfigError("cell relaxation needs a 3-D periodic structure; drop --cell")
            target = FrechetCellFilter(work, scalar_pressure=gpa_to_ev_per_a3(self.pressure_GPa),
                                       constant_volume=self.constant_volume)
        try:
            if state.phase in ("verify", "polish"):
                status, reason = self._verify(calc, target, work)
            else:
                status, reason = self._descend(calc, target, work)
                if status == "converged":
                    status, reason = self._verify(calc, target, work)
        except Stop as stop:
            status, reason = stop.status, stop.reason
        return self._result(calc, target, work, status, reason)

    # ------------------------------------------------------------------ phases
    def _check(self, target, work):
        return convergence(target, work, self.fmax, self.cell, self.stress_tol_GPa,
                           self.pressure_GPa, self.constant_volume)

    def _descend(self, calc, target, work) -> tuple:
        """Gated descent, one optimiser per surface -> (status, reason)."""
        stall = StallDetector(self.stall_steps, self.stall_tol) if self.stall_steps else None
        s = calc.state
        while True:
            calc.switched, restart = False, False
            opt = self.optimizer(target, logfile=None, **self.optimizer_kwargs)
            # fmax=0: the optimiser never stops itself; convergence is decided here
            for _ in opt.irun(fmax=0.0, steps=max(self.max_steps - s.steps, 0)):
                check = self._check(target, work)
                if check.converged:
                    on = "reference" if s.surface == K.REFERENCE else "committee"
                    return "converged", (f"converged on the {on} surface: "
                                         f"{check.describe(self.fmax, self._tol())}")
                moved = stall.push(work) if stall is not None else None
                if moved is not None:
                    return "stalled", (
                        f"no progress: the structure moved {moved:.2g} Å (< {self.stall_tol:g} Å) "
                        f"in the last {self.stall_steps} steps at "
                        f"{check.describe(self.fmax, self._tol())} ({s.switches} surface changes)")
                if calc.switched and s.surface == K.REFERENCE and self.max_reentries is not None \
                        and s.reentries >= self.max_reentries and not calc.forced:
                    s.phase, calc.forced, restart = "pinned", True, True
                    break
                if calc.switched and self.restart_on_switch:
                    restart = True
                    break
            if not restart:
                check = self._check(target, work)
                return "max_steps", (f"reached max_steps = {self.max_steps} at "
                                     f"{check.describe(self.fmax, self._tol())} "
                                     f"({s.switches} surface changes)")

    def _verify(self, calc, target, work) -> tuple:
        """Reference verdict at a minimum, then polishing -> (status, reason)."""
        s = calc.state
        if s.phase in ("relax", "pinned"):
            check = self._check(target, work)
            if s.surface == K.REFERENCE:
                pinned = (f" (kept there after {s.reentries} returns to the committee)"
                          if s.phase == "pinned" else "")
                return "converged", (f"converged on the reference surface{pinned}: "
                                     f"{check.describe(self.fmax, self._tol())}")
            if not self.verify:
                return "converged", (f"converged on the committee surface (not verified by the "
                                     f"reference): {check.describe(self.fmax, self._tol())}")
            s.verify_step = s.steps
            calc.reevaluate_here("verify")
        check = self._check(target, work)  # the verification single point (or its resumed frame)
        if check.converged:
            done = s.steps - s.verify_step
            return "converged", (f"the reference agrees{f' after {done} polish steps' if done else ''}"
                                 f": {check.describe(self.fmax, self._tol())}")
        budget = self.polish - (s.steps - s.verify_step)
        if budget > 0:
            s.phase = "polish"
            opt = self.optimizer(target, logfile=None, **self.optimizer_kwargs)
            for _ in opt.irun(fmax=0.0, steps=budget):
                check = self._check(target, work)
                if check.converged:
                    return "converged", (f"the reference agrees after {s.steps - s.verify_step} "
                                         f"polish steps: {check.describe(self.fmax, self._tol())}")
        done = s.steps - s.verify_step
        return "unverified", (f"converged on the committee surface, but the reference disagrees "
                              f"after {done} polish steps (--polish {self.polish}): "
                              f"{check.describe(self.fmax, self._tol())}")

    def _tol(self):
        return self.stress_tol_GPa if self.cell else None

    def _result(self, calc, target, work, status, reason):
        s = calc.state
        if not calc.frames:  # hard cap at the very first evaluation
            return RelaxResult(None, status, reason, s.steps, math.nan, math.nan, math.nan,
                               math.nan, math.nan, "none", s.committee, s.reference, s.labels, [])
        final = calc.frames[-1].copy()
        final.calc = SinglePointCalculator(final, **calc.frames[-1].calc.results)
        results, com, decision = calc.last
        fmax = float(max_force(target.get_forces())) if status != "hard_cap" else math.nan
        final.info.update(relax_status=status, relax_fmax=fmax)
        com = com or {}
        ref = decision == K.REFERENCE
        verified = None
        if status in ("converged", "unverified") and (ref or self.verify):
            verified = status == "converged"
        ref_f = max_force(final.get_forces()) if ref else math.nan
        ref_s = (stress_residual_GPa(final.get_stress(), self.pressure_GPa, self.constant_volume)
                 if ref and self.cell else math.nan)
        return RelaxResult(
            atoms=final, status=status, reason=reason, steps=int(s.steps),
            energy=float(results[K.ENERGY]), energy_std=float(com.get(K.ENERGY_STD, math.nan)),
            forces_std_max=float(com.get(K.FORCES_STD_MAX, math.nan)),
            force_uncertainty_relative=float(com.get(K.FORCE_UNCERTAINTY_RELATIVE, math.nan)),
            fmax=fmax, decision=decision, n_committee_calls=s.committee,
            n_reference_calls=s.reference, n_labels=s.labels, trajectory=calc.frames,
            committee_energy=float(com.get(K.ENERGY, math.nan)),
            reference_energy=float(results[K.ENERGY]) if ref else math.nan,
            reference_fmax=ref_f, reference_stress_GPa=ref_s, verified=verified,
            n_switches=s.switches, n_polish_steps=max(s.steps - s.verify_step, 0)
            if s.verify_step >= 0 else 0)


__all__ = ["GatedRelaxer", "RelaxResult", "POLICIES", "OPTIMIZERS", "STATUSES",
           "optimizer_class", "policy_thresholds"]
