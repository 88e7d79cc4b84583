"""Ridge-regression resampling committee: a cheap, in-process trainable committee.

Two uses:

* :class:`PairRidgeCommittee` — a linear *pair-basis* potential
  ``E = Σ_s c_s n_s + ½ Σ_{i≠j} Σ_k w_{ab,k} g_k(r_ij) f_c(r_ij)``
  (one-body energy per element, Gaussian radial basis ``g_k`` per element
  pair, cosine cutoff), so it has analytic forces and can be trained on
  energies, forces, or Δ-values of both.  M members are fitted by ridge
  regression on random subsamples of the training structures (resampling
  committee, Musil et al. JCTC 2019) and the spread is calibrated with the
  out-of-sample α.  :meth:`as_committee` wraps it as a
  :class:`~committee_calc.committee.CommitteeCalculator` of
  :class:`RidgeMember` s.
* :func:`ridge_rs_fit_predict` — the same resampling committee on fixed
  descriptors (e.g. SOAP) for one target per structure; the surrogate of the
  expected-improvement / Kriging-believer strategy.

Units: energies eV, forces eV/Å; α is dimensionless.
"""
from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
from ase.neighborlist import neighbor_list

from ..errors import ConfigError, UnknownSpeciesError
from .base import Member


#: (basis settings, structure hash) -> (phi, dphi or None); features are pure functions of both
_FEATURE_CACHE: dict = {}


class PairBasis:
    """Features φ (d,) and their position derivatives ∂φ/∂R (N, 3, d)."""

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
        from ..structures import structure_hash

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


def _ridge(A, b, lam):
    AtA = A.T @ A
    scale = np.trace(AtA) / max(AtA.shape[0], 1)
    return np.linalg.solve(AtA + lam * max(scale, 1e-12) * np.eye(AtA.shape[0]), A.T @ b)


def _subsets(n, n_members, fraction, rng):
    k = max(1, min(n, int(round(fraction * n))))
    return [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(n_members)]


def _oob(Y, member_preds, subsets):
    """Out-of-bag squared residuals and subcommittee variances (structures with >= 2 OOB members)."""
    n, M = len(Y), len(subsets)
    seen = np.zeros((M, n), bool)
    for m, s in enumerate(subsets):
        seen[m, s] = True
    r2, v = [], []
    for i in range(n):
        oob = ~seen[:, i]
        if oob.sum() >= 2:
            p = member_preds[oob, i]
            r2.append((Y[i] - p.mean()) ** 2)
            v.append(p.var(ddof=1))
    return np.array(r2), np.array(v)


def _calibrate(Y, member_preds, subsets):
    """α from out-of-sample residuals: α² = Σ r² / Σ σ², OOB subcommittees (≥ 2 members)."""
    r2, v = _oob(Y, member_preds, subsets)
    if len(r2) < 3 or np.sum(v) <= 0:
        return 1.0
    return float(np.clip(np.sqrt(np.sum(r2) / np.sum(v)), 1e-2, 1e3))


def _stable_subsets(n, n_members, fraction, seed):
    """Member subsets in which structure i's membership depends only on (seed, i).

    Structure i joins member m when ``u[m, i] < fraction`` with ``u[:, i]``
    drawn from a generator seeded by ``(seed, i)``; appending structures (new
    labels) never reshuffles the memberships of the earlier ones, so a retrain
    changes the committee only through the new data.  A member left with no
    structure takes the one with its smallest ``u``.
    """
    base = 0 if seed is None else int(seed)
    U = np.array([np.random.default_rng([base, i]).random(n_members) for i in range(n)]).T  # (M, n)
    out = []
    for m in range(n_members):
        sub = np.flatnonzero(U[m] < fraction)
        out.append(sub if len(sub) else np.array([int(np.argmin(U[m]))]))
    return out


