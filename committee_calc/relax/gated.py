"""Uncertainty-gated relaxation of one structure.

::

    from committee_calc.gate import Gate
    from committee_calc.relax.gated import GatedRelaxer

    gate = Gate(committee, reference, thresholds={"forces_std_max": 0.05}, label_store=store)
    result = GatedRelaxer(gate, policy="fallback", fmax=0.05, cell=True).relax(atoms)
    result.energy, result.n_reference_calls, result.atoms

Every energy/force evaluation of the optimiser goes through the gate (or a
bare :class:`~committee_calc.committee.CommitteeCalculator`, committee-only).
What happens when the committee is uncertain is the *policy*:

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
    as ``stop``, and that last structure is labelled with the reference and
    appended to the label store (the paper's pool cycles).

The relaxation also ends at ``fmax`` (status ``"converged"``),
``max_steps`` (``"max_steps"``) or when the gate's hard cap raises
:class:`~committee_calc.errors.GateStop` (``"hard_cap"``).  The user's
``atoms`` is never modified: the relaxer works on a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

from ..errors import ConfigError, GateStop
from ..io import attach_uncertainties
from ..units import check_positive

POLICIES = ("fallback", "stop", "stop_and_label")
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
STATUSES = ("converged", "max_steps", "uncertain", "hard_cap")


def optimizer_class(name: str):
    import ase.optimize as opt

    key = str(name).upper()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    return getattr(opt, key)


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


class _CommitteeOnly:
    """Gate-like wrapper of a bare committee: always trusts it, never labels."""

    def __init__(self, committee):
        self.committee = committee

    def evaluate(self, atoms, step=None, info=None, properties=()):
        a = atoms.copy()
        a.calc = self.committee
        props = ["energy", "forces"]
        if "stress" in self.committee.implemented_properties and a.cell.rank == 3 and all(a.pbc):
            props.append("stress")
        self.committee.calculate(a, props, all_changes)
        res = dict(self.committee.results)
        return SimpleNamespace(decision="committee", reason="committee only", results=res,
                               committee_results=res, label_index=None, reference_failed=False)


def label_structure(gate, atoms, committee_results=None, provenance=None):
    """Run the gate's reference on ``atoms`` and append the label; return its index."""
    reference = getattr(gate, "reference", None)
    store = getattr(gate, "label_store", None)
    if reference is None or store is None:
        raise ConfigError("policy 'stop_and_label' needs a gate with a reference calculator and a label store")
    props = ["energy", "forces"] + (["stress"] if atoms.cell.rank == 3 and all(atoms.pbc) else [])
    ref = reference.compute(atoms, props)
    if hasattr(gate, "n_reference_calls"):
        gate.n_reference_calls += 1
    prov = dict(getattr(gate, "provenance", None) or {}, **(provenance or {}))
    return store.append(atoms, ref, committee_results=committee_results, provenance=prov)


