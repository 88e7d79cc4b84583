"""Compiled (numba) kernels for n2p2 symmetry functions with analytic derivatives.

Every symmetry function is written as a product of shared *terms*:

* radial term ``R_t(r)`` (table row ``t``): kind 0 ``exp(-eta (r - rs)^2) f_c(r)``
  (types 2, 3, 9; ``f_c`` cached per unique cutoff radius, a *slot*), kind 1 the
  compact polynomial ``p(r)`` on ``rl < r < rc`` (types 20, 22);
* angular term ``A_a(cos θ)``: kind 0 ``2^{1-ζ} (1 + λ cos θ)^ζ`` (types 3, 9),
  kind 1 the compact polynomial of θ on ``[left, right]`` (type 22).

Radial SF: ``G = Σ_j R_t(r_ij)``.  Angular SF: ``G = Σ_{j<k} A_a R_t(r_ij)
R_t(r_ik) [R_t(r_jk)]`` (the ``r_jk`` factor for type 3 only).  Angular SFs
of one (centre, neighbour pair) element triple are a *family*, split into
*egroups* sharing (radial term, jk flag), so that a triplet costs one cosine,
one ``f_c(r_jk)`` per slot, one exponential per egroup and one power per
angular term, whatever the number of SFs.  Pair-level terms are computed
once per pair and reused by all triplets of that centre.

Each kernel adds raw SFs to ``G`` (N, nsf_max) when ``V`` is empty (M = 0),
and otherwise, with ``V`` (M, N, nsf_max) the dE/dG of M committee members,
adds dE/dD to ``gD`` (M, P, 3) for the pair vectors D (internal length units;
G is then left alone).  Work per centre
touches only that centre's row of ``G`` and its own pairs' rows of ``gD``.
Cost: O(N n_neigh) for pairs plus O(N n_neigh^2 / 2) candidate triplets.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_TANH_PRE = ((math.e + 1 / math.e) / (math.e - 1 / math.e)) ** 3


@njit(cache=True, nogil=True, inline="always")
def _core(x, order):
    """n2p2 core polynomial and its derivative, order 1..4, x in [0, 1]."""
    if order == 1:
        return (2.0 * x - 3.0) * x * x + 1.0, (6.0 * x - 6.0) * x
    x2 = x * x
    if order == 2:
        return ((15.0 - 6.0 * x) * x - 10.0) * x * x2 + 1.0, ((60.0 - 30.0 * x) * x - 30.0) * x2
    if order == 3:
        f = (x * (x * (20.0 * x - 70.0) + 84.0) - 35.0) * x2 * x2 + 1.0
        return f, (x * (x * (140.0 * x - 420.0) + 420.0) - 140.0) * x2 * x
    f = (x * (x * ((315.0 - 70.0 * x) * x - 540.0) + 420.0) - 126.0) * x2 * x2 * x + 1.0
    return f, (x * (x * ((2520.0 - 630.0 * x) * x - 3780.0) + 2520.0) - 630.0) * x2 * x2


@njit(cache=True, nogil=True, inline="always")
def _cutoff(r, rc, ctype, alpha):
    """f_c(r) and df_c/dr for r < rc (n2p2 cutoff types 0-8, inner shift alpha)."""
    if ctype == 0:
        return 1.0, 0.0
    if ctype == 2 or ctype == 3:
        em = math.exp(-2.0 * (1.0 - r * (1.0 / rc)))
        t = (1.0 - em) / (1.0 + em)  # tanh(1 - r/rc); measured faster than math.tanh here
        pre = _TANH_PRE if ctype == 3 else 1.0
        return t * t * t * pre, -3.0 * t * t * (1.0 - t * t) * pre / rc
    rci = rc * alpha
    if alpha != 0.0 and r < rci:
        return 1.0, 0.0
    iw = 1.0 / (rc - rci)
    x = (r - rci) * iw
    if x < 0.0:
        x = 0.0
    if ctype == 1:
        return 0.5 * (math.cos(math.pi * x) + 1.0), -0.5 * math.pi * math.sin(math.pi * x) * iw
    if ctype == 4:
        xx = min(x, 1.0 - 1e-12)
        d = xx * xx - 1.0
        f = math.e * math.exp(1.0 / d)
        return f, -2.0 * xx / (d * d) * f * iw
    f, df = _core(x, ctype - 4)
    return f, df * iw


@njit(cache=True, nogil=True, inline="always")
def _compact(a, left, right, order, asym):
    """Compact polynomial p(|a - centre| / halfwidth) and dp/da (caller masks a)."""
    centre = 0.5 * (left + right)
    iw = 1.0 / (0.5 * (right - left))
    u = (a - centre) * iw
    s = iw
    if u < 0.0:
        u, s = -u, -iw
    if u >= 1.0:
        u, s = 1.0, 0.0
    if asym:
        s = s * (2.0 - 2.0 * u)
        u = (2.0 - u) * u
    f, df = _core(u, order)
    return f, df * s


@njit(cache=True, nogil=True, inline="always")
def _slots(r, slot_rc, ctype, alpha, fcv, dfcv):
    for s in range(slot_rc.shape[0]):
        if r < slot_rc[s]:
            fcv[s], dfcv[s] = _cutoff(r, slot_rc[s], ctype, alpha)
        else:
            fcv[s], dfcv[s] = 0.0, 0.0


@njit(cache=True, nogil=True, inline="always")
def _rexp(r, t, rt_p, rt_int, fcv, dfcv):
    """Radial term of kind 0 (exp x cutoff) from the cached cutoff slot: (R, dR/dr)."""
    sl = rt_int[t, 0]
    fc, dfc = fcv[sl], dfcv[sl]
    eta, d = rt_p[t, 0], r - rt_p[t, 1]
    ex = math.exp(-eta * d * d)
    return ex * fc, ex * (dfc - 2.0 * eta * d * fc)


@njit(cache=True, nogil=True, inline="always")
def _rterm(r, t, rt_kind, rt_p, rt_int, fcv, dfcv):
    """Radial term t at r: (R, dR/dr)."""
    if rt_kind[t] == 0:
        return _rexp(r, t, rt_p, rt_int, fcv, dfcv)
    rl, rc = rt_p[t, 0], rt_p[t, 1]
    if r <= rl or r >= rc:
        return 0.0, 0.0
    return _compact(r, rl, rc, rt_int[t, 1], rt_int[t, 2] != 0)


@njit(cache=True, nogil=True, inline="always")
def _aterm(cos, a, at_kind, at_p, at_int):
    """Angular term a at cos θ: (A, dA/dcos)."""
    if at_kind[a] == 0:
        lam, zeta, k = at_p[a, 0], at_p[a, 1], at_p[a, 2]
        pl = 1.0 + lam * cos
        if pl <= 0.0:
            return 0.0, 0.0
        iz = at_int[a, 0]
        if iz > 0:
            pm = 1.0
            for _ in range(iz - 1):
                pm *= pl
            return k * pm * pl, k * zeta * pm * lam
        pm = pl ** (zeta - 1.0)
        return k * pm * pl, k * zeta * pm * lam
    if not (cos > -1.0 and cos < 1.0):
        return 0.0, 0.0
    theta = math.acos(cos)
    lo, hi = at_p[a, 0], at_p[a, 1]
    if theta < lo or theta > hi:
        return 0.0, 0.0
    f, df = _compact(theta, lo, hi, at_int[a, 1], False)
    return f, -df / math.sqrt(1.0 - cos * cos)


@njit(cache=True, nogil=True)
def radial_kernel(start, j, species, D, r, slot_rc, ctype, alpha,
                  rt_kind, rt_p, rt_int, fam, f_start, sf_col, sf_rt, V, G, gD):
    """Radial SFs of all pairs (pairs sorted by centre, CSR ``start``)."""
    n = start.shape[0] - 1
    M = V.shape[0]
    fcv = np.zeros(slot_rc.shape[0])
    dfcv = np.zeros(slot_rc.shape[0])
    for i in range(n):
        c = species[i]
        for p in range(start[i], start[i + 1]):
            f = fam[c, species[j[p]]]
            if f < 0:
                continue
            rp = r[p]
            _slots(rp, slot_rc, ctype, alpha, fcv, dfcv)
            for s in range(f_start[f], f_start[f + 1]):
                t = sf_rt[s]
                if rt_kind[t] == 0:  # type 2 (a separate call: the generic one is slower)
                    if fcv[rt_int[t, 0]] == 0.0 and dfcv[rt_int[t, 0]] == 0.0:
                        continue
                    R, dR = _rexp(rp, t, rt_p, rt_int, fcv, dfcv)
                else:
                    R, dR = _rterm(rp, t, rt_kind, rt_p, rt_int, fcv, dfcv)
                col = sf_col[s]
                if M == 0:
                    G[i, col] += R
                for m in range(M):
                    g = V[m, i, col] * dR / rp
                    for x in range(3):
                        gD[m, p, x] += g * D[p, x]


@njit(cache=True, nogil=True)
def angular_kernel(start, j, species, D, r, slot_rc, ctype, alpha,
                   rt_kind, rt_p, rt_int, at_kind, at_p, at_int, fam, f_rmax, f_jkmax,
                   f_at, at_ids, f_eg, eg_rt, eg_jk, eg_sf, sf_col, sf_aloc, V, G, gD):
    """Angular SFs of all triplets (pairs sorted by centre, CSR ``start``)."""
    n = start.shape[0] - 1
    M = V.shape[0]
    nrt, nsl = rt_kind.shape[0], slot_rc.shape[0]
    maxn = 0
    for i in range(n):
        maxn = max(maxn, start[i + 1] - start[i])
    Rp = np.zeros((maxn, nrt))
    dRp = np.zeros((maxn, nrt))
    fcv, dfcv = np.zeros(nsl), np.zeros(nsl)
    fjk, dfjk = np.zeros(nsl), np.zeros(nsl)
    maxa = 1
    for f in range(f_at.shape[0] - 1):
        maxa = max(maxa, f_at[f + 1] - f_at[f])
    A, dA = np.zeros(maxa), np.zeros(maxa)
    gc, gi, gk, gj = np.zeros(M), np.zeros(M), np.zeros(M), np.zeros(M)
    for i in range(n):
        c, p0 = species[i], start[i]
        nn = start[i + 1] - p0
        for q in range(nn):
            _slots(r[p0 + q], slot_rc, ctype, alpha, fcv, dfcv)
            for t in range(nrt):
                if rt_kind[t] == 0:
                    Rp[q, t], dRp[q, t] = _rexp(r[p0 + q], t, rt_p, rt_int, fcv, dfcv)
                else:
                    Rp[q, t], dRp[q, t] = _rterm(r[p0 + q], t, rt_kind, rt_p, rt_int, fcv, dfcv)
        for qa in range(nn):
            pa = p0 + qa
            ra, sa = r[pa], species[j[pa]]
            for qb in range(qa + 1, nn):
                pb = p0 + qb
                sb = species[j[pb]]
                f = fam[c, min(sa, sb), max(sa, sb)]
                if f < 0:
                    continue
                rb = r[pb]
                if ra >= f_rmax[f] or rb >= f_rmax[f]:
                    continue
                ex, ey, ez = D[pb, 0] - D[pa, 0], D[pb, 1] - D[pa, 1], D[pb, 2] - D[pa, 2]
                rjk = math.sqrt(ex * ex + ey * ey + ez * ez)
                if rjk >= f_jkmax[f]:
                    continue
                rab = ra * rb
                cos = (D[pa, 0] * D[pb, 0] + D[pa, 1] * D[pb, 1] + D[pa, 2] * D[pb, 2]) / rab
                _slots(rjk, slot_rc, ctype, alpha, fjk, dfjk)
                a0 = f_at[f]
                for k in range(f_at[f + 1] - a0):
                    A[k], dA[k] = _aterm(cos, at_ids[a0 + k], at_kind, at_p, at_int)
                for m in range(M):
                    gc[m], gi[m], gk[m], gj[m] = 0.0, 0.0, 0.0, 0.0
                for g in range(f_eg[f], f_eg[f + 1]):
                    t = eg_rt[g]
                    Ra, dRa, Rb, dRb = Rp[qa, t], dRp[qa, t], Rp[qb, t], dRp[qb, t]
                    if Ra == 0.0 and dRa == 0.0 or Rb == 0.0 and dRb == 0.0:
                        continue
                    Rc, dRc = 1.0, 0.0
                    if eg_jk[g]:  # type 3 (kind 0): exp(-eta (r_jk - rs)^2) f_c(r_jk)
                        if fjk[rt_int[t, 0]] == 0.0 and dfjk[rt_int[t, 0]] == 0.0:
                            continue
                        Rc, dRc = _rexp(rjk, t, rt_p, rt_int, fjk, dfjk)
                    E = Ra * Rb * Rc
                    if M == 0:
                        for s in range(eg_sf[g], eg_sf[g + 1]):
                            G[i, sf_col[s]] += A[sf_aloc[s]] * E
                    for m in range(M):
                        sA, sdA = 0.0, 0.0
                        for s in range(eg_sf[g], eg_sf[g + 1]):
                            w = V[m, i, sf_col[s]]
                            sA += w * A[sf_aloc[s]]
                            sdA += w * dA[sf_aloc[s]]
                        gc[m] += sdA * E
                        gi[m] += sA * dRa * Rb * Rc
                        gk[m] += sA * Ra * dRb * Rc
                        gj[m] += sA * Ra * Rb * dRc
                for m in range(M):
                    ca, cb = gc[m] / rab, gc[m] * cos
                    ia, kb = gi[m] / ra - cb / (ra * ra), gk[m] / rb - cb / (rb * rb)
                    jj = gj[m] / rjk if rjk > 0.0 else 0.0
                    gD[m, pa, 0] += ca * D[pb, 0] + ia * D[pa, 0] - jj * ex
                    gD[m, pa, 1] += ca * D[pb, 1] + ia * D[pa, 1] - jj * ey
                    gD[m, pa, 2] += ca * D[pb, 2] + ia * D[pa, 2] - jj * ez
                    gD[m, pb, 0] += ca * D[pa, 0] + kb * D[pb, 0] + jj * ex
                    gD[m, pb, 1] += ca * D[pa, 1] + kb * D[pb, 1] + jj * ey
                    gD[m, pb, 2] += ca * D[pa, 2] + kb * D[pb, 2] + jj * ez