def _calibrate_with_bias(Y, member_preds, subsets):
    """(α, σ_b): maximum likelihood of OOB residuals r_i ~ N(0, α² σ_i² + σ_b²).

    A misspecified model (a pair potential fitted to a many-body reference)
    has an error floor σ_b that resampling cannot see; the one-parameter
    estimate α² = Σr²/Σσ² then grows with the training set as the floor is
    divided by a shrinking spread, inflating σ far from the data.  Here α
    scales the spread only and the floor is returned separately [units of Y].
    r_i is the out-of-bag residual; σ_i² the variance of all M members (the
    2–3 OOB members give too noisy a variance: it biases α low, σ_b high).
    """
    from scipy.optimize import minimize

    n, M = len(Y), len(subsets)
    seen = np.zeros((M, n), bool)
    for m, s in enumerate(subsets):
        seen[m, s] = True
    ok = (~seen).sum(0) >= 2
    if ok.sum() < 3:
        return 1.0, 0.0
    r2 = np.array([(Y[i] - member_preds[~seen[:, i], i].mean()) ** 2 for i in np.flatnonzero(ok)])
    v = np.maximum(member_preds[:, ok].var(0, ddof=1), 1e-30)
    if not np.any(v > 1e-30):
        return 1.0, 0.0
    a0 = np.sum(r2) / np.sum(v)

    def nll(x):
        t = np.exp(x[0]) * v + np.exp(x[1])
        return float(np.sum(np.log(t) + r2 / t))

    best = min((minimize(nll, [np.log(a0 * f), np.log(np.mean(r2) * g + 1e-30)], method="Nelder-Mead",
                         options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
                for f, g in ((1.0, 1e-3), (0.1, 0.5))), key=lambda r: r.fun)
    alpha = float(np.clip(np.sqrt(np.exp(best.x[0])), 1e-2, 1e3))
    return alpha, float(np.sqrt(np.exp(best.x[1])))


class PairRidgeCommittee:
    """Resampling committee of ridge-fitted pair-basis potentials.

    Parameters: ``species``; ``n_members`` (≥ 2); ``subsample`` fraction of
    training structures per member; ``ridge`` relative regulariser;
    ``force_weight`` weight of a force row (eV/Å) against a per-atom energy
    row (eV/atom); ``seed``; basis options ``r_cut``, ``n_basis``.

    ``resampling``: ``"fixed-size"`` (default; every member draws
    ``round(subsample·n)`` structures afresh at each fit) or ``"stable"``
    (structure i's memberships depend only on ``(seed, i)``, so refits on a
    growing training set — on-the-fly learning — keep earlier assignments).
    ``calibration``: ``"ratio"`` (default; α² = Σr²/Σσ² over OOB residuals)
    or ``"bias"`` (:func:`_calibrate_with_bias`: α scales the spread only, the
    error floor is kept in :attr:`bias_std` [eV], not added to σ).
    """

    def __init__(self, species, n_members=8, subsample=0.7, ridge=1e-8, force_weight=0.1,
                 seed=0, r_cut=5.0, n_basis=12, resampling="fixed-size", calibration="ratio"):
        if n_members < 2:
            raise ConfigError(f"a committee needs n_members >= 2, got {n_members}")
        if not 0 < subsample <= 1:
            raise ConfigError(f"subsample must be in (0, 1], got {subsample}")
        self.basis = PairBasis(species, r_cut=r_cut, n_basis=n_basis)
        self.n_members, self.subsample, self.ridge = int(n_members), float(subsample), float(ridge)
        self.force_weight, self.seed = float(force_weight), seed
        if resampling not in ("fixed-size", "stable"):
            raise ConfigError(f"resampling must be 'fixed-size' or 'stable', got {resampling!r}")
        if calibration not in ("ratio", "bias"):
            raise ConfigError(f"calibration must be 'ratio' or 'bias', got {calibration!r}")
        self.resampling, self.calibration = resampling, calibration
        self.weights = None     # (M, d)
        self.alpha = 1.0
        self.bias_std = 0.0     # eV per structure (calibration="bias" only)

    def fit(self, structures, energies, forces=None):
        """Fit on energies (n,) [eV] and optionally forces (list of (N,3)) [eV/Å]."""
        structures = list(structures)
        E = np.asarray(energies, float).reshape(-1)
        if len(structures) != len(E) or not len(E):
            raise ConfigError(f"need one energy per structure ({len(structures)} structures, {len(E)} energies)")
        blocks = []
        for s, atoms in enumerate(structures):
            n = len(atoms)
            if forces is None:
                phi = self.basis.features(atoms)
                A, b = phi[None, :] / n, np.array([E[s] / n])
            else:
                phi, dphi = self.basis.features(atoms, derivatives=True)
                F = np.asarray(forces[s], float).reshape(n, 3)
                A = np.vstack([phi[None, :] / n, -self.force_weight * dphi.reshape(3 * n, -1)])
                b = np.concatenate([[E[s] / n], self.force_weight * F.reshape(-1)])
            blocks.append((A, b, phi))
        if self.resampling == "stable":
            subsets = _stable_subsets(len(blocks), self.n_members, self.subsample, self.seed)
        else:
            subsets = _subsets(len(blocks), self.n_members, self.subsample, np.random.default_rng(self.seed))
        W = []
        for sub in subsets:
            A = np.vstack([blocks[k][0] for k in sub])
            b = np.concatenate([blocks[k][1] for k in sub])
            W.append(_ridge(A, b, self.ridge))
        self.weights = np.array(W)
        Phi = np.array([blk[2] for blk in blocks])
        if self.calibration == "bias":
            self.alpha, self.bias_std = _calibrate_with_bias(E, self.weights @ Phi.T, subsets)
        else:
            self.alpha = _calibrate(E, self.weights @ Phi.T, subsets)
        return self

    def member_predict(self, k, atoms, forces=True):
        if self.weights is None:
            raise ConfigError("the ridge committee is not fitted yet; call fit() first")
        w = self.weights[k]
        if not forces:
            return {"energy": float(self.basis.features(atoms) @ w)}
        phi, dphi = self.basis.features(atoms, derivatives=True)
        return {"energy": float(phi @ w), "forces": -(dphi @ w)}

    def as_committee(self, molecules=None):
        from ..committee import CommitteeCalculator

        members = [RidgeMember(self, k) for k in range(self.n_members)]
        return CommitteeCalculator(members, calibration={"energy": self.alpha, "forces": self.alpha},
                                   molecules=molecules, stress=False)


class RidgeMember(Member):
    """Member k of a :class:`PairRidgeCommittee` (energy and forces, no stress)."""

    backend = "ridge"
    implemented_properties = ("energy", "forces")

    def __init__(self, model: PairRidgeCommittee, k: int):
        super().__init__(name=f"ridge{k}")
        self.model, self.k = model, int(k)
        self.species = frozenset(model.basis.species)
        self.cutoff = model.basis.r_cut

    def predict(self, atoms, properties):
        return self.model.member_predict(self.k, atoms, forces="forces" in properties)

    def group_key(self):
        return ("ridge", id(self.model))

    @classmethod
    def predict_group(cls, members, atoms, properties):
        """One feature evaluation for all members of the same model."""
        model = members[0].model
        W = model.weights[[m.k for m in members]]
        if "forces" not in properties:
            e = W @ model.basis.features(atoms)
            return [{"energy": float(x)} for x in e]
        phi, dphi = model.basis.features(atoms, derivatives=True)
        e, F = W @ phi, -np.einsum("nck,mk->mnc", dphi, W)
        return [{"energy": float(e[m]), "forces": F[m]} for m in range(len(members))]


def ridge_rs_fit_predict(X, n_members=8, subsample=0.7, ridge=1e-3, seed=0, kernel="rbf",
                         length_scale=None):
    """Build ``fit_predict(idx, y) -> (mu, sigma)`` over descriptor rows ``X`` (n, d).

    Each call fits ``n_members`` (kernel) ridge models on random subsamples
    of the labelled rows ``idx`` with targets ``y`` and returns the
    calibrated committee mean and std over all n rows (units of ``y``).
    ``kernel="rbf"``: Gaussian kernel on standardised X, length scale the
    median pairwise distance unless given (local, so a Kriging-believer
    update shrinks σ near the pick); ``"linear"``: ridge with intercept.
    Used by :func:`committee_calc.analysis.select.kriging_believer`.
    """
    X = np.asarray(X, float)
    Z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    if kernel == "rbf":
        sq = np.sum(Z * Z, 1)
        D2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0.0)
        ell = float(length_scale) if length_scale else float(np.sqrt(np.median(D2[np.triu_indices(len(Z), 1)]))) or 1.0
        K = np.exp(-D2 / (2 * ell * ell))
    elif kernel == "linear":
        Xs = np.hstack([np.ones((len(X), 1)), Z])
    else:
        raise ConfigError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")

    def fit_predict(idx, y):
        idx, y = np.asarray(idx, int), np.asarray(y, float)
        rng = np.random.default_rng(seed)
        subsets = _subsets(len(idx), n_members, subsample, rng) if len(idx) > 1 else [np.array([0])] * n_members
        P = []
        for sub in subsets:
            t = idx[sub]
            if kernel == "rbf":
                ybar = y[sub].mean()
                a = np.linalg.solve(K[np.ix_(t, t)] + ridge * np.eye(len(t)), y[sub] - ybar)
                P.append(ybar + K[:, t] @ a)
            else:
                P.append(Xs @ _ridge(Xs[t], y[sub], ridge))
        P = np.array(P)
        alpha = _calibrate(y, P[:, idx], subsets)
        sd = P.std(0, ddof=1) * alpha
        return P.mean(0), np.maximum(sd, 1e-12)

    return fit_predict


class RidgeTrainer:
    """Active-learning trainer: ``trainer(train_file, work_dir, use_forces) -> CommitteeCalculator``.

    Reads ``energy_key`` [eV] (and ``forces_key`` [eV/Å] when ``use_forces``;
    default the active-learning training keys ``AL_energy``/``AL_forces``; use
    ``REF_energy``/``REF_forces`` to train straight from a label store) and fits
    a :class:`PairRidgeCommittee` in-process (seconds).
    """

    def __init__(self, species, molecules=None, energy_key="AL_energy", forces_key="AL_forces",
                 **options):
        self.species, self.molecules, self.options = list(species), molecules, options
        self.energy_key, self.forces_key = energy_key, forces_key
        self.model = None

    def __call__(self, train_file, work_dir=None, use_forces=False):
        from ase.io import read

        frames = read(str(train_file), index=":")
        E = [float(f.info[self.energy_key]) for f in frames]
        F = [np.asarray(f.arrays[self.forces_key]) for f in frames] if use_forces else None
        self.model = PairRidgeCommittee(self.species, **self.options).fit(frames, E, F)
        return self.model.as_committee(molecules=self.molecules)