class _PolicyCalculator(Calculator):
    """The calculator the optimiser sees: gate evaluation + bookkeeping + policy."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, relaxer, info, on_frame, counts, reuse=None):
        super().__init__()
        self.r = relaxer
        self.info = dict(info or {})
        self.on_frame = on_frame
        self.counts = counts
        self.reuse = reuse  # (atoms, results, committee_results) of a resumed frame
        self.frames = []
        self.last = None  # (results, committee_results, decision)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        step = self.counts["steps"] = self.counts["evaluations"]
        if self.reuse is not None and _same_geometry(self.reuse[0], atoms):
            results, com, decision = self.reuse[1], self.reuse[2], self.reuse[3]
            self.reuse = None
            new = False
        else:
            self.reuse = None
            try:
                props = ("energy", "forces") + (("stress",) if self.r.cell else ())
                res = self.r.gate.evaluate(atoms, step=step, info=self.info, properties=props)
            except GateStop as exc:
                raise _Stop("hard_cap", f"hard cap exceeded: {exc}") from None
            results, com, decision = dict(res.results), res.committee_results, res.decision
            self.counts["committee"] += com is not None
            self.counts["reference"] += decision == "reference"
            self.counts["labels"] += res.label_index is not None
            new = True
        self.counts["evaluations"] += 1
        self.results = {k: results[k] for k in ("energy", "forces", "stress") if k in results}
        self.results["free_energy"] = self.results["energy"]
        if "stress" in properties and "stress" not in self.results:
            raise ConfigError("the cell is relaxed but the result has no stress; use members and "
                              "a reference that compute stress, or relax positions only")
        self.last = (results, com, decision)
        frame = self._frame(atoms, results, com, decision, step)
        self.frames.append(frame)
        if self.on_frame is not None and new:
            self.on_frame(frame)
        u = (com or {}).get("force_uncertainty_relative")
        if self.r.policy != "fallback" and com is not None and self.r.stop_criterion(com):
            if self.r.policy == "stop_and_label" and decision != "reference" and new:
                self.counts["labels"] += label_structure(
                    self.r.gate, atoms, com, dict(self.info, step=step, reason="stop_and_label")) is not None
                self.counts["reference"] += 1
            raise _Stop("uncertain", f"relative force uncertainty U = {u:.4g} > U_max = {self.r.u_max:g}")

    def _frame(self, atoms, results, com, decision, step):
        f = atoms.copy()
        f.constraints = []
        f.calc = SinglePointCalculator(f, **{k: results[k] for k in ("energy", "forces", "stress")
                                             if k in results})
        if com:
            attach_uncertainties(f, com, members=False)
        f.info.update(self.info)
        f.info.update(relax_step=int(step), gate_decision=decision,
                      relax_committee_calls=self.counts["committee"],
                      relax_reference_calls=self.counts["reference"],
                      relax_labels=self.counts["labels"])
        return f


def _same_geometry(a, b, tol=1e-6) -> bool:
    return (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
            and np.allclose(a.positions, b.positions, atol=tol, rtol=0)
            and np.allclose(a.cell[:], b.cell[:], atol=tol, rtol=0))


class GatedRelaxer:
    """Relax structures through a gate with a policy for uncertain steps.

    Parameters
    ----------
    gate: a :class:`committee_calc.gate.Gate` (or a CommitteeCalculator: committee only).
    policy: ``fallback`` | ``stop`` | ``stop_and_label`` (see module docstring).
    u_max: U_max for the stop policies (relative force uncertainty, no unit).
    optimizer: ``FIRE`` | ``BFGS`` | ``LBFGS``; optimizer_kwargs passed to it.
    fmax: convergence on the max force [eV/Å] (generalised force with ``cell``).
    max_steps: optimiser steps at most (counted over resumes).
    cell: also relax the cell (ASE ``FrechetCellFilter``) at ``pressure_GPa``.
    fix_symmetry: keep the starting space group (ASE ``FixSymmetry``, needs spglib).
    """

    def __init__(self, gate, policy="fallback", u_max=None, optimizer="FIRE", fmax=0.05,
                 max_steps=500, cell=False, pressure_GPa=0.0, fix_symmetry=False,
                 symprec=1e-3, optimizer_kwargs=None):
        if policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")
        if policy != "fallback":
            if u_max is None:
                raise ConfigError(f"policy {policy!r} needs u_max (the relative force uncertainty "
                                  "U_max, e.g. --threshold-force-uncertainty-relative 0.2)")
            u_max = check_positive("u_max", u_max)
        if policy == "stop_and_label" and (getattr(gate, "reference", None) is None
                                           or getattr(gate, "label_store", None) is None):
            raise ConfigError("policy 'stop_and_label' needs a gate with a reference and a label store")
        if not hasattr(gate, "evaluate"):
            if not hasattr(gate, "members"):
                raise ConfigError(f"expected a Gate or a CommitteeCalculator, got {gate!r}")
            gate = _CommitteeOnly(gate)
        self.gate, self.policy, self.u_max = gate, policy, u_max
        self.optimizer = optimizer_class(optimizer)
        self.optimizer_name = str(optimizer).upper()
        self.fmax = check_positive("fmax", fmax)
        if int(max_steps) < 0:
            raise ConfigError(f"max_steps must be >= 0, got {max_steps}")
        self.max_steps = int(max_steps)
        self.cell, self.fix_symmetry, self.symprec = bool(cell), bool(fix_symmetry), symprec
        self.pressure_GPa = float(pressure_GPa)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})

    def stop_criterion(self, committee_results) -> bool:
        """Hessmann's criterion: True when U = max‖σ_F‖/max‖F̄‖ strictly exceeds U_max."""
        u = float(committee_results["force_uncertainty_relative"])
        return not math.isfinite(u) or u > self.u_max

    def relax(self, atoms, info=None, on_frame=None, resume=None) -> RelaxResult:
        """Relax a copy of ``atoms``.

        info: dict copied into every frame and passed to the gate (provenance,
            e.g. ``{"candidate": "c07"}``).
        on_frame: callable(frame Atoms) after each *new* evaluation (checkpointing).
        resume: a frame previously passed to ``on_frame``: the relaxation
            restarts there; its stored result is reused (no new call) and the
            step/call counters continue.
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

            if work.cell.rank != 3 or not all(work.pbc):
                raise ConfigError("cell relaxation needs a 3-D periodic structure; drop --cell")
            target = FrechetCellFilter(work, scalar_pressure=self.pressure_GPa * GPa)
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
        if not calc.frames:  # hard cap at the very first evaluation
            return RelaxResult(None, status, reason, calc.counts["steps"], math.nan, math.nan,
                               math.nan, math.nan, math.nan, "none", calc.counts["committee"],
                               calc.counts["reference"], calc.counts["labels"], [])
        final = calc.frames[-1].copy()
        final.calc = SinglePointCalculator(final, **calc.frames[-1].calc.results)
        results, com, decision = calc.last
        fmax = float(_fmax(target)) if status != "hard_cap" else math.nan
        final.info.update(relax_status=status, relax_fmax=fmax)
        com = com or {}
        return RelaxResult(
            atoms=final, status=status, reason=reason, steps=int(final.info["relax_step"]),
            energy=float(results["energy"]), energy_std=float(com.get("energy_std", math.nan)),
            forces_std_max=float(com.get("forces_std_max", math.nan)),
            force_uncertainty_relative=float(com.get("force_uncertainty_relative", math.nan)),
            fmax=fmax, decision=decision, n_committee_calls=calc.counts["committee"],
            n_reference_calls=calc.counts["reference"], n_labels=calc.counts["labels"],
            trajectory=calc.frames)


def _fmax(target) -> float:
    f = target.get_forces()
    return float(np.sqrt((f ** 2).sum(axis=1)).max()) if len(f) else 0.0


def _resume_results(frame):
    """(atoms, results, committee_results, decision) stored on a checkpoint frame."""
    from ..io import read_uncertainties

    res = dict(frame.calc.results) if frame.calc is not None else {}
    if "energy" not in res or "forces" not in res:
        return None
    com = read_uncertainties(frame) or None
    return frame, res, com, str(frame.info.get("gate_decision", "committee"))
