"""How LLPR pseudo-members get their last-layer weight changes (numpy; used by
:class:`~committee_calc.members.mace_llpr.LLPRModel`).

Posterior (Bigi, Chong, Ceriotti & Grasselli, Mach. Learn.: Sci. Technol. 5, 045018 (2024)):
δw ~ N(0, α²(C + ς²I)⁻¹) = α V (Λ + ς²)^(-1/2) z, z ~ N(0, I_D), with C = V Λ Vᵀ, drawn as
⌊K/2⌋ antithetic pairs ±δw (odd K: one more member with δw = 0, the model, so the members' mean
is the model and their ddof = 1 spread stays unbiased).  ``rank=r``: only the r eigen-directions
of C with the largest λ/(λ + ς²), the share of each direction in the posterior energy variance
averaged over the training set (Σ_train (φ·v)² / (λ + ς²) = λ / (λ + ς²)); ``variance_kept`` is
the kept fraction of that average.  The directions of largest *weight* variance (smallest λ)
carry almost none of it when ς² dominates them.  Stored as ``coef @ basis``: forces of any K
members need one gradient row per basis row (min(r, ⌊K/2⌋)).

``sampling="sigma"``: no weights are drawn (``seed`` is not used); member k is ``E + z_k σ``
with :func:`sigma_factors` z_k.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

POSTERIOR, SIGMA = "posterior", "sigma"  #: values of ``sampling``


def draw_members(eig, alpha: float, members: int, seed=0, rank=None, sampling=POSTERIOR) -> tuple:
    """Weight changes of ``members`` pseudo-members (module docstring).

    eig: ``(λ (D,), V (D, D), ς²)`` of the covariance C; alpha: the calibration α.
    Returns ``(sampling, rank, variance_kept, basis, coef)``: basis (R, D) numpy (None for
    sigma) and coef (⌈K/2⌉, R) with member k's change ``(-1)**k coef[k // 2] @ basis``; for
    sigma, coef (K,) are the factors of σ.  Raises ConfigError for an unknown ``sampling``,
    ``rank`` with sigma or outside 1..D, or a ``seed`` that is not a non-negative integer.
    """
    lam, vec, reg = eig
    dim = len(lam)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"LLPR 'seed' must be a non-negative integer, got {seed!r}")
    if sampling not in (POSTERIOR, SIGMA):
        raise ConfigError(f"LLPR 'sampling' must be {POSTERIOR!r} (weights drawn from the posterior) "
                          f"or {SIGMA!r} (members E + z_k σ, one gradient row), got {sampling!r}")
    if sampling == SIGMA:
        if rank is not None:
            raise ConfigError("LLPR 'rank' applies to sampling: posterior; sampling: sigma has one "
                              "gradient row already: drop 'rank'")
        return SIGMA, None, 1.0, None, sigma_factors(members)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))
                             or not 1 <= rank <= dim):
        raise ConfigError(f"LLPR 'rank' must be an integer from 1 to {dim} (the model's last-layer "
                          f"features) or absent for the full posterior, got {rank!r}")
    top = np.arange(dim) if rank is None else np.argsort(-lam, kind="stable")[:int(rank)]
    share = lam / (lam + reg)
    kept = float(share[top].sum() / max(share.sum(), 1e-300))
    z = np.random.default_rng(int(seed)).standard_normal((int(members) // 2, len(top)))
    dirs = alpha * vec[:, top] / np.sqrt(lam[top] + reg)  # (D, r)
    basis, coef = (z @ dirs.T, np.eye(len(z))) if len(z) <= len(top) else (dirs.T, z)
    coef = np.vstack([coef, np.zeros((int(members) % 2, coef.shape[1]))])  # odd K: the model
    return POSTERIOR, len(top), kept, basis, coef


def sigma_factors(members: int) -> np.ndarray:
    """(K,) factors z_k of σ for ``sampling: sigma``: symmetric normal quantiles Φ⁻¹((j + ½)/K)
    scaled to a sample standard deviation (ddof = 1) of 1, alternating +, − by member
    (odd K: the last member is the middle quantile, 0)."""
    from scipy.stats import norm
    k = int(members)
    if k < 2:
        return np.zeros(max(k, 0))
    q = norm.ppf((np.arange(k) + 0.5) / k)
    z = np.empty(k)
    pos = np.sort(q[q > 0])[::-1]
    z[0:2 * len(pos):2], z[1:2 * len(pos):2] = pos, -pos
    z[2 * len(pos):] = 0.0
    return z / np.std(z, ddof=1)


__all__ = ["POSTERIOR", "SIGMA", "draw_members", "sigma_factors"]
