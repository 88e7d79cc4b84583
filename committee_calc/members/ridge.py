"""Ridge pair-basis member: a linear pair potential evaluated in-process.

The model is ``E = Σ_s c_s n_s + ½ Σ_{i≠j} Σ_k w_{ab,k} g_k(r_ij) f_c(r_ij)``
(one-body energy per element, Gaussian radial basis ``g_k`` per element pair,
cosine cutoff ``f_c``), so energy and forces are linear in the weights:
``E = φ(R)·w`` and ``F = -∂φ/∂R · w``.

* :class:`PairBasis` — the features φ (d,) and their derivatives (N, 3, d);
* :func:`pair_predict` — energies (M,) and forces (M, N, 3) of M weight rows;
* :class:`RidgeMember` — member k of a fitted model (anything with ``basis``
  and ``weights`` (M, d), e.g. :class:`committee_calc.train.ridge.PairRidgeCommittee`,
  which fits the weights and builds the committee).

Units: energies eV, forces eV/Å, distances Å.
"""
from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
from ase.neighborlist import neighbor_list

from .. import keys as K
from ..errors import ConfigError, UnknownSpeciesError
from ..structures import structure_hash
from .base import Member

#: (basis settings, structure hash) -> (phi, dphi or None); features are pure functions of both
_FEATURE_CACHE: dict = {}


class PairBasis:
    """Features φ (d,) and their position derivatives ∂φ/∂R (N, 3, d).

    species: element symbols; r_cut, r_min [Å]: range of the ``n_basis``
    Gaussian centres; width [Å]: their width (default the centre spacing).
    Raises ConfigError for r_cut <= r_min or n_basis < 1.
    """

    def __init__(self, species, r_cut=5.0, n_basis=12, r_min=0.7, width=None):
        if r_cut <= r_min or n_basis < 1:
            raise ConfigError(f"pair basis needs r_cut > r_min and n_basis >= 1 (got {r_cut}, {r_min}, {n_basis})")
        self.species = tuple(sorted(species))
        self.r_cut, self.n_basis = float(r_cut), int(n_basis)
        self.centres = np.linspace(r_min, r_cut, n_basis)
        self.width = float(width) if width else (r_cut - r_min) / n_basis
        self.pairs = list(combinations_with_replacement(self.species, 2))
        self.n_features = len(self.species) + len(self.pairs) * n_basis
        self._key = (self.species, self.r_cut, self.n_basis, self.width, float(r_min))

    def features(self, atoms, derivatives=False):
        """φ (d,), or (φ, ∂φ/∂R (N, 3, d)) with ``derivatives``; UnknownSpeciesError
        for elements outside ``species``."""
        key = (self._key, structure_hash(atoms))
        hit = _FEATURE_CACHE.get(key)
        if hit is None or (derivatives and hit[1] is None):
            hit = self._features(atoms, derivatives)
            if len(_FEATURE_CACHE) > 20000:
                _FEATURE_CACHE.clear()
            _FEATURE_CACHE[key] = hit
        return (hit[0], hit[1]) if derivatives else hit[0]

    def _features(self, atoms, derivatives):
        sym = atoms.get_chemical_symbols()
        unknown = set(sym) - set(self.species)
        if unknown:
            raise UnknownSpeciesError(f"ridge committee was trained on {self.species}, structure has {sorted(unknown)}")
        ns = len(self.species)
        sidx = np.array([self.species.index(s) for s in sym])
        phi = np.zeros(self.n_features)
        np.add.at(phi, sidx, 1.0)
        i, j, d, D = neighbor_list("ijdD", atoms, self.r_cut)
        a, b = np.minimum(sidx[i], sidx[j]), np.maximum(sidx[i], sidx[j])
        pair_id = np.array([self.pairs.index((self.species[x], self.species[y])) for x, y in zip(a, b)], int) \
            if len(i) else np.zeros(0, int)
        x = d[:, None] - self.centres[None, :]
        g = np.exp(-x * x / (2 * self.width ** 2))
        fc = 0.5 * (np.cos(np.pi * d / self.r_cut) + 1.0)
        cols = ns + pair_id[:, None] * self.n_basis + np.arange(self.n_basis)[None, :]
        np.add.at(phi, cols.ravel(), (0.5 * g * fc[:, None]).ravel())
        if not derivatives:
            return phi, None
        dfc = -0.5 * np.pi / self.r_cut * np.sin(np.pi * d / self.r_cut)
        df = 0.5 * (-x / self.width ** 2 * g * fc[:, None] + g * dfc[:, None])  # (P, K)
        u = D / d[:, None]                                                         # (P, 3)
        dphi = np.zeros((len(atoms), 3, self.n_features))
        contrib = df[:, None, :] * u[:, :, None]                                   # (P, 3, K)
        for c in range(3):
            flat = np.zeros((len(atoms), self.n_features))
            np.add.at(flat, (j[:, None], cols), contrib[:, c, :])
            np.add.at(flat, (i[:, None], cols), -contrib[:, c, :])
            dphi[:, c, :] = flat
        return phi, dphi


def pair_predict(basis: PairBasis, W, atoms, forces=True) -> list:
    """Predictions of the weight rows ``W`` (M, d) on ``atoms``: one dict per row with
    ``energy`` [eV] and (with ``forces``) ``forces`` (N, 3) [eV/Å]."""
    W = np.atleast_2d(W)
    if not forces:
        return [{K.ENERGY: float(e)} for e in W @ basis.features(atoms)]
    phi, dphi = basis.features(atoms, derivatives=True)
    e, F = W @ phi, -np.einsum("nck,mk->mnc", dphi, W)
    return [{K.ENERGY: float(e[m]), K.FORCES: F[m]} for m in range(len(W))]


class RidgeMember(Member):
    """Member k of a fitted pair-ridge model (``model.basis``, ``model.weights`` (M, d)):
    energy and forces, no stress.  The member reads the model's current weights."""

    backend = "ridge"
    implemented_properties = (K.ENERGY, K.FORCES)

    def __init__(self, model, k: int):
        super().__init__(name=f"ridge{k}")
        self.model, self.k = model, int(k)
        self.species = frozenset(model.basis.species)
        self.cutoff = model.basis.r_cut

    def predict(self, atoms, properties):
        return type(self).predict_group([self], atoms, properties)[0]

    def group_key(self):
        return ("ridge", id(self.model))

    @classmethod
    def predict_group(cls, members, atoms, properties):
        """One feature evaluation for all members of the same model."""
        model = members[0].model
        if model.weights is None:
            raise ConfigError("the ridge committee is not fitted yet; call fit() first")
        W = model.weights[[m.k for m in members]]
        return pair_predict(model.basis, W, atoms, forces=K.FORCES in properties)
