"""The one implementation of a gated relaxation's path, advanced evaluation by evaluation.

::

    task = RelaxTask(relaxer, atoms, info={"candidate": "c07"})
    while task.advance():          # True: it waits for the committee at task.pending
        task.provide(committee_output_of(task.pending))   # optional (batched path)
    task.result                    # RelaxResult

A :class:`RelaxTask` runs the policy of :class:`~committee_calc.relax.gated.GatedRelaxer`
(descent on one surface at a time, restarts on a change of surface, pinning, stall test,
verification, polishing; :mod:`.gated` explains them) as a generator that stops before every
evaluation of a new geometry.  The per-structure path (:meth:`GatedRelaxer.relax
<committee_calc.relax.gated.GatedRelaxer.relax>`) just advances it: its calculator asks the
committee itself.  The batched path (:mod:`.batched`) advances many tasks in rounds and hands
each the committee output of one batched call.  Both run the same code on the same numbers,
so their trajectories, decisions, labels and statuses are the same.

Optimiser steps follow ASE's ``Optimizer.irun(fmax=0, steps)`` (ASE 3.23 and later) exactly
(:func:`walk`): the optimiser object of FIRE/BFGS/LBFGS steps as it would inside ``irun``, on
the atoms or their ``FrechetCellFilter``, with ``FixSymmetry`` and the user's constraints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ase.calculators.singlepoint import SinglePointCalculator

from .. import keys as K
from ..errors import ConfigError
from ..structures import is_bulk
from ..units import gpa_to_ev_per_a3
from .criteria import StallDetector, convergence, max_force, stress_residual_GPa
from .surface import EVALUATE, PolicyCalculator, RelaxState, Stop, resume_results

#: what :func:`walk` yields where ``irun`` would yield (the loop body of a descent runs)
STEP = "step"


@dataclass(frozen=True)
class RelaxResult:
    """Outcome of one relaxation (units: eV, Å, eV/Å, GPa).

    atoms: final structure (user constraints kept); its calculator holds the result used
        (energy, forces, stress), uncertainties sit in ``info``/``arrays`` under the
        ``committee_`` prefix, plus ``info['relax_status']``.
    status: one of :data:`~.policy.STATUSES`; reason: a sentence saying why it ended.
    steps: optimiser steps (geometry updates), counted over resumes and restarts.
    energy: final energy [eV] (committee mean or reference, see ``decision``).
    energy_std, forces_std_max, force_uncertainty_relative: committee spread at
        the final structure [eV, eV/Å, 1] (NaN if never evaluated by the committee).
    fmax: final largest generalised force [eV/Å] (includes cell dofs with ``cell``; NaN after
        ``hard_cap``/``exploded``, whose last geometry has no result).
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


class RelaxTask:
    """One relaxation of a copy of ``atoms`` by ``relaxer`` (arguments as
    :meth:`GatedRelaxer.relax <committee_calc.relax.gated.GatedRelaxer.relax>`).

    ``advance()`` runs it to its next evaluation of a new geometry (True; ``pending`` is that
    structure) or to its end (False; ``result`` is the :class:`RelaxResult`).  ``provide(com)``
    hands over the committee output for ``pending`` before the next ``advance()``.
    Raises ConfigError (cell relaxation of a non-bulk structure); ``advance`` raises what the
    gate raises besides GateStop (e.g. ReferenceCalculationError).
    """

    def __init__(self, relaxer, atoms, info=None, on_frame=None, resume=None):
        work = atoms.copy()
        work.calc = None
        user = list(work.constraints)
        state, reuse = RelaxState(), None
        if resume is not None:
            state, reuse = RelaxState.from_frame(resume), resume_results(resume)
            work.set_cell(resume.cell, scale_atoms=False)
            work.positions = resume.positions  # the array itself: constraints do not apply
        if relaxer.fix_symmetry:
            from ase.constraints import FixSymmetry

            # FixSymmetry first: the user's constraints act on the symmetrised step and win
            work.set_constraint([FixSymmetry(work, symprec=relaxer.symprec)] + user)
        volume0 = atoms.get_volume() if atoms.cell.rank == 3 else None
        self.calc = PolicyCalculator(relaxer, info, on_frame, state, reuse, constraints=user,
                                     volume0=volume0)
        work.calc = self.calc
        self.work = self.target = work
        if relaxer.cell:
            from ase.filters import FrechetCellFilter

            if not is_bulk(work):
                raise ConfigError("cell relaxation needs a 3-D periodic structure; drop --cell")
            self.target = FrechetCellFilter(
                work, scalar_pressure=gpa_to_ev_per_a3(relaxer.pressure_GPa),
                constant_volume=relaxer.constant_volume)
        self.relaxer, self.natoms, self.result = relaxer, len(atoms), None
        self._run = run(relaxer, self.calc, self.target, work, self)

    @property
    def pending(self):
        """The structure whose evaluation the task waits for (its own atoms: copy to keep)."""
        return self.work

    def advance(self) -> bool:
        try:
            next(self._run)
        except StopIteration:
            return False
        return True

    def provide(self, committee_results) -> None:
        self.calc.provide(self.work, committee_results)


def run(r, calc, target, work, task):
    """The relaxation of ``task`` (generator of :data:`~.surface.EVALUATE`); sets ``task.result``."""
    try:
        if calc.state.phase in ("verify", "polish"):
            status, reason = yield from verify(r, calc, target, work)
        else:
            status, reason = yield from descend(r, calc, target, work)
            if status == "converged":
                status, reason = yield from verify(r, calc, target, work)
    except Stop as stop:
        status, reason = stop.status, stop.reason
    task.result = result(r, calc, target, status, reason)


