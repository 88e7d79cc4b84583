"""Structures of a QHA scan: scaled volumes or pressures, fixed-volume relaxation,
static energies and the harmonic step at one volume.

``run_volume_point(atoms, calculator, settings)`` is the unit of work a
resumable driver does per volume: relax (optional), static energy per member,
displaced supercells → forces (through the gate when given) → phonons.
Energies are returned per **primitive cell** of the phonopy object, matching
the normalisation of the thermal properties.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from ase import Atoms

from ..errors import ConfigError
from .harmonic import PhononResult, PhononSettings, make_phonopy, phonons_from_forces, \
    compute_forces, check_supercell_size, committee_cutoff
from ..units import check_positive

RELAX_MODES = ("none", "internal", "shape")


def scaled_structures(atoms: Atoms, linear_scales=None, volume_scales=None) -> list:
    """Copies of ``atoms`` with the cell scaled (atoms follow, fractional coordinates kept).

    ``linear_scales``: factors on every lattice vector (V ∝ s³);
    ``volume_scales``: factors on the volume.  Exactly one must be given.
    """
    if (linear_scales is None) == (volume_scales is None):
        raise ConfigError("give exactly one of linear_scales or volume_scales")
    scales = np.asarray(linear_scales if linear_scales is not None else volume_scales, float)
    for s in scales:
        check_positive("scale factor", s)
    if volume_scales is not None:
        scales = scales ** (1.0 / 3.0)
    out = []
    for s in scales:
        a = atoms.copy()
        a.calc = None
        a.set_cell(np.array(atoms.cell) * s, scale_atoms=True)
        out.append(a)
    return out


def relax_structure(atoms: Atoms, calculator, mode: str = "internal", fmax_eVA: float = 0.005,
                    steps: int = 500, pressure_GPa: float | None = None) -> Atoms:
    """A relaxed copy of ``atoms`` (``atoms`` and its calc are untouched).

    mode "none": as given; "internal": positions at fixed cell; "shape": positions
    and cell shape at fixed volume (``FrechetCellFilter(constant_volume=True)``).
    With ``pressure_GPa`` the full cell (volume included) is relaxed at that
    pressure (pressure screening).
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if mode not in RELAX_MODES:
        raise ConfigError(f"relax mode must be one of {RELAX_MODES}, got {mode!r}")
    a = atoms.copy()
    a.calc = None
    if mode == "none" and pressure_GPa is None:
        return a
    a.calc = calculator
    if pressure_GPa is not None:
        from ..units import gpa_to_ev_per_a3

        target = FrechetCellFilter(a, scalar_pressure=gpa_to_ev_per_a3(pressure_GPa))
    elif mode == "shape":
        target = FrechetCellFilter(a, constant_volume=True)
    else:
        target = a
    converged = BFGS(target, logfile=None).run(fmax=fmax_eVA, steps=steps)
    if not converged:
        import warnings

        warnings.warn(f"relaxation did not reach fmax={fmax_eVA} eV/Å in {steps} steps; "
                      "the phonons of this structure may show imaginary modes", UserWarning,
                      stacklevel=2)
    a.calc = None
    return a


def structures_at_pressures(atoms: Atoms, calculator, pressures_GPa, fmax_eVA: float = 0.005,
                            steps: int = 500) -> list:
    """Cells relaxed at each pressure (the volumes of a pressure screening)."""
    return [relax_structure(atoms, calculator, "shape", fmax_eVA, steps, pressure_GPa=p)
            for p in pressures_GPa]


def static_energies(atoms: Atoms, calculator) -> tuple:
    """(energy eV, energies_members eV (M,) or None) of ``atoms`` (committee mean + members)."""
    if hasattr(calculator, "evaluate_members"):
        from ..uncertainty import aggregate

        agg = aggregate(calculator.evaluate_members(atoms, ("energy", "forces")),
                        getattr(calculator, "calibration", None))
        return float(agg["energy"]), np.array(agg["energy_members"], dtype=float)
    a = atoms.copy()
    a.calc = calculator
    return float(a.get_potential_energy()), None


@dataclasses.dataclass(frozen=True)
class VolumePoint:
    """One volume of a QHA scan, per primitive cell.

    atoms: the (relaxed) structure used; energy_eV: static E per primitive cell (mean);
    energies_members_eV: (M,) eV per primitive cell or None; phonons: PhononResult;
    lattice_A: (3,) Å lengths of the input cell vectors; volume_A3: primitive volume.
    """

    atoms: Atoms
    energy_eV: float
    energies_members_eV: np.ndarray | None
    phonons: PhononResult
    lattice_A: np.ndarray
    volume_A3: float
    phonopy: object = dataclasses.field(default=None, compare=False, repr=False)


def per_primitive(ph, atoms: Atoms) -> float:
    """Factor that turns a per-``atoms``-cell quantity into per-primitive-cell."""
    return len(ph.primitive) / len(atoms)


def run_volume_point(atoms: Atoms, calculator, settings: PhononSettings, relax: str = "none",
                     gate=None, fmax_eVA: float = 0.005, steps: int = 500,
                     info=None) -> VolumePoint:
    """Relax (optional), static energies, displaced-supercell forces and phonons at one volume."""
    relaxed = relax_structure(atoms, calculator, relax, fmax_eVA, steps)
    ph = make_phonopy(relaxed, settings)
    check_supercell_size(ph, committee_cutoff(calculator))
    factor = per_primitive(ph, relaxed)
    e, em = static_energies(relaxed, calculator)
    forces = compute_forces(ph, calculator, gate=gate, info=info)
    result = phonons_from_forces(ph, forces, settings)
    return VolumePoint(atoms=relaxed, energy_eV=e * factor,
                       energies_members_eV=None if em is None else em * factor,
                       phonons=result, lattice_A=np.array(relaxed.cell.lengths()),
                       volume_A3=float(ph.primitive.volume), phonopy=ph)


def volume_point_from_forces(atoms: Atoms, settings: PhononSettings, energy_eV: float,
                             energies_members_eV, force_set, dataset=None) -> VolumePoint:
    """Rebuild a VolumePoint from stored energies and forces (no calculator calls)."""
    ph = make_phonopy(atoms, settings, generate=dataset is None)
    if dataset is not None:
        ph.dataset = dataset
    n = len(ph.supercells_with_displacements)
    if force_set.forces.shape[0] != n:
        raise ConfigError(f"stored forces hold {force_set.forces.shape[0]} supercells but the "
                          f"settings give {n}: the outputs belong to different phonon settings")
    result = phonons_from_forces(ph, force_set, settings)
    return VolumePoint(atoms=atoms, energy_eV=float(energy_eV),
                       energies_members_eV=None if energies_members_eV is None
                       else np.asarray(energies_members_eV, float),
                       phonons=result, lattice_A=np.array(atoms.cell.lengths()),
                       volume_A3=float(ph.primitive.volume), phonopy=ph)
