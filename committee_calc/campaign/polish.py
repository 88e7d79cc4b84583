"""Polishing a campaign candidate on the reference surface after a failed verification.

A committee minimum that the reference rejects (force or stress above the verification
targets) is usually a few reference steps from the reference minimum: the committee is right
to within its residual error, and asking it again after retraining may take several rounds for
a tight stress target (0.1 GPa is ~1e-2 eV/Å in FrechetCellFilter's cell forces of an 8-atom
cell).  With ``polish = N > 0`` the campaign takes at most N optimiser steps on the reference
surface from the rejected structure (the settings' optimiser, cell filter, pressure and
symmetry), every reference call a label through the one labeller (reason ``polish``, so the
next committee learns from them), and stops as soon as a reference call meets the targets.
This is the same idea as ``committee-relax --polish`` (:mod:`committee_calc.relax.gated`).

Resume: the polish starts from the stored rejected structure with fresh optimiser memory and
the labeller returns stored labels for structures it has seen, so a polish killed half-way
replays its steps from the label store (no reference call repeated) and ends where an
uninterrupted one ends.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..relax.policy import optimizer_class
from ..units import gpa_to_ev_per_a3

#: provenance reason of a polish label
POLISH = "polish"


class _Converged(Exception):
    """Raised out of the optimiser when a reference call meets the verification targets."""


class LabelCalculator(Calculator):
    """An ASE calculator whose every call is a label of ``labeller`` (provenance + step).

    ``check(results, atoms) -> dict`` (with a boolean ``verified``) is applied to each label;
    the first verified one ends the optimisation (``self.verdict`` keeps the last check).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, labeller, provenance, check):
        super().__init__()
        self.labeller, self.provenance, self.check = labeller, dict(provenance), check
        self.calls, self.verdict, self.last_index = 0, None, None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        geometry = self.atoms.copy()
        geometry.set_constraint()
        prov = dict(self.provenance, step=int(self.provenance["step"]) + self.calls)
        lab = self.labeller.label(geometry, provenance=prov)
        self.calls += 1
        self.last_index = lab.index
        # the values as stored (not the fresh ones): a replayed polish then steps exactly alike
        stored = self.labeller.store.reference_results(lab.index) if self.labeller.store is not None else None
        self.results = {k: (np.array(v) if isinstance(v, (list, np.ndarray)) else v)
                        for k, v in (stored or lab.results).items()}
        self.results.setdefault("free_energy", self.results["energy"])
        self.verdict = self.check(self.results, self.atoms)
        if self.verdict["verified"]:
            raise _Converged


def polish(atoms, labeller, settings, steps, provenance, check) -> dict:
    """At most ``steps`` reference optimiser steps from ``atoms`` (its constraints kept); the
    first call, at ``atoms`` itself, is normally the stored label of the failed verification.

    settings: the campaign settings (optimizer, cell, pressure_GPa, fix_symmetry);
    provenance: label provenance (round, candidate, slot, step of the first polish call);
    check: ``reference_check``-like callable(results, atoms) -> dict with ``verified``.
    Returns ``{"verified": bool, "steps": optimiser steps taken, "reference": the
    last check, "index": store index of the last label, "atoms": the final structure}``.
    Raises ReferenceCalculationError (from the labeller).
    """
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter

    work = atoms.copy()
    user = list(work.constraints)
    if settings.get("fix_symmetry"):
        work.set_constraint([FixSymmetry(work)] + user)
    calc = LabelCalculator(labeller, dict(provenance, reason=POLISH), check)
    work.calc = calc
    target = (FrechetCellFilter(work, scalar_pressure=gpa_to_ev_per_a3(settings.get("pressure_GPa", 0.0)))
              if settings.get("cell") else work)
    opt = optimizer_class(settings["optimizer"])(target, logfile=None)
    try:  # the first call is the rejected structure itself (a stored label), then ``steps`` steps
        for _ in opt.irun(fmax=0.0, steps=int(steps)):
            pass
    except _Converged:
        pass
    out = work.copy()
    out.calc = None
    return {"verified": bool(calc.verdict and calc.verdict["verified"]), "steps": max(calc.calls - 1, 0),
            "reference": calc.verdict, "index": calc.last_index, "atoms": out}


__all__ = ["polish", "LabelCalculator", "POLISH"]
