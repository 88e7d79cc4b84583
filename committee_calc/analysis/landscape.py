"""A crystal-structure landscape: structures with baseline energies/forces.

The file is anything ASE reads (extxyz, ASE db, a folder of CIFs); baseline
values (e.g. force-field energies of the CSP search) sit in
``atoms.info[baseline_energy_key]`` [eV, per cell] and
``atoms.arrays[baseline_forces_key]`` [eV/Å] — or, when the keys are
``"energy"``/``"forces"``, in the calculator results ASE attaches on read.

Energies are compared *per unit*: per molecule (the CSP convention, the
count given or found from connectivity) or per atom.

Building one: candidates are relaxed with the baseline by
:func:`committee_calc.active.baseline.relax_with_baseline` (relaxation lives
above this layer) and near-identical minima are dropped with
:func:`deduplicate_minima`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import keys as K
from ..errors import ConfigError, StructureReadError
from ..molecules import count_molecules
from ..structures import density_gcm3, read_structures


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

    def baseline(self, i: int) -> dict | None:
        """Baseline values of structure ``i`` as results: energy [eV] and forces (N_i, 3) [eV/Å]
        (None without baseline energies)."""
        if self.baseline_energy is None:
            return None
        out = {K.ENERGY: float(self.baseline_energy[i])}
        if self.baseline_forces is not None:
            out[K.FORCES] = self.baseline_forces[i]
        return out

    def baseline_per_unit(self) -> np.ndarray:
        if self.baseline_energy is None:
            raise ConfigError("the landscape has no baseline energies")
        return self.baseline_energy / self.n_units

    def densities(self) -> np.ndarray:
        """Density per structure [g/cm³] (nan for non-periodic cells)."""
        return np.array([density_gcm3(a) for a in self.structures])


def _get(atoms, key, kind):
    """Baseline value ``key`` of ``atoms`` (info/arrays, or calculator results for the
    plain ``energy``/``forces`` keys); None when absent."""
    results = atoms.calc.results if atoms.calc is not None else {}
    if kind == K.ENERGY:
        if key in atoms.info:
            return float(atoms.info[key])
        if key == K.ENERGY and K.ENERGY in results:
            return float(results[K.ENERGY])
        return None
    if key in atoms.arrays:
        return np.asarray(atoms.arrays[key], float).reshape(len(atoms), 3)
    if key == K.FORCES and K.FORCES in results:
        return np.asarray(results[K.FORCES], float).reshape(len(atoms), 3)
    return None


def make_landscape(structures, baseline_energy_key=K.BASELINE_ENERGY,
                   baseline_forces_key=K.BASELINE_FORCES, molecules="auto", name_key="name"):
    """Build a :class:`Landscape` from Atoms (see module doc for keys).

    ``molecules``: ``"auto"`` (per-structure info ``n_molecules`` if present,
    else connectivity), an int (the same count for all), or None (per atom).
    Baseline energies/forces are kept only if every structure has them.
    """
    structures = list(structures)
    if not structures:
        raise StructureReadError("the landscape holds no structures")
    E = [_get(a, baseline_energy_key, K.ENERGY) for a in structures]
    F = [_get(a, baseline_forces_key, K.FORCES) for a in structures]
    energy = np.array(E, float) if all(e is not None for e in E) else None
    if energy is not None and not np.all(np.isfinite(energy)):
        bad = np.flatnonzero(~np.isfinite(energy))[:5].tolist()
        raise ConfigError(f"baseline energies of structures {bad} are not finite; fix or remove them")
    forces = F if all(f is not None for f in F) else None
    if molecules is None:
        n_units, unit = np.array([len(a) for a in structures], float), "atom"
    elif molecules == "auto":
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


# ---------------------------------------------------------------------------
# Building a landscape: after the baseline relaxation, drop near-identical minima.
def deduplicate_minima(energy_per_unit, X, densities=None, energy_tol_eV=1e-3,
                       density_rel_tol=0.01, descriptor_tol=1e-2):
    """Indices of unique minima, lowest energy first, and the duplicate map.

    Structures are visited in order of increasing ``energy_per_unit`` [eV per
    molecule or atom] (n,); one is a duplicate of an already kept structure
    when all of: |ΔE| ≤ ``energy_tol_eV``; relative density difference ≤
    ``density_rel_tol`` (skipped when ``densities`` [g/cm³] (n,) is None);
    and the relative descriptor distance ‖x_i − x_k‖ / max(‖x_i‖, ‖x_k‖) ≤
    ``descriptor_tol`` for descriptor rows ``X`` (n, d) — use intensive
    (atom-averaged) descriptors such as SOAP so that a supercell of a minimum
    is recognised.  Returns ``(kept, duplicate_of)``: kept indices (ints,
    ascending energy) and a dict {duplicate index: kept index}.
    """
    e = np.asarray(energy_per_unit, float).reshape(-1)
    X = np.asarray(X, float)
    if X.ndim != 2 or X.shape[0] != e.size:
        raise ConfigError(f"need one descriptor row per structure: {e.size} energies, descriptor shape {X.shape}")
    if not np.all(np.isfinite(e)):
        raise ConfigError("energies for deduplication must be finite; drop failed relaxations first")
    rho = None if densities is None else np.asarray(densities, float).reshape(-1)
    norms = np.linalg.norm(X, axis=1)
    kept, dup = [], {}
    for i in np.argsort(e, kind="stable"):
        i = int(i)
        for k in kept:
            if abs(e[i] - e[k]) > energy_tol_eV:
                continue
            if rho is not None and abs(rho[i] - rho[k]) > density_rel_tol * max(rho[i], rho[k]):
                continue
            scale = max(norms[i], norms[k], 1e-300)
            if np.linalg.norm(X[i] - X[k]) / scale <= descriptor_tol:
                dup[i] = k
                break
        else:
            kept.append(i)
    return kept, dup
