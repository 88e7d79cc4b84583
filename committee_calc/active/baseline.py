"""Baseline relaxation of candidate packings, the first step of building a landscape.

:func:`relax_with_baseline` relaxes one candidate with a cheap baseline
calculator (the force field of a CSP search) through the one relaxation
implementation, :class:`committee_calc.relax.gated.GatedRelaxer` on
``Gate(calculator)`` (committee-only evaluation of any ASE calculator), and
records the baseline energy and forces at the minimum, the keys
:func:`committee_calc.analysis.landscape.make_landscape` reads.  Near-identical
minima are then removed with
:func:`committee_calc.analysis.landscape.deduplicate_minima`.
"""
from __future__ import annotations

import numpy as np

from .. import keys as K
from ..errors import ConfigError
from ..gate import Gate
from ..relax.gated import GatedRelaxer


def relax_with_baseline(atoms, calculator, fmax=0.05, max_steps=200, cell=True,
                        optimizer="FIRE", energy_key=K.BASELINE_ENERGY,
                        forces_key=K.BASELINE_FORCES):
    """Relax a copy of ``atoms`` with ``calculator`` (the CSP baseline) and return it.

    Positions (and the cell, ``cell=True``, via ASE's FrechetCellFilter at zero
    pressure) are optimised by ``optimizer`` (FIRE, BFGS or LBFGS) until
    max |F| < ``fmax`` [eV/Å] (the filter's generalised cell forces likewise)
    or ``max_steps`` steps.  The returned copy keeps the input's ``info`` and
    ``arrays``, has no calculator, and carries ``info[energy_key]`` [eV per
    cell] and ``arrays[forces_key]`` [eV/Å, (N, 3)] at the relaxed geometry,
    ``info["relax_steps"]`` (optimiser steps), ``info["relax_converged"]``
    (bool) and ``info["relax_fmax"]`` [eV/Å] (largest atomic force at the
    end, after the constraints).  The user's ``atoms`` is left untouched.

    User constraints (``FixAtoms``, ``FixCartesian``, …) are kept: on the copy
    returned and during the relaxation (fixed atoms move 0 Å at fixed cell; with
    ``cell=True`` they follow the cell's homogeneous strain, ASE's filter semantics).
    ``arrays[forces_key]`` holds the full baseline forces, also on fixed atoms.

    Raises ConfigError for fmax <= 0, max_steps < 1, an unknown optimizer, or
    ``cell=True`` on a structure that is not 3-D periodic.
    """
    if int(max_steps) < 1 or not float(fmax) > 0:
        raise ConfigError(f"relaxation needs fmax > 0 and max_steps >= 1, got {fmax!r}, {max_steps!r}")
    relaxer = GatedRelaxer(Gate(calculator), optimizer=optimizer, fmax=fmax, max_steps=max_steps,
                           cell=cell)
    res = relaxer.relax(atoms)
    final = res.atoms
    forces = np.array(final.get_forces(apply_constraint=False), float)  # full forces
    out = atoms.copy()
    out.calc = None
    out.set_cell(final.cell, scale_atoms=False)
    out.positions = final.positions
    out.info[energy_key] = float(res.energy)
    out.arrays[forces_key] = forces
    out.info["relax_steps"] = int(res.steps)
    out.info["relax_converged"] = res.status == "converged"
    free = forces.copy()  # the optimiser's forces: the user's constraints applied
    for c in out.constraints:
        c.adjust_forces(out, free)
    out.info["relax_fmax"] = float(np.sqrt((free ** 2).sum(1)).max()) if len(out) else 0.0
    return out