def walk(opt, steps, calc, target, work):
    """``opt.irun(fmax=0, steps=steps)`` of ASE (3.23+) with a stop before each new evaluation:
    yields :data:`~.surface.EVALUATE` (from ``calc.need``) and :data:`STEP` where ``irun``
    yields.  fmax = 0: the optimiser never stops itself; convergence is decided by the caller.
    Logging and observers of ``irun`` are left out (no log file, no observers)."""
    opt.fmax = 0.0
    opt.max_steps = opt.nsteps + steps
    yield from calc.need(work)
    opt.optimizable.get_gradient()
    yield STEP
    while opt.nsteps < opt.max_steps:
        opt.step()
        opt.nsteps += 1
        yield from calc.need(work)
        opt.optimizable.get_gradient()
        yield STEP


def check(r, target, work):
    return convergence(target, work, r.fmax, r.cell, r.stress_tol_GPa, r.pressure_GPa,
                       r.constant_volume)


def _tol(r):
    return r.stress_tol_GPa if r.cell else None


def descend(r, calc, target, work):
    """Gated descent, one optimiser per surface -> (status, reason)."""
    stall = StallDetector(r.stall_steps, r.stall_tol) if r.stall_steps else None
    s = calc.state
    while True:
        calc.switched, restart = False, False
        opt = r.optimizer(target, logfile=None, **r.optimizer_kwargs)
        for mark in walk(opt, max(r.max_steps - s.steps, 0), calc, target, work):
            if mark == EVALUATE:
                yield mark
                continue
            c = check(r, target, work)
            if c.converged:
                on = "reference" if s.surface == K.REFERENCE else "committee"
                return "converged", f"converged on the {on} surface: {c.describe(r.fmax, _tol(r))}"
            moved = stall.push(work) if stall is not None else None
            if moved is not None:
                return "stalled", (
                    f"no progress: the structure moved {moved:.2g} Å (< {r.stall_tol:g} Å) "
                    f"in the last {r.stall_steps} steps at {c.describe(r.fmax, _tol(r))} "
                    f"({s.switches} surface changes)")
            if calc.switched and s.surface == K.REFERENCE and r.max_reentries is not None \
                    and s.reentries >= r.max_reentries and not calc.forced:
                s.phase, calc.forced, restart = "pinned", True, True
                break
            if calc.switched and r.restart_on_switch:
                restart = True
                break
        if not restart:
            c = check(r, target, work)
            return "max_steps", (f"reached max_steps = {r.max_steps} at "
                                 f"{c.describe(r.fmax, _tol(r))} ({s.switches} surface changes)")


def verify(r, calc, target, work):
    """Reference verdict at a minimum, then polishing -> (status, reason)."""
    s = calc.state
    if s.phase in ("relax", "pinned"):
        c = check(r, target, work)
        if s.surface == K.REFERENCE:
            pinned = (f" (kept there after {s.reentries} returns to the committee)"
                      if s.phase == "pinned" else "")
            return "converged", (f"converged on the reference surface{pinned}: "
                                 f"{c.describe(r.fmax, _tol(r))}")
        if not r.verify:
            return "converged", (f"converged on the committee surface (not verified by the "
                                 f"reference): {c.describe(r.fmax, _tol(r))}")
        s.verify_step = s.steps
        calc.reevaluate_here("verify")
    yield from calc.need(work)
    c = check(r, target, work)  # the verification single point (or its resumed frame)
    if c.converged:
        done = s.steps - s.verify_step
        return "converged", (f"the reference agrees{f' after {done} polish steps' if done else ''}"
                             f": {c.describe(r.fmax, _tol(r))}")
    budget = r.polish - (s.steps - s.verify_step)
    if budget > 0:
        s.phase = "polish"
        opt = r.optimizer(target, logfile=None, **r.optimizer_kwargs)
        for mark in walk(opt, budget, calc, target, work):
            if mark == EVALUATE:
                yield mark
                continue
            c = check(r, target, work)
            if c.converged:
                return "converged", (f"the reference agrees after {s.steps - s.verify_step} "
                                     f"polish steps: {c.describe(r.fmax, _tol(r))}")
    done = s.steps - s.verify_step
    return "unverified", (f"converged on the committee surface, but the reference disagrees "
                          f"after {done} polish steps (--polish {r.polish}): "
                          f"{c.describe(r.fmax, _tol(r))}")


def result(r, calc, target, status, reason) -> RelaxResult:
    """The :class:`RelaxResult` of a finished relaxation."""
    s = calc.state
    if not calc.frames:  # hard cap or guard at the very first evaluation
        return RelaxResult(None, status, reason, s.steps, math.nan, math.nan, math.nan,
                           math.nan, math.nan, "none", s.committee, s.reference, s.labels, [])
    final = calc.frames[-1].copy()
    final.calc = SinglePointCalculator(final, **calc.frames[-1].calc.results)
    results, com, decision = calc.last
    # after a hard cap or a guard the current geometry has no result: reading it would evaluate
    fmax = float(max_force(target.get_forces())) if status not in ("hard_cap", "exploded") \
        else math.nan
    final.info.update(relax_status=status, relax_fmax=fmax)
    com = com or {}
    ref = decision == K.REFERENCE
    verified = None
    if status in ("converged", "unverified") and (ref or r.verify):
        verified = status == "converged"
    ref_f = max_force(final.get_forces()) if ref else math.nan
    ref_s = (stress_residual_GPa(final.get_stress(), r.pressure_GPa, r.constant_volume)
             if ref and r.cell else math.nan)
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


__all__ = ["STEP", "RelaxResult", "RelaxTask", "check", "descend", "result", "run", "verify",
           "walk"]
