"""Uncertainties that travel with structures (extxyz ``info``/``arrays``).

``attach_uncertainties(atoms, results)`` copies the committee schema onto the
atoms under a prefix (default ``committee_``), so ``ase.io.write(...,
format="extxyz")`` keeps it and ``read_uncertainties`` restores it.  Scalars
go to ``info``; per-atom arrays to ``arrays``; per-member stacks are stored as
(N, M·k) arrays and reshaped back on reading.
"""
from __future__ import annotations

import numpy as np

SCALARS = ("energy", "energy_std", "energy_std_per_atom", "energy_std_per_molecule",
           "forces_std_max", "force_uncertainty_relative", "n_nonfinite", "n_molecules")
INFO_VECTORS = ("energy_members", "stress", "stress_std")
PER_ATOM = ("forces", "forces_std", "forces_std_atom", "energies", "energies_std")
PER_ATOM_MEMBERS = ("forces_members", "energies_members")


def attach_uncertainties(atoms, results: dict, prefix: str = "committee_", members: bool = True):
    """Store committee results on ``atoms`` (in place) and return it."""
    n = len(atoms)
    for k in SCALARS:
        if k in results:
            v = results[k]
            atoms.info[prefix + k] = int(v) if k.startswith("n_") else float(v)
    for k in INFO_VECTORS:
        if k in results and (members or not k.endswith("_members")):
            atoms.info[prefix + k] = np.asarray(results[k], dtype=float).copy()
    if members and "stress_members" in results:
        atoms.info[prefix + "stress_members"] = np.asarray(results["stress_members"], float).reshape(-1)
    for k in PER_ATOM:
        if k in results:
            atoms.arrays[prefix + k] = np.asarray(results[k], dtype=float).reshape(n, -1).squeeze()
    if members:
        for k in PER_ATOM_MEMBERS:
            if k in results:
                stack = np.asarray(results[k], dtype=float)  # (M, N[, 3])
                atoms.arrays[prefix + k] = np.moveaxis(stack, 0, 1).reshape(n, -1)
    return atoms


def read_uncertainties(atoms, prefix: str = "committee_") -> dict:
    """Inverse of :func:`attach_uncertainties`."""
    out = {}
    for k, v in atoms.info.items():
        if k.startswith(prefix):
            key = k[len(prefix):]
            out[key] = v if np.ndim(v) else (int(v) if key.startswith("n_") else float(v))
    for k, v in atoms.arrays.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = np.array(v, dtype=float)
    m = len(np.atleast_1d(out["energy_members"])) if "energy_members" in out else None
    n = len(atoms)
    if m:
        if "forces_members" in out:
            out["forces_members"] = np.moveaxis(out["forces_members"].reshape(n, m, 3), 1, 0)
        if "energies_members" in out:
            out["energies_members"] = out["energies_members"].reshape(n, m).T
        if "stress_members" in out:
            out["stress_members"] = np.asarray(out["stress_members"], float).reshape(m, 6)
        out["energy_members"] = np.atleast_1d(np.asarray(out["energy_members"], float))
    return out
