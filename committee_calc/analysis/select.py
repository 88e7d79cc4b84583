"""Query strategies: which structures of a pool to label next.

Every strategy is a small pure function over arrays describing the pool and
returns a list of pool indices (ints, in pick order, never repeated):

* ``sigma`` (n,) — committee uncertainty per structure, any unit, the same
  unit as the threshold passed beside it (e.g. eV/atom or eV/molecule);
* ``X`` (n, d) — descriptors (see :mod:`committee_calc.descriptors`),
  distances are Euclidean in descriptor space;
* ``energy`` / ``mu`` (n,) — predicted energies [eV, or eV/atom; the caller
  keeps one unit].

Strategies (names used by :data:`STRATEGIES` and the active-learning loop):

``random``                random order, keep those above the threshold
``highest_uncertainty``   largest σ first (optionally only ``lower < σ <= upper``)
``highest_uncertainty_fps`` farthest point sampling among σ > threshold,
                          seeded by the most uncertain
``fps``                   initial batch, FPS seeded by the lowest energy
``expected_improvement``  EI for landing inside an energy window above the
                          lowest known energy, batches by Kriging believer on
                          the surrogate :func:`ridge_rs_fit_predict`
``energy_force_dbscan``   low energy + high force uncertainty score, one pick
                          per DBSCAN cluster (Hessmann et al.)
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..train.ridge import _calibrate, _subsets

STRATEGIES = ("random", "highest_uncertainty", "highest_uncertainty_fps", "fps",
              "expected_improvement", "energy_force_dbscan")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"number of structures to select must be an integer >= 1, got {n!r}")
    return int(n)


def _vec(name, a, n=None) -> np.ndarray:
    a = np.asarray(a, dtype=float).reshape(-1)
    if n is not None and a.shape[0] != n:
        raise ConfigError(f"{name} has {a.shape[0]} entries but the pool has {n}")
    return a


def _mat(X) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ConfigError(f"descriptors must be a 2-D (n_structures, n_features) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ConfigError("descriptors contain NaN/inf; recompute them or drop those structures")
    return X


# ----------------------------------------------------------------------------
def farthest_point_sampling(X, n, start=0, candidates=None) -> list:
    """Greedy max-min (farthest point) order of ``n`` rows of ``X``.

    ``start`` is the first pick (a pool index); each next pick maximises the
    Euclidean distance to the nearest already-picked row.  ``candidates``
    restricts the picks to those pool indices (``start`` must be one of
    them).  Ties go to the lowest index.  Returns min(n, #candidates) indices.
    """
    n = _check_n(n)
    X = _mat(X)
    cand = np.arange(len(X)) if candidates is None else np.unique(np.asarray(candidates, dtype=int))
    if cand.size == 0:
        return []
    start = int(start)
    if start not in set(cand.tolist()):
        raise ConfigError(f"FPS start index {start} is not among the candidates")
    picks = [start]
    dmin = np.linalg.norm(X[cand] - X[start], axis=1)
    dmin[cand == start] = -np.inf
    while len(picks) < min(n, cand.size):
        j = int(np.argmax(dmin))
        picks.append(int(cand[j]))
        dmin = np.minimum(dmin, np.linalg.norm(X[cand] - X[cand[j]], axis=1))
        dmin[np.isin(cand, picks)] = -np.inf
    return picks


def fps(X, n, energy) -> list:
    """Initial batch: farthest point sampling seeded by the lowest-energy structure."""
    energy = _vec("energy", energy, len(_mat(X)))
    return farthest_point_sampling(X, n, start=int(np.nanargmin(energy)))


def highest_uncertainty(sigma, n, lower=None, upper=None) -> list:
    """Indices of the ``n`` largest σ, largest first.

    Only structures with ``σ > lower`` (the labelling threshold) and
    ``σ <= upper`` (a cap above which structures go straight to the
    reference) are eligible; non-finite σ counts as +inf.
    """
    n = _check_n(n)
    s = _vec("sigma", sigma)
    s = np.where(np.isfinite(s), s, np.inf)
    ok = np.ones(s.shape, bool)
    if lower is not None:
        ok &= s > float(lower)
    if upper is not None:
        ok &= s <= float(upper)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-s[idx], kind="stable")]
    return [int(i) for i in order[:n]]


def highest_uncertainty_fps(sigma, X, n, threshold) -> list:
    """FPS among the structures with σ > threshold, seeded by the most uncertain."""
    n = _check_n(n)
    X = _mat(X)
    s = _vec("sigma", sigma, len(X))
    s = np.where(np.isfinite(s), s, np.inf)
    cand = np.flatnonzero(s > float(threshold))
    if cand.size == 0:
        return []
    start = int(cand[np.argmax(s[cand])])
    return farthest_point_sampling(X, n, start=start, candidates=cand)


def random_selection(n_total, n, rng=None) -> list:
    """``n`` distinct indices of ``range(n_total)`` in random order."""
    n = _check_n(n)
    rng = np.random.default_rng(rng)
    return [int(i) for i in rng.permutation(int(n_total))[:n]]


def random_above_threshold(sigma, n, threshold, rng=None) -> list:
    """Visit the pool in random order and take the first ``n`` with σ > threshold."""
    n = _check_n(n)
    s = _vec("sigma", sigma)
    s = np.where(np.isfinite(s), s, np.inf)
    order = np.random.default_rng(rng).permutation(s.size)
    return [int(i) for i in order[s[order] > float(threshold)][:n]]


# ----------------------------------------------------------------------------
def _norm_cdf(z):
    from scipy.special import ndtr

    return ndtr(z)


def expected_improvement(mu, sigma, best, window=0.0) -> np.ndarray:
    """Expected improvement for minimisation into an energy window.

    The target is ``t = best + window`` (``best``: lowest labelled energy,
    ``window`` ≥ 0: width of the energy window of interest, same unit).  With
    improvement ``I = max(0, t - E)`` and ``E ~ N(mu, sigma²)``::

        EI = (t - mu) Φ(z) + sigma φ(z),   z = (t - mu) / sigma

    and ``EI = max(0, t - mu)`` where sigma = 0.  Returns an (n,) array.
    """
    mu = _vec("mu", mu)
    sigma = _vec("sigma", sigma, mu.size)
    if np.any(sigma < 0):
        raise ConfigError("sigma must be >= 0 for expected improvement")
    t = float(best) + float(window)
    d = t - mu
    out = np.maximum(d, 0.0)
    pos = sigma > 0
    z = d[pos] / sigma[pos]
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    out[pos] = d[pos] * _norm_cdf(z) + sigma[pos] * pdf
    return out


def prob_in_window(mu, sigma, best, window) -> np.ndarray:
    """P(E_i < best + window) per structure under N(mu, sigma²) (n,)."""
    mu = _vec("mu", mu)
    sigma = np.maximum(_vec("sigma", sigma, mu.size), 1e-300)
    return _norm_cdf((float(best) + float(window) - mu) / sigma)


def prob_all_sampled(mu, sigma, best, window, unlabelled) -> float:
    """Estimated probability that no unlabelled structure lies in the window.

    ``Π_{i unlabelled} (1 - P(E_i < best + window))`` (independence assumed);
    the expected-improvement loop stops when this reaches e.g. 0.99.
    """
    idx = np.asarray(list(unlabelled), dtype=int)
    if idx.size == 0:
        return 1.0
    p = prob_in_window(np.asarray(mu)[idx], np.asarray(sigma)[idx], best, window)
    return float(np.exp(np.sum(np.log1p(-np.clip(p, 0.0, 1.0 - 1e-15)))))


def kriging_believer(fit_predict, labelled, y, n, window=0.0, exclude=()) -> list:
    """A batch of ``n`` picks by expected improvement with the Kriging believer.

    ``fit_predict(idx, y) -> (mu, sigma)`` fits the surrogate (e.g. a ridge
    resampling committee) on pool indices ``idx`` with targets ``y`` and
    returns (n_pool,) mean and spread.  After each pick the surrogate is
    refitted as if the pick's label equalled its current predicted mean (the
    "believed" value), which shrinks σ around it, so the batch spreads out
    instead of repeating the top-k of one EI evaluation.
    """
    n = _check_n(n)
    idx = [int(i) for i in labelled]
    yy = [float(v) for v in y]
    if not idx:
        raise ConfigError("expected improvement needs at least one labelled structure")
    taken = set(idx) | {int(i) for i in exclude}
    picks = []
    for _ in range(n):
        mu, sigma = fit_predict(np.array(idx), np.array(yy))
        ei = expected_improvement(mu, sigma, min(yy), window)
        ei[list(taken)] = -np.inf
        if not np.isfinite(ei).any():
            break
        j = int(np.argmax(ei))
        picks.append(j)
        taken.add(j)
        idx.append(j)
        yy.append(float(mu[j]))
    return picks


# ----------------------------------------------------------------------------
def ridge_rs_fit_predict(X, n_members=8, subsample=0.7, ridge=1e-3, seed=0, kernel="rbf",
                         length_scale=None):
    """Build ``fit_predict(idx, y) -> (mu, sigma)`` over descriptor rows ``X`` (n, d).

    Each call fits ``n_members`` (kernel) ridge models (scikit-learn) on random
    subsamples of the labelled rows ``idx`` with targets ``y`` and returns the
    calibrated committee mean and std (n,) over all rows (units of ``y``):
    the resampling committee of Musil et al., JCTC 15, 906 (2019), with α
    from out-of-sample residuals.  ``kernel="rbf"``: Gaussian kernel on
    standardised X (targets centred per member), length scale the median
    pairwise distance unless given (local, so a Kriging-believer update
    shrinks σ near the pick); ``"linear"``: ridge on [1, X] with the relative
    regulariser ``ridge·tr(AᵀA)/d``.  The surrogate of :func:`kriging_believer`.
    Raises ConfigError for an unknown kernel.
    """
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import Ridge

    X = np.asarray(X, float)
    Z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    if kernel == "rbf":
        sq = np.sum(Z * Z, 1)
        D2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0.0)
        ell = float(length_scale) if length_scale else float(np.sqrt(np.median(D2[np.triu_indices(len(Z), 1)]))) or 1.0
        Kmat = np.exp(-D2 / (2 * ell * ell))
    elif kernel == "linear":
        Xs = np.hstack([np.ones((len(X), 1)), Z])
    else:
        raise ConfigError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")

    def member(t, yt):
        if kernel == "rbf":
            ybar = yt.mean()
            fit = KernelRidge(alpha=ridge, kernel="precomputed").fit(Kmat[np.ix_(t, t)], yt - ybar)
            return ybar + fit.predict(Kmat[:, t])
        A = Xs[t]
        scale = max(float(np.sum(A * A)) / A.shape[1], 1e-12)
        return Ridge(alpha=ridge * scale, fit_intercept=False, solver="cholesky").fit(A, yt).predict(Xs)

    def fit_predict(idx, y):
        idx, y = np.asarray(idx, int), np.asarray(y, float)
        rng = np.random.default_rng(seed)
        subsets = _subsets(len(idx), n_members, subsample, rng) if len(idx) > 1 else [np.array([0])] * n_members
        P = np.array([member(idx[sub], y[sub]) for sub in subsets])
        alpha = _calibrate(y, P[:, idx], subsets)
        sd = P.std(0, ddof=1) * alpha
        return P.mean(0), np.maximum(sd, 1e-12)

    return fit_predict


# ----------------------------------------------------------------------------
def energy_force_dbscan(energy, force_sigma, X, n, eps=None, min_samples=1,
                        energy_weight=1.0, force_weight=1.0) -> list:
    """Hessmann-style pick: low energy and high force uncertainty, one per cluster.

    Score ``s_i = force_weight * r(σ_F,i) + energy_weight * (1 - r(E_i))``
    where ``r`` is the rank scaled to [0, 1] (robust to units and outliers).
    Descriptors are clustered by DBSCAN (``eps`` default: median
    nearest-neighbour distance × 2; noise points are their own clusters);
    the best-scoring member of each cluster is a candidate, and the ``n``
    best candidates are returned, best first.
    """
    n = _check_n(n)
    X = _mat(X)
    e = _vec("energy", energy, len(X))
    f = _vec("force_sigma", force_sigma, len(X))
    if len(X) == 0:
        return []

    def rank01(a):
        r = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
        return r / max(len(a) - 1, 1)

    score = force_weight * rank01(f) + energy_weight * (1.0 - rank01(e))
    labels = cluster_labels(X, eps=eps, min_samples=min_samples)
    best = {}
    for i in np.argsort(-score, kind="stable"):
        key = int(labels[i]) if labels[i] >= 0 else ("noise", int(i))
        best.setdefault(key, int(i))
    chosen = sorted(best.values(), key=lambda i: -score[i])
    return chosen[:n]


def cluster_labels(X, eps=None, min_samples=1) -> np.ndarray:
    """DBSCAN labels (n,) of descriptor rows; -1 marks noise."""
    from sklearn.cluster import DBSCAN

    X = _mat(X)
    if eps is None:
        if len(X) < 2:
            return np.zeros(len(X), int)
        from scipy.spatial import cKDTree

        d, _ = cKDTree(X).query(X, k=2)
        eps = max(2.0 * float(np.median(d[:, 1])), 1e-12)
    eps = float(eps)
    if not eps > 0:
        raise ConfigError(f"DBSCAN eps must be > 0, got {eps!r}")
    return DBSCAN(eps=eps, min_samples=int(min_samples)).fit(X).labels_
