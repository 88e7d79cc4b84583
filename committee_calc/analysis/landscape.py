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

from ..errors import ConfigError, StructureReadError
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

    def baseline_per_unit(self) -> np.ndarray:
        if self.baseline_energy is None:
            raise ConfigError("the landscape has no baseline energies")
        return self.baseline_energy / self.n_units

    def densities(self) -> np.ndarray:
        """Density per structure [g/cm³] (nan for non-periodic cells)."""
        return np.array([density_gcm3(a) for a in self.structures])


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
        from ..molecules import count_molecules

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
# Building a landscape: relax candidate packings with a cheap baseline, then
# drop near-identical minima.
def relax_with_baseline(atoms, calculator, fmax=0.05, max_steps=200, cell=True,
                        optimizer="FIRE", energy_key="baseline_energy",
                        forces_key="baseline_forces"):
    """Relax a copy of ``atoms`` with ``calculator`` (the CSP baseline) and return it.

    Positions (and the cell, ``cell=True``, via ASE's FrechetCellFilter at zero
    pressure) are optimised until max |F| ≤ ``fmax`` [eV/Å] (and the
    filter's generalised cell forces likewise) or ``max_steps`` steps.  The
    returned copy has no calculator; it carries ``info[energy_key]`` [eV per
    cell] and ``arrays[forces_key]`` [eV/Å, (N, 3)] at the relaxed geometry,
    ``info["relax_steps"]``, ``info["relax_converged"]`` (bool) and
    ``info["relax_fmax"]`` [eV/Å] (largest atomic force at the end).
    The user's ``atoms`` is left untouched.
    """
    from ase import optimize

    if int(max_steps) < 1 or not float(fmax) > 0:
        raise ConfigError(f"relaxation needs fmax > 0 and max_steps >= 1, got {fmax!r}, {max_steps!r}")
    opt_cls = getattr(optimize, optimizer, None)
    if opt_cls is None:
        raise ConfigError(f"unknown ASE optimizer {optimizer!r}; use e.g. FIRE, BFGS, LBFGS")
    a = atoms.copy()
    a.calc = calculator
    target = a
    if cell:
        if a.cell.rank < 3 or not all(a.pbc):
            raise ConfigError("cell relaxation needs a periodic structure with a full 3-D cell; pass cell=False")
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(a)
    opt = opt_cls(target, logfile=None)
    converged = bool(opt.run(fmax=float(fmax), steps=int(max_steps)))
    energy = float(a.get_potential_energy())
    forces = np.array(a.get_forces(), float)
    out = a.copy()
    out.calc = None
    out.info[energy_key] = energy
    out.arrays[forces_key] = forces
    out.info["relax_steps"] = int(opt.nsteps)
    out.info["relax_converged"] = converged
    out.info["relax_fmax"] = float(np.sqrt((forces ** 2).sum(1)).max()) if len(out) else 0.0
    return out


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
