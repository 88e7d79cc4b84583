"""A crystal-structure landscape: structures with baseline energies/forces.

The file is anything ASE reads (extxyz, ASE db, a folder of CIFs); baseline
values (e.g. force-field energies of the CSP search) sit in
``atoms.info[baseline_energy_key]`` [eV, per cell] and
``atoms.arrays[baseline_forces_key]`` [eV/Å] — or, when the keys are
``"energy"``/``"forces"``, in the calculator results ASE attaches on read.

Energies are compared *per unit*: per molecule (the CSP convention, the
count given or found from connectivity) or per atom.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, StructureReadError

AMU_PER_A3_TO_GCM3 = 1.66053906660


@dataclass(frozen=True)
class Landscape:
    """structures (n Atoms); baseline_energy (n,) eV or None; baseline_forces
    list of (N_i, 3) eV/Å or None; n_units (n,) molecules (or atoms) per
    structure; unit ``"molecule"`` or ``"atom"``; names (n,) str."""

    structures: list
    baseline_energy: np.ndarray | None
    baseline_forces: list | None
    n_units: np.ndarray
    unit: str
    names: list

    def __len__(self):
        return len(self.structures)

    def baseline_per_unit(self) -> np.ndarray:
        if self.baseline_energy is None:
            raise ConfigError("the landscape has no baseline energies")
        return self.baseline_energy / self.n_units

    def densities(self) -> np.ndarray:
        """Density per structure [g/cm³] (nan for non-periodic cells)."""
        return np.array([density_gcm3(a) for a in self.structures])


def density_gcm3(atoms) -> float:
    if atoms.cell.rank < 3:
        return float("nan")
    return float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_TO_GCM3)


def _get(atoms, key, kind):
    if kind == "energy":
        if key in atoms.info:
            return float(atoms.info[key])
        if key == "energy" and atoms.calc is not None and "energy" in atoms.calc.results:
            return float(atoms.calc.results["energy"])
        return None
    if key in atoms.arrays:
        return np.asarray(atoms.arrays[key], float).reshape(len(atoms), 3)
    if key == "forces" and atoms.calc is not None and "forces" in atoms.calc.results:
        return np.asarray(atoms.calc.results["forces"], float).reshape(len(atoms), 3)
    return None


def make_landscape(structures, baseline_energy_key="baseline_energy",
                   baseline_forces_key="baseline_forces", molecules="auto", name_key="name"):
    """Build a :class:`Landscape` from Atoms (see module doc for keys).

    ``molecules``: ``"auto"`` (per-structure info ``n_molecules`` if present,
    else connectivity), an int (the same count for all), or None (per atom).
    Baseline energies/forces are kept only if every structure has them.
    """
    structures = list(structures)
    if not structures:
        raise StructureReadError("the landscape holds no structures")
    E = [_get(a, baseline_energy_key, "energy") for a in structures]
    F = [_get(a, baseline_forces_key, "forces") for a in structures]
    energy = np.array(E, float) if all(e is not None for e in E) else None
    if energy is not None and not np.all(np.isfinite(energy)):
        bad = np.flatnonzero(~np.isfinite(energy))[:5].tolist()
        raise ConfigError(f"baseline energies of structures {bad} are not finite; fix or remove them")
    forces = F if all(f is not None for f in F) else None
    if molecules is None:
        n_units, unit = np.array([len(a) for a in structures], float), "atom"
    elif molecules == "auto":
        from .molecules import count_molecules

        n_units = np.array([int(a.info["n_molecules"]) if "n_molecules" in a.info else count_molecules(a)
                            for a in structures], float)
        unit = "molecule"
    else:
        if int(molecules) < 1:
            raise ConfigError(f"molecules must be >= 1, 'auto' or None, got {molecules!r}")
        n_units, unit = np.full(len(structures), float(int(molecules))), "molecule"
    names = [str(a.info.get(name_key, i)) for i, a in enumerate(structures)]
    clean = []
    for a in structures:
        c = a.copy()
        c.calc = None
        clean.append(c)
    return Landscape(clean, energy, forces, n_units, unit, names)


def load_landscape(path, **kwargs) -> Landscape:
    """Read a landscape file (any ASE format, or a folder) into a :class:`Landscape`."""
    from .cli import read_structures

    return make_landscape(read_structures(path), **kwargs)


def candidate_pool(landscape: Landscape, energy_cutoff_eV=None) -> np.ndarray:
    """Indices of structures within ``energy_cutoff_eV`` (per unit) of the baseline minimum."""
    n = len(landscape)
    if energy_cutoff_eV is None:
        return np.arange(n)
    cut = float(energy_cutoff_eV)
    if not cut >= 0:
        raise ConfigError(f"energy cutoff must be >= 0 (per {landscape.unit}), got {energy_cutoff_eV!r}")
    if landscape.baseline_energy is None:
        raise ConfigError("an energy cutoff needs baseline energies in the landscape; add them "
                          "(info key, see --baseline-energy-key) or drop the cutoff")
    e = landscape.baseline_per_unit()
    pool = np.flatnonzero(e <= e.min() + cut)
    return pool
