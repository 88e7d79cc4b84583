"""n2p2 symmetry functions and their gradients (the hot path).

:class:`SFEngine` is the interface used by the member (``prepare``,
``values``, ``gradients``).  By default (``kernel="auto"``, or the
``COMMITTEE_CALC_N2P2_KERNEL`` environment variable) it delegates to the
compiled numba kernels of :mod:`.fast` / :mod:`.kernels` (analytic
derivatives, ~10x faster); when numba is not installed, or with
``kernel="torch"``, it uses the PyTorch autograd implementation below.
Both give the same numbers to round-off (``tests/test_n2p2_kernels.py``).

The autograd implementation:

Work is organised in *families*: all SFs of one central element and one
neighbour element (radial) or one unordered neighbour-element pair (angular).
Neighbour pairs and triplets are flat index arrays; a family's SFs are
evaluated as one (n_pairs or n_triplets, n_sf) matrix from a few unique
parameter combinations, then summed onto the central atoms with
``index_add``.  There is no Python loop over atoms.

Two passes: :meth:`SFEngine.values` computes the raw SFs G (no autograd);
:meth:`SFEngine.gradients` recomputes them block by block with autograd on
the pair vectors D and contracts with dE/dG, giving dE/dD (n_pairs, 3) for
each set of dE/dG at once (one backward per committee member, one forward
shared).  Memory stays bounded by the block size, and forces/virials follow
from dE/dD, including periodic self-images.

Cost: O(N · n_neigh) pairs plus O(N · n_neigh²/2) triplets, linear in N at
fixed density.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from ...errors import ConfigError
from .symfuncs import ANGULAR_TYPES, compact_fn, cutoff_fn

#: ``auto`` = compiled numba kernels when numba imports, else PyTorch autograd
KERNELS = ("auto", "numba", "torch")

#: triplets per autograd block (bounds memory: ~ block × n_sf × 8 bytes × a few)
TRIPLET_BLOCK = 400_000


class _Family:
    """SFs of one (central element, neighbour element(s)) combination."""

    def __init__(self, c, sfs, cols, cl):
        self.c = c
        self.types = tuple(sorted({sf.type for sf in sfs}))
        self.cols = torch.as_tensor(cols, dtype=torch.long)
        self.sfs = sfs
        self.ct, self.alpha = sfs[0].cutoff_type, sfs[0].cutoff_alpha
        self.rc = np.array([sf.rc * cl for sf in sfs])
        self.eta = np.array([sf.eta / cl ** 2 for sf in sfs])
        self.rs = np.array([sf.rs * cl for sf in sfs])
        self.rl = np.array([sf.rl * cl for sf in sfs])
        self.rc_max = float(self.rc.max())


def _unique(rows):
    """Unique tuples and, for each row, the index of its unique tuple."""
    uniq, idx = {}, []
    for r in rows:
        idx.append(uniq.setdefault(r, len(uniq)))
    return list(uniq), idx


class SFEngine:
    """Symmetry functions of one n2p2 model (shared by members with equal SFs)."""

    def __init__(self, model, kernel: str | None = None):
        kernel = kernel or os.environ.get("COMMITTEE_CALC_N2P2_KERNEL", "auto")
        if kernel not in KERNELS:
            raise ConfigError(f"unknown n2p2 kernel {kernel!r}; use one of {KERNELS}")
        self.fast = None
        if kernel != "torch":
            try:
                from .fast import FastSF
            except ImportError as exc:  # numba missing: autograd path
                if kernel == "numba":
                    raise ConfigError(f"the numba n2p2 kernel needs numba: {exc}") from exc
            else:
                self.fast = FastSF(model)
        self.kernel = "numba" if self.fast is not None else "torch"
        self.elements = model.elements
        self.nel = len(model.elements)
        self.cl = model.conv_length
        self.nsf = [len(model.symfuncs[e]) for e in self.elements]
        self.radial, self.angular = {}, {}
        for c, el in enumerate(self.elements):
            groups = {}
            for col, sf in enumerate(model.symfuncs[el]):
                ang = sf.type in ANGULAR_TYPES
                key = (ang, c, sf.i1, sf.i2 if ang else -1, sf.type)
                groups.setdefault(key, ([], []))
                groups[key][0].append(sf)
                groups[key][1].append(col)
            for (ang, _c, i1, i2, _t), (sfs, cols) in groups.items():
                fam = _Family(c, sfs, cols, self.cl)
                (self.angular.setdefault((c, i1, i2), []) if ang
                 else self.radial.setdefault((c, i1), [])).append(fam)
        allrc = [f.rc_max for fl in self.radial.values() for f in fl]
        angrc = [f.rc_max for fl in self.angular.values() for f in fl]
        self.rc_ang = max(angrc) if angrc else 0.0          # internal units
        self.cutoff = max(allrc + angrc) / self.cl          # model units

    # ------------------------------------------------------------ terms
    def _radial_terms(self, fam, r):
        cols = []
        if fam.types == (2,):
            uniq, idx = _unique(list(fam.rc))
            fcs = [cutoff_fn(r, rc, fam.ct, fam.alpha) * (r < rc) for rc in uniq]
            eta = torch.as_tensor(fam.eta)
            rs = torch.as_tensor(fam.rs)
            ex = torch.exp(-eta * (r[:, None] - rs) ** 2)
            fc = torch.stack([fcs[u] for u in idx], 1)
            return ex * fc
        for s, sf in enumerate(fam.sfs):  # type 20
            m = (r > fam.rl[s]) & (r < fam.rc[s])
            cols.append(compact_fn(r, fam.rl[s], fam.rc[s], sf.subtype) * m)
        return torch.stack(cols, 1)

    def _angular_terms(self, fam, rij, rik, rjk, cos):
        t = fam.types[0]
        if t in (3, 9):
            narrow = t == 3
            urc, irc = _unique(list(fam.rc))
            fcp = []
            for rc in urc:
                m = (rij < rc) & (rik < rc)
                f = cutoff_fn(rij, rc, fam.ct, fam.alpha) * cutoff_fn(rik, rc, fam.ct, fam.alpha)
                if narrow:
                    m = m & (rjk < rc)
                    f = f * cutoff_fn(rjk, rc, fam.ct, fam.alpha)
                fcp.append(f * m)
            uer, ier = _unique([(fam.eta[s], fam.rs[s], irc[s]) for s in range(len(fam.sfs))])
            ex = []
            for eta, rs, u in uer:
                q = (rij - rs) ** 2 + (rik - rs) ** 2
                if narrow:
                    q = q + (rjk - rs) ** 2
                ex.append(torch.exp(-eta * q) * fcp[u])
            ulz, ilz = _unique([(sf.lam, sf.zeta) for sf in fam.sfs])
            ang = []
            for lam, zeta in ulz:
                pl = 1.0 + lam * cos
                pos = pl > 0.0
                ang.append(torch.where(pos, torch.where(pos, pl, torch.ones_like(pl)) ** zeta,
                                       torch.zeros_like(pl)) * 2.0 ** (1.0 - zeta))
            return torch.stack([ang[ilz[s]] * ex[ier[s]] for s in range(len(fam.sfs))], 1)
        # type 22: compact radial × compact angular
        ur, ir = _unique([(fam.rl[s], fam.rc[s], sf.subtype) for s, sf in enumerate(fam.sfs)])
        rad = []
        for rl, rc, sub in ur:
            m = (rij > rl) & (rij < rc) & (rik > rl) & (rik < rc)
            rad.append(compact_fn(rij, rl, rc, sub) * compact_fn(rik, rl, rc, sub) * m)
        valid = (cos > -1.0) & (cos < 1.0)
        theta = torch.acos(torch.where(valid, cos, torch.zeros_like(cos)))
        ua, ia = _unique([(sf.angle_left, sf.angle_right, sf.subtype[:2]) for sf in fam.sfs])
        ang = []
        for al, ar, sub in ua:
            lo, hi = math.radians(al), math.radians(ar)
            m = valid & (theta >= lo) & (theta <= hi)
            ang.append(compact_fn(theta, lo, hi, sub, asymmetric_allowed=False) * m)
        return torch.stack([rad[ir[s]] * ang[ia[s]] for s in range(len(fam.sfs))], 1)

    # ------------------------------------------------------------ geometry
    def prepare(self, species, i, j, D):
        """Sort pairs by centre and plan the angular blocks.

        species: (N,) element index per atom; i, j: (P,) pair indices; D: (P, 3)
        vectors r_j + shift - r_i in the model's length unit.
        """
        if self.fast is not None:
            return self.fast.prepare(species, i, j, D)
        order = np.argsort(i, kind="stable")
        i, j, D = i[order], j[order], np.ascontiguousarray(D[order], dtype=float)
        r = np.sqrt((D * D).sum(1)) * self.cl
        geo = {"species": species, "i": i, "j": j, "D": D, "r": r, "n": len(species)}
        geo["local"] = np.zeros(len(species), dtype=np.int64)
        for c in range(self.nel):
            sel = species == c
            geo["local"][sel] = np.arange(sel.sum())
        if self.angular:
            a = np.nonzero(r < self.rc_ang)[0]
            cnt = np.bincount(i[a], minlength=len(species))
            ntrip = cnt * (cnt - 1) // 2
            cum = np.cumsum(ntrip)
            edges = np.searchsorted(cum, np.arange(TRIPLET_BLOCK, cum[-1] + TRIPLET_BLOCK,
                                                   TRIPLET_BLOCK), side="right") if cum[-1] else []
            bounds = np.unique(np.concatenate([[0], np.minimum(edges, len(species)), [len(species)]]))
            geo["angular_pairs"] = a
            geo["blocks"] = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        return geo

    def _triplets(self, geo, lo, hi):
        a = geo["angular_pairs"]
        ia = geo["i"][a]
        sel = a[(ia >= lo) & (ia < hi)]
        if len(sel) < 2:
            return sel, None
        ic = geo["i"][sel]
        end = np.searchsorted(ic, ic, side="right")
        nk = end - np.arange(len(sel)) - 1
        tj = np.repeat(np.arange(len(sel)), nk)
        if len(tj) == 0:
            return sel, None
        start = np.repeat(np.cumsum(nk) - nk, nk)
        tk = tj + 1 + (np.arange(len(tj)) - start)
        sp = geo["species"]
        c = sp[ic[tj]]
        sj, sk = sp[geo["j"][sel[tj]]], sp[geo["j"][sel[tk]]]
        fam = (c * self.nel + np.minimum(sj, sk)) * self.nel + np.maximum(sj, sk)
        order = np.argsort(fam, kind="stable")
        fam, tj, tk = fam[order], tj[order], tk[order]
        out = []
        for (c_, e1, e2), fams in self.angular.items():
            key = (c_ * self.nel + e1) * self.nel + e2
            s0, s1 = np.searchsorted(fam, key), np.searchsorted(fam, key, side="right")
            if s1 > s0:
                out.append((fams, tj[s0:s1], tk[s0:s1], geo["local"][ic[tj[s0:s1]]]))
        return sel, out

    # ------------------------------------------------------------ passes
    def _iterate(self, geo, grad):
        """Yield (pair indices, leaf D tensor, [(family, centre locals, terms)])."""
        sp, i, j = geo["species"], geo["i"], geo["j"]
        for (c, e1), fams in self.radial.items():
            rcm = max(f.rc_max for f in fams)
            sel = np.nonzero((sp[i] == c) & (sp[j] == e1) & (geo["r"] < rcm))[0]
            if len(sel) == 0:
                continue
            leaf = torch.from_numpy(geo["D"][sel]).requires_grad_(grad)
            r = torch.linalg.vector_norm(leaf, dim=1) * self.cl
            loc = torch.from_numpy(geo["local"][i[sel]])
            yield sel, leaf, [(f, loc, self._radial_terms(f, r)) for f in fams]
        for lo, hi in geo.get("blocks", []):
            sel, trip = self._triplets(geo, lo, hi)
            if not trip:
                continue
            leaf = torch.from_numpy(geo["D"][sel]).requires_grad_(grad)
            Dl = leaf * self.cl
            rl = torch.linalg.vector_norm(Dl, dim=1)
            items = []
            for fams, tj, tk, loc in trip:
                tj_t, tk_t = torch.from_numpy(tj), torch.from_numpy(tk)
                dij, dik = Dl[tj_t], Dl[tk_t]
                rij, rik = rl[tj_t], rl[tk_t]
                rjk = torch.linalg.vector_norm(dik - dij, dim=1)
                cos = (dij * dik).sum(1) / (rij * rik)
                loc_t = torch.from_numpy(loc)
                for f in fams:
                    items.append((f, loc_t, self._angular_terms(f, rij, rik, rjk, cos)))
            yield sel, leaf, items

    def values(self, geo) -> list:
        """Raw SFs per element: list of (n_e, nsf_e) float64 tensors (Z order)."""
        if self.fast is not None:
            return self.fast.values(geo)
        sp = geo["species"]
        G = [torch.zeros(int((sp == c).sum()), self.nsf[c], dtype=torch.float64)
             for c in range(self.nel)]
        with torch.no_grad():
            for _, _, items in self._iterate(geo, grad=False):
                for f, loc, term in items:
                    acc = torch.zeros(G[f.c].shape[0], len(f.cols), dtype=torch.float64)
                    acc.index_add_(0, loc, term)
                    G[f.c][:, f.cols] += acc
        return G

    def gradients(self, geo, dEdG: list) -> list:
        """dE/dD (n_pairs, 3) for each entry of ``dEdG`` (list of per-element (n_e, nsf_e))."""
        if self.fast is not None:
            return self.fast.gradients(geo, dEdG)
        out = [np.zeros_like(geo["D"]) for _ in dEdG]
        for sel, leaf, items in self._iterate(geo, grad=True):
            for m, V in enumerate(dEdG):
                L = sum((term * V[f.c][:, f.cols][loc]).sum() for f, loc, term in items)
                (g,) = torch.autograd.grad(L, leaf, retain_graph=m < len(dEdG) - 1)
                out[m][sel] += g.numpy()
        return out
