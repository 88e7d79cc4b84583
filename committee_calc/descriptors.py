"""Fixed-length structure descriptors for selection and cheap surrogates.

:func:`structure_descriptors` returns one row per structure, chosen in order:

1. **committee features** — when every member of the committee exposes a
   ``descriptors(atoms) -> (N, d)`` (per-atom) or ``structure_descriptors``
   method (e.g. a backend's invariant node features), the structure row is
   the per-atom mean of the first member's features;
2. **SOAP** (dscribe, ``kind="soap"``; default when dscribe imports):
   periodic, averaged over atoms (``average="inner"``), species = the union
   over all structures given, r_cut 5 Å, n_max 4, l_max 3 unless overridden;
3. **pair fingerprint** (``kind="pair"``; fallback without dscribe): for
   each unordered element pair (a, b) a smooth radial distribution
   ``g_ab(r_k) = Σ_{i∈a, j∈b, r_ij<r_cut} exp(-(r_ij - r_k)²/(2 w²)) f_c(r_ij) / N``
   on ``n_bins`` centres ``r_k`` in (0, r_cut], with a cosine cutoff
   ``f_c`` and periodic images via ASE's neighbour list.  Smooth, invariant
   to rotation/translation/permutation, and extensive only through N.

Rows have no unit (SOAP power spectra / counts per atom); use
:func:`standardise` before distance-based selection.
"""
from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
from ase.neighborlist import neighbor_list

from .errors import ConfigError
from .structures import is_bulk

SOAP_DEFAULTS = {"r_cut": 5.0, "n_max": 4, "l_max": 3, "sigma": 0.5}


def _committee_features(structures, committee):
    members = getattr(committee, "members", None) or []
    if not members:
        return None
    m = members[0]
    for name in ("structure_descriptors", "descriptors"):
        fn = getattr(m, name, None)
        if callable(fn) and all(callable(getattr(x, name, None)) for x in members):
            rows = []
            for atoms in structures:
                a = atoms.copy()
                a.calc = None
                d = np.asarray(fn(a), dtype=float)
                rows.append(d.reshape(-1) if name == "structure_descriptors" else d.reshape(len(a), -1).mean(0))
            return np.vstack(rows)
    return None


def soap_available() -> bool:
    try:
        import dscribe  # noqa: F401
    except Exception:
        return False
    return True


def soap_descriptors(structures, species=None, **options) -> np.ndarray:
    """Atom-averaged periodic SOAP vectors (n, d) via dscribe."""
    opts = dict(SOAP_DEFAULTS, **options)
    species = sorted(species or {s for a in structures for s in a.get_chemical_symbols()})
    rows = []
    for atoms in structures:
        periodic = is_bulk(atoms)
        soap = _soap(tuple(species), periodic, tuple(sorted(opts.items())))
        rows.append(np.asarray(soap.create(atoms), dtype=float).reshape(-1))
    return np.vstack(rows)


_SOAP_CACHE: dict = {}


def _soap(species, periodic, opts):
    key = (species, periodic, opts)
    if key not in _SOAP_CACHE:
        from dscribe.descriptors import SOAP

        o = dict(opts)
        _SOAP_CACHE[key] = SOAP(species=list(species), periodic=periodic, r_cut=o["r_cut"],
                                n_max=int(o["n_max"]), l_max=int(o["l_max"]), sigma=o["sigma"],
                                average="inner")
    return _SOAP_CACHE[key]


def pair_fingerprint(structures, species=None, r_cut=6.0, n_bins=24, width=None) -> np.ndarray:
    """Smoothed element-pair radial distribution fingerprint (n, n_pairs*n_bins)."""
    if r_cut <= 0 or n_bins < 1:
        raise ConfigError(f"pair fingerprint needs r_cut > 0 and n_bins >= 1, got {r_cut}, {n_bins}")
    species = sorted(species or {s for a in structures for s in a.get_chemical_symbols()})
    pairs = list(combinations_with_replacement(species, 2))
    pos = {p: k for k, p in enumerate(pairs)}
    centres = np.linspace(r_cut / n_bins, r_cut, n_bins)
    w = float(width) if width else 1.5 * r_cut / n_bins
    out = np.zeros((len(structures), len(pairs) * n_bins))
    for s, atoms in enumerate(structures):
        sym = np.array(atoms.get_chemical_symbols())
        i, j, d = neighbor_list("ijd", atoms, r_cut)
        keep = i < j if not np.any(atoms.pbc) else np.ones_like(i, bool)
        i, j, d = i[keep], j[keep], d[keep]
        fc = 0.5 * (np.cos(np.pi * d / r_cut) + 1.0)
        g = np.exp(-((d[:, None] - centres[None, :]) ** 2) / (2 * w * w)) * fc[:, None]
        for (a, b), k in pos.items():
            m = ((sym[i] == a) & (sym[j] == b)) | ((sym[i] == b) & (sym[j] == a))
            out[s, k * n_bins:(k + 1) * n_bins] = g[m].sum(0) / len(atoms)
    return out


def structure_descriptors(list_of_atoms, committee=None, kind="auto", species=None,
                          **options) -> np.ndarray:
    """One descriptor row per structure: (n_structures, d) float array.

    ``kind``: ``"auto"`` (committee features, else SOAP, else pair
    fingerprint), ``"committee"``, ``"soap"`` or ``"pair"``.  ``species``
    fixes the element list (pass it when descriptors of different calls
    must be comparable).
    """
    structures = list(list_of_atoms)
    if not structures:
        raise ConfigError("no structures given to compute descriptors for")
    if kind not in ("auto", "committee", "soap", "pair"):
        raise ConfigError(f"unknown descriptor kind {kind!r}; use auto, committee, soap or pair")
    if kind in ("auto", "committee") and committee is not None:
        X = _committee_features(structures, committee)
        if X is not None:
            return X
    if kind == "committee":
        raise ConfigError("the committee's members expose no descriptors; use kind='soap' or 'pair'")
    if kind == "soap" or (kind == "auto" and soap_available()):
        if not soap_available():
            raise ConfigError("kind='soap' needs dscribe (pip install dscribe); or use kind='pair'")
        return soap_descriptors(structures, species=species, **options)
    return pair_fingerprint(structures, species=species, **options)


def standardise(X) -> np.ndarray:
    """Columns shifted to zero mean and scaled to unit std, shape (n, d).

    A column whose spread is below 1e-3 of the descriptor's largest magnitude is noise (e.g.
    copies of one relaxed minimum): it is divided by that floor, not blown up to unit variance,
    so identical structures stay identical for clustering.  Constant columns -> 0.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ConfigError(f"descriptors must be 2-D, got shape {X.shape}")
    mean = X.mean(0)
    std = X.std(0)
    floor = 1e-3 * (float(np.abs(X).max()) if X.size else 0.0)
    std = np.maximum(std, floor)
    std[std == 0] = 1.0
    return (X - mean) / std
