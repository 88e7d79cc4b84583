"""When a relaxation has converged, agrees with the reference, or makes no progress.

::

    check = convergence(target, atoms, fmax=0.05, cell=True, stress_tol_GPa=0.1)
    check.converged, check.fmax, check.atom_fmax, check.stress_GPa

    stall = StallDetector(steps=20, tol=1e-4)
    moved = stall.push(atoms)        # None, or the largest motion [Å] of a stalled window

Convergence (the same test on the committee surface and for the reference's verdict)
    the largest generalised force of the optimised object (the atoms, or the
    cell filter with its cell degrees of freedom; user constraints and
    ``FixSymmetry`` applied) is below ``fmax`` [eV/Å], and, when the cell is
    relaxed, the residual stress ``max_ij |σ_ij − σ_target,ij|`` is at most
    ``stress_tol_GPa`` [GPa].  The stress test is needed besides the generalised
    force: ``FrechetCellFilter`` scales its cell forces by the volume per atom,
    so ``fmax = 0.05 eV/Å`` alone allows ~0.4 GPa in silicon.

Stall
    over the last ``steps`` optimiser steps every geometry stayed within
    ``tol`` Å of the geometry ``steps`` steps earlier (largest atomic
    displacement and largest change of a cell-vector component) while not
    converged.  This is what a relaxation pinned on the gate boundary looks
    like (FIRE halving its time step at every surface change until steps are
    ~1e-8 Å, or exactly zero).  Energies are not used: across a surface change
    (committee ↔ reference) they are not comparable, and on one surface an
    energy change below δE at a largest force F already means a motion along
    the force below δE/F, which the displacement test sees.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..units import ev_per_a3_to_gpa, gpa_to_ev_per_a3


def max_force(forces) -> float:
    """Largest row norm of ``forces`` (n, 3) [eV/Å]; 0 for no rows."""
    f = np.asarray(forces, float).reshape(-1, 3)
    return float(np.sqrt((f ** 2).sum(axis=1)).max()) if len(f) else 0.0


def stress_residual_GPa(stress, pressure_GPa: float = 0.0, constant_volume: bool = False) -> float:
    """``max_ij |σ_ij − σ_target,ij|`` [GPa] of a Voigt stress (6,) or tensor (3, 3) [eV/Å³].

    ASE sign convention (tensile positive): the target at external pressure p is
    ``σ = −p·1`` (the equilibrium of ``FrechetCellFilter(scalar_pressure=p)``);
    with ``constant_volume`` only the deviatoric part counts (the volume is not relaxed).
    """
    s = np.asarray(stress, float)
    if s.shape == (3, 3):
        s = s.flat[[0, 4, 8, 5, 2, 1]]
    s = s.reshape(6)
    diag = s[:3] - s[:3].mean() if constant_volume else s[:3] + gpa_to_ev_per_a3(pressure_GPa)
    return ev_per_a3_to_gpa(float(np.abs(np.concatenate([diag, s[3:]])).max()))


@dataclass(frozen=True)
class Check:
    """One convergence test (units eV/Å, GPa; ``stress_GPa`` NaN without cell relaxation).

    fmax: largest generalised force (what the optimiser minimises);
    atom_fmax: largest atomic force (constraints applied).
    """

    converged: bool
    fmax: float
    atom_fmax: float
    stress_GPa: float

    def describe(self, fmax: float, stress_tol_GPa: float | None) -> str:
        """``"fmax 0.12 eV/Å > 0.05"`` (and the stress against its tolerance)."""
        text = f"fmax {self.fmax:.3g} eV/Å {'<' if self.fmax < fmax else '>='} {fmax:g}"
        if stress_tol_GPa is not None and math.isfinite(self.stress_GPa):
            op = "<=" if self.stress_GPa <= stress_tol_GPa else ">"
            text += f", |stress| {self.stress_GPa:.3g} GPa {op} {stress_tol_GPa:g}"
        return text


def convergence(target, atoms, fmax: float, cell: bool = False, stress_tol_GPa: float = 0.1,
                pressure_GPa: float = 0.0, constant_volume: bool = False) -> Check:
    """The convergence test of the module docstring on the current results.

    target: what the optimiser moves (``atoms`` or its cell filter); atoms: the structure
    (its calculator holds the results).  No new evaluation is made when the results are current.
    """
    f = max_force(target.get_forces())
    atom_f = max_force(atoms.get_forces())
    s = (stress_residual_GPa(atoms.get_stress(), pressure_GPa, constant_volume) if cell
         else math.nan)
    return Check(bool(f < fmax and (not cell or s <= stress_tol_GPa)), f, atom_f, s)


class StallDetector:
    """No progress over ``steps`` optimiser steps (module docstring); ``tol`` in Å."""

    def __init__(self, steps: int = 20, tol: float = 1e-4):
        self.steps, self.tol = int(steps), float(tol)
        self.window = deque(maxlen=self.steps + 1)

    def push(self, atoms) -> float | None:
        """Record the current geometry; the largest motion [Å] of the window when it is stalled."""
        self.window.append((atoms.positions.copy(), np.array(atoms.cell[:], float)))
        if len(self.window) <= self.steps:
            return None
        pos0, cell0 = self.window[0]
        moved = max(max(np.sqrt(((p - pos0) ** 2).sum(axis=1)).max(initial=0.0),
                        np.abs(c - cell0).max(initial=0.0))
                    for p, c in list(self.window)[1:])
        return float(moved) if moved < self.tol else None


__all__ = ["Check", "StallDetector", "convergence", "max_force", "stress_residual_GPa"]
