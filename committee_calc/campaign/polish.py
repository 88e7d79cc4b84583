"""Polishing a campaign candidate after a failed verification: committee curvature, reference
gradient.

A committee minimum that the reference rejects (force or stress above the verification
targets) is usually close to the reference minimum: the committee's curvature (its Hessian,
e.g. its bulk modulus) is much better than its residual force or stress at one point.  With
``polish = N > 0`` the campaign takes at most N steps, each one reference call, labelled
through the one labeller (reason ``polish``) so the next committee learns from it:

1. at the current structure x_k the reference gives F_ref, σ_ref (the first is the stored label
   of the failed verification); if they meet the targets the candidate is ``converged``;
2. the committee gives F_com, σ_com at x_k; the residuals ΔF = F_ref − F_com and
   Δσ = σ_ref − σ_com are added as constants to the committee's forces and stress, and the
   structure relaxes on that corrected surface (the settings' optimiser, cell filter, pressure
   and symmetry) to a quarter of the verification targets (force and stress), within a trust
   region around x_k (cell strain ≤ 2 %, atomic motion ≤ 0.15 Å: a constant correction is
   only valid nearby; without it a stress correction of a few GPa can carry a β-Sn cell along
   its tetragonal path to diamond), giving x_{k+1}.

Near a minimum this is a Newton step with the committee's Hessian and the reference's gradient:
the residual shrinks each step by about the committee's relative curvature error (a few percent
to tens of percent), so two or three reference calls usually suffice, where a reference-only
optimiser starting with no curvature knowledge needs many more (it must learn the Hessian).
This is the idea of Δ-corrected surrogate relaxations (a constant gradient correction of a
surrogate, as in gradient-enhanced/trust-region surrogate optimisation).

Resume: every step is a function of the stored labels and the committee, and the labeller
returns stored labels for structures it has seen (the values as stored, also on the first
computation), so a polish killed half-way replays its steps without a reference call and ends
where an uninterrupted one ends.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .. import keys as K
from ..relax.criteria import convergence
from ..relax.policy import optimizer_class
from ..units import gpa_to_ev_per_a3

#: provenance reason of a polish label
POLISH = "polish"
#: committee optimiser steps at most per polish step
INNER_STEPS = 300
#: the corrected relaxation converges to this fraction of the verification targets
INNER_FRACTION = 0.25
#: trust region of one polish step: largest atomic displacement [Å] and cell strain [1]
TRUST_DISPLACEMENT_A = 0.15
TRUST_STRAIN = 0.02


class CorrectedCalculator(Calculator):
    """``committee`` + constant force (N,3) [eV/Å] and stress (6,) [eV/Å³] corrections.

    The energy is the committee's plus −ΔF·(x − x₀) (x₀ the positions at construction); the
    stress correction has no energy term (only forces and stress drive the optimisers used)."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, committee, d_forces, d_stress, positions0):
        super().__init__()
        self.committee, self.d_forces, self.d_stress = committee, np.asarray(d_forces, float), d_stress
        self.positions0 = np.array(positions0, float)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.set_constraint()
        res = self.committee.predict([work])[0]
        e = float(res[K.ENERGY]) - float(np.sum(self.d_forces * (work.positions - self.positions0)))
        self.results = {"energy": e, "free_energy": e, "forces": np.asarray(res[K.FORCES]) + self.d_forces}
        if self.d_stress is not None and K.STRESS in res:
            self.results["stress"] = np.asarray(res[K.STRESS]) + self.d_stress


def _inside(x, y) -> bool:
    """``y`` within the trust region around ``x``: cell strain ≤ TRUST_STRAIN and every atom
    (in ``x``'s cell, fractional motion) within TRUST_DISPLACEMENT_A of its place."""
    strain = np.linalg.solve(x.cell[:], y.cell[:]) - np.eye(3)
    if np.max(np.abs(strain)) > TRUST_STRAIN:
        return False
    d = (y.get_scaled_positions(wrap=False) - x.get_scaled_positions(wrap=False)) @ x.cell[:]
    return float(np.max(np.linalg.norm(d, axis=1))) <= TRUST_DISPLACEMENT_A


def _stored(labeller, lab) -> dict:
    """The label's reference values as stored (fresh values only without a store)."""
    stored = labeller.store.reference_results(lab.index) if labeller.store is not None else None
    return stored or dict(lab.results)


def polish(atoms, labeller, committee, settings, steps, provenance, check) -> dict:
    """At most ``steps`` reference calls after the one at ``atoms`` itself (module docstring).

    atoms: the rejected structure (its constraints kept); committee: the current committee
    (``predict``); settings: the campaign settings (optimizer, cell, pressure_GPa,
    fix_symmetry, verify_fmax, verify_stress_GPa); provenance: label provenance (round, candidate, slot,
    step of the first polish call); check: ``reference_check``-like callable(results, atoms)
    -> dict with ``verified``.
    Returns ``{"verified": bool, "steps": reference calls after the first, "reference": the
    last check, "index": store index of the last label, "atoms": the final structure}``.
    Raises ReferenceCalculationError (from the labeller).
    """
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter

    x = atoms.copy()
    x.calc = None
    user = list(x.constraints)
    cell = bool(settings.get("cell"))
    k, verdict, index = 0, None, None
    while True:
        geometry = x.copy()
        geometry.set_constraint()
        lab = labeller.label(geometry, provenance=dict(provenance, reason=POLISH,
                                                       step=int(provenance["step"]) + k))
        ref, index = _stored(labeller, lab), lab.index
        verdict = check(ref, x)
        if verdict["verified"] or k >= steps:
            break
        com = committee.predict([geometry])[0]
        d_stress = (np.asarray(ref[K.STRESS]) - np.asarray(com[K.STRESS])) if cell else None
        y = x.copy()
        if settings.get("fix_symmetry"):
            y.set_constraint([FixSymmetry(y)] + [c.copy() for c in user])
        y.calc = CorrectedCalculator(committee, np.asarray(ref[K.FORCES]) - np.asarray(com[K.FORCES]),
                                     d_stress, y.positions)
        target = (FrechetCellFilter(y, scalar_pressure=gpa_to_ev_per_a3(settings.get("pressure_GPa", 0.0)))
                  if cell else y)
        # the corrected forces at x_k are the reference's: relax well inside the verification targets
        tol = INNER_FRACTION * settings["verify_stress_GPa"] if cell else None
        fmax = INNER_FRACTION * settings["verify_fmax"]
        opt = optimizer_class(settings["optimizer"])(target, logfile=None)
        last = (y.positions.copy(), y.cell[:].copy())
        for _ in opt.irun(fmax=0.0, steps=INNER_STEPS):
            if not _inside(x, y):  # the step left the trust region: keep its last point inside
                y.set_cell(last[1], scale_atoms=False)
                y.positions = last[0]
                break
            last = (y.positions.copy(), y.cell[:].copy())
            if convergence(target, y, fmax, cell, tol, settings.get("pressure_GPa", 0.0)).converged:
                break
        x = y.copy()
        x.calc = None
        x.set_constraint([c.copy() for c in user])
        k += 1
    out = x.copy()
    out.calc = None
    return {"verified": bool(verdict["verified"]), "steps": k, "reference": verdict, "index": index,
            "atoms": out}


__all__ = ["polish", "CorrectedCalculator", "POLISH"]
