"""Cluster a relaxed pool into distinct minima and rank them (Hessmann et al.).

Descriptors come from :func:`committee_calc.descriptors.structure_descriptors`
(committee-provided per-atom features mean-pooled over atoms where the backend
exposes them, else SOAP if dscribe is installed, else the documented smooth
pair fingerprint), are standardised (zero mean, unit variance per column) and
clustered with scikit-learn's DBSCAN.  ``min_samples=1`` makes every
structure belong to a cluster (no noise points): two structures share a
cluster when a chain of neighbours closer than ``eps`` links them.

The ranked table lists one representative per cluster, the lowest-energy
member, sorted by energy per atom.
"""
from __future__ import annotations

import math

import numpy as np

from ..descriptors import standardise, structure_descriptors
from ..errors import BackendUnavailableError, ConfigError
from ..units import check_positive

CLUSTER_COLUMNS = ("rank", "cluster", "n_members", "id", "energy_per_atom_eV",
                   "relative_energy_meV_atom", "energy_std_per_atom_meV", "density_gcm3",
                   "status", "members")


def cluster_structures(structures, committee=None, eps=0.5, min_samples=1,
                       descriptor="auto", energy_scale_eV=None, energies=None) -> np.ndarray:
    """DBSCAN cluster labels (n,) for relaxed structures.

    eps: neighbourhood radius in standardised descriptor space (unit: column
        standard deviations, divided by sqrt(d) so it does not grow with d).
    energy_scale_eV: if given, the energy per atom divided by this scale is
        appended as one more column, so structures with equal descriptors but
        energies further apart than ~eps·scale are kept apart.
    """
    try:
        from sklearn.cluster import DBSCAN
    except ImportError as exc:  # pragma: no cover - sklearn is in the analysis extra
        raise BackendUnavailableError("clustering needs scikit-learn (pip install scikit-learn)") from exc
    eps = check_positive("eps", eps)
    structures = list(structures)
    if not structures:
        return np.zeros(0, dtype=int)
    if len(structures) == 1:
        return np.zeros(1, dtype=int)
    X = np.asarray(structure_descriptors(structures, committee=committee, kind=descriptor), float)
    Xs = standardise(X) / math.sqrt(X.shape[1])
    Xs = np.nan_to_num(Xs)
    if energy_scale_eV is not None:
        if energies is None:
            raise ConfigError("energy_scale_eV needs the energies per atom")
        e = np.asarray(energies, float)
        Xs = np.hstack([Xs, ((e - e.min()) / check_positive("energy_scale_eV", energy_scale_eV))[:, None]])
    return DBSCAN(eps=eps, min_samples=int(min_samples)).fit_predict(Xs)


def ranked_table(rows, labels, top=None) -> list:
    """One row per cluster (its lowest-energy member), sorted by energy per atom.

    rows: summary dicts of the clustered structures (same order as ``labels``)
        with ``id``, ``energy_per_atom_eV``, ``energy_std_eV``, ``natoms``,
        ``density_gcm3``, ``status``.
    """
    rows = list(rows)
    labels = np.asarray(labels)
    e = np.array([float(r["energy_per_atom_eV"]) for r in rows])
    table = []
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        best = idx[np.argmin(e[idx])]
        r = rows[best]
        std = float(r.get("energy_std_eV") or "nan") / int(r["natoms"])
        table.append({"cluster": int(lab), "n_members": len(idx), "id": r["id"],
                      "energy_per_atom_eV": e[best], "energy_std_per_atom_meV": 1e3 * std,
                      "density_gcm3": float(r.get("density_gcm3") or "nan"), "status": r["status"],
                      "members": " ".join(rows[i]["id"] for i in idx)})
    table.sort(key=lambda t: t["energy_per_atom_eV"])
    e0 = table[0]["energy_per_atom_eV"] if table else 0.0
    for k, t in enumerate(table, start=1):
        t["rank"] = k
        t["relative_energy_meV_atom"] = 1e3 * (t["energy_per_atom_eV"] - e0)
    return table[:top] if top else table
