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
   region around x_k (cell strain ≤ 3 %, atomic motion ≤ 0.15 Å: a step that leaves it ends
   on its boundary; a constant correction is
   only valid nearby; without it a stress correction of a few GPa can carry a β-Sn cell along
   its tetragonal path to diamond), giving x_{k+1};
3. trust-region acceptance: a step whose reference residual (the larger of fmax/target and
   stress/target) is no better than the best point's is rejected — the next step starts again
   from the best point with half the radius; an accepted step doubles it back (up to 1).  This
   keeps the polish convergent where the committee's curvature is poor (β-Sn: without it the
   cell oscillated between ±5 GPa).  The candidate goes on from the best point.

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
from ..gate import Gate
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
TRUST_STRAIN = 0.03


class CorrectedCalculator(Calculator):
    """A committee-only ``gate``'s results + constant force (N,3) [eV/Å] and stress (6,) [eV/Å³]
    corrections.

    The energy is the committee's plus −ΔF·(x − x₀) (x₀ the positions at construction); the
    stress correction has no energy term (only forces and stress drive the optimisers used)."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, gate, d_forces, d_stress, positions0):
        super().__init__()
        self.gate, self.d_forces, self.d_stress = gate, np.asarray(d_forces, float), d_stress
        self.positions0 = np.array(positions0, float)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.set_constraint()
        res = self.gate.evaluate_many([work])[0].results
        e = float(res[K.ENERGY]) - float(np.sum(self.d_forces * (work.positions - self.positions0)))
        self.results = {"energy": e, "free_energy": e, "forces": np.asarray(res[K.FORCES]) + self.d_forces}
        if self.d_stress is not None and K.STRESS in res:
            self.results["stress"] = np.asarray(res[K.STRESS]) + self.d_stress


def _trust_fraction(x, y, radius=1.0) -> float:
    """1 when ``y`` lies in the trust region around ``x`` (cell strain ≤ radius·TRUST_STRAIN,
    every atom within radius·TRUST_DISPLACEMENT_A of its place, fractional motion in ``x``'s
    cell), else the fraction of the way from the previous point that reaches the boundary."""
    strain = float(np.max(np.abs(np.linalg.solve(x.cell[:], y.cell[:]) - np.eye(3))))
    d = (y.get_scaled_positions(wrap=False) - x.get_scaled_positions(wrap=False)) @ x.cell[:]
    disp = float(np.max(np.linalg.norm(d, axis=1)))
    over = max(strain / TRUST_STRAIN, disp / TRUST_DISPLACEMENT_A) / radius
    return 1.0 if over <= 1.0 else 1.0 / over


def _stored(labeller, lab) -> dict:
    """The label's reference values as stored (fresh values only without a store)."""
    stored = labeller.store.reference_results(lab.index) if labeller.store is not None else None
    return stored or dict(lab.results)


def polish(atoms, labeller, committee, settings, steps, provenance, check) -> dict:
    """At most ``steps`` reference calls after the one at ``atoms`` itself (module docstring).

    atoms: the rejected structure (its constraints kept); committee: the current committee
    (evaluated through a committee-only :class:`~committee_calc.gate.Gate`); settings: the
    campaign settings (optimizer, cell, pressure_GPa, fix_symmetry, verify_fmax,
    verify_stress_GPa); provenance: label provenance (round, candidate, slot,
    step of the first polish call); check: ``reference_check``-like callable(results, atoms)
    -> dict with ``verified``.
    Returns ``{"verified": bool, "steps": reference calls after the first, "reference": the
    last check, "index": store index of the last label, "atoms": the final structure}``.
    Raises ReferenceCalculationError (from the labeller).
    """
    gate = Gate(committee)  # committee only: the one evaluator
    x = atoms.copy()
    x.calc = None
    user = list(x.constraints)
    cell = bool(settings.get("cell"))
    k, radius, best = 0, 1.0, None
    while True:
        geometry = x.copy()
        geometry.set_constraint()
        lab = labeller.label(geometry, provenance=dict(provenance, reason=POLISH,
                                                       step=int(provenance["step"]) + k))
        ref = _stored(labeller, lab)
        verdict = check(ref, x)
        score = _residual(verdict, settings)
        if best is None or score < best["score"]:  # accepted: the trust region grows back
            best = {"atoms": x, "geometry": geometry, "ref": ref, "verdict": verdict, "score": score,
                    "index": lab.index}
            radius = min(1.0, 2.0 * radius) if k else radius
        else:  # rejected (no better than the best point): back there with half the radius
            radius *= 0.5
        if verdict["verified"] or k >= steps:
            break
        x = _corrected_step(best, gate, settings, user, cell, radius)
        k += 1
    if verdict["verified"]:
        best = {"atoms": x, "verdict": verdict, "index": lab.index}
    out = best["atoms"].copy()
    out.calc = None
    return {"verified": bool(verdict["verified"]), "steps": k, "reference": best["verdict"],
            "index": best["index"], "atoms": out}


def _residual(verdict, settings) -> float:
    """How far a reference verdict is from the targets (1 = on them): the larger of
    fmax/verify_fmax and stress/verify_stress."""
    r = verdict["fmax_eVA"] / settings["verify_fmax"]
    if verdict.get("stress_max_GPa") is not None:
        r = max(r, verdict["stress_max_GPa"] / settings["verify_stress_GPa"])
    return float(r)


def _corrected_step(best, gate, settings, user, cell, radius):
    """From the best point so far, relax on the committee + its residual correction within
    ``radius`` × the trust region; returns the new structure (user constraints only)."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter

    x, ref = best["atoms"], best["ref"]
    if "com" not in best:  # once per best point (a rejected step comes back here)
        best["com"] = gate.evaluate_many([best["geometry"]])[0].results
    com = best["com"]
    d_stress = (np.asarray(ref[K.STRESS]) - np.asarray(com[K.STRESS])) if cell else None
    y = x.copy()
    if settings.get("fix_symmetry"):
        y.set_constraint([FixSymmetry(y)] + [c.copy() for c in user])
    y.calc = CorrectedCalculator(gate, np.asarray(ref[K.FORCES]) - np.asarray(com[K.FORCES]), d_stress,
                                 y.positions)
    pressure = settings.get("pressure_GPa", 0.0)
    target = FrechetCellFilter(y, scalar_pressure=gpa_to_ev_per_a3(pressure)) if cell else y
    # the corrected forces at x are the reference's: relax well inside the verification targets
    tol = INNER_FRACTION * settings["verify_stress_GPa"] if cell else None
    fmax = INNER_FRACTION * settings["verify_fmax"]
    opt = optimizer_class(settings["optimizer"])(target, logfile=None)
    last = (y.get_scaled_positions(wrap=False), y.cell[:].copy())
    for _ in opt.irun(fmax=0.0, steps=INNER_STEPS):
        t = _trust_fraction(x, y, radius)
        if t < 1.0:  # the step left the trust region: stop on its boundary, along the step
            frac = last[0] + t * (y.get_scaled_positions(wrap=False) - last[0])
            y.set_cell(last[1] + t * (y.cell[:] - last[1]), scale_atoms=False)
            y.set_scaled_positions(frac)
            break
        last = (y.get_scaled_positions(wrap=False), y.cell[:].copy())
        if convergence(target, y, fmax, cell, tol, pressure).converged:
            break
    new = y.copy()
    new.calc = None
    new.set_constraint([c.copy() for c in user])
    return new


__all__ = ["polish", "CorrectedCalculator", "POLISH"]
