"""Uncertainties that travel with structures (extxyz ``info``/``arrays``).

``attach_uncertainties(atoms, results)`` copies the committee schema onto the
atoms under a prefix (default ``committee_``), so ``ase.io.write(...,
format="extxyz")`` keeps it and ``read_uncertainties`` restores it.  Scalars
go to ``info``; per-atom arrays to ``arrays``; per-member stacks are stored as
(N, M·k) arrays and reshaped back on reading.
"""
from __future__ import annotations

import numpy as np

from . import keys as K

SCALARS = (K.ENERGY, K.ENERGY_STD, K.ENERGY_STD_PER_ATOM, K.ENERGY_STD_PER_MOLECULE,
           K.FORCES_STD_MAX, K.FORCE_UNCERTAINTY_RELATIVE, K.N_NONFINITE, K.N_MOLECULES)
INFO_VECTORS = (K.ENERGY_MEMBERS, K.STRESS, K.STRESS_STD)
PER_ATOM = (K.FORCES, K.FORCES_STD, K.FORCES_STD_ATOM, K.ENERGIES, K.ENERGIES_STD)
PER_ATOM_MEMBERS = (K.FORCES_MEMBERS, K.ENERGIES_MEMBERS)


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
    if members and K.STRESS_MEMBERS in results:
        atoms.info[prefix + K.STRESS_MEMBERS] = np.asarray(results[K.STRESS_MEMBERS], float).reshape(-1)
    for k in PER_ATOM:
        if k in results:
            a = np.asarray(results[k], dtype=float).reshape(n, -1)
            atoms.arrays[prefix + k] = a[:, 0].copy() if a.shape[1] == 1 else a  # (N,) or (N, 3)
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
            key = k[len(prefix):]
            v = np.array(v, dtype=float)
            if key in (K.FORCES, K.FORCES_STD) or key == K.FORCES_MEMBERS:
                v = v.reshape(len(atoms), -1)  # a one-atom frame reads back as (3,)
            out[key] = v
    m = len(np.atleast_1d(out[K.ENERGY_MEMBERS])) if K.ENERGY_MEMBERS in out else None
    n = len(atoms)
    if m:
        if K.FORCES_MEMBERS in out:
            out[K.FORCES_MEMBERS] = np.moveaxis(out[K.FORCES_MEMBERS].reshape(n, m, 3), 1, 0)
        if K.ENERGIES_MEMBERS in out:
            out[K.ENERGIES_MEMBERS] = out[K.ENERGIES_MEMBERS].reshape(n, m).T
        if K.STRESS_MEMBERS in out:
            out[K.STRESS_MEMBERS] = np.asarray(out[K.STRESS_MEMBERS], float).reshape(m, 6)
        out[K.ENERGY_MEMBERS] = np.atleast_1d(np.asarray(out[K.ENERGY_MEMBERS], float))
    return out
