"""Compiled evaluation of n2p2 symmetry functions: tables for :mod:`.kernels`.

:class:`FastSF` turns a model's symmetry functions into flat parameter tables
(internal length units) once, then evaluates raw SFs and dE/dD with the numba
kernels: one pass for the values, one pass for the gradients of all committee
members at once (the dE/dG of every member are contracted inside the triplet
loop, so the geometry is computed twice per structure, not once per member).
Needs ``numba``; :class:`~.descriptors.SFEngine` falls back to its PyTorch
autograd path when numba is not installed.

Scaling: neighbour pairs O(N n_neigh), triplets O(N n_neigh^2 / 2), i.e.
linear in the number of atoms N at fixed density; memory O(M P) for the
gradients of M members over P pairs (no per-triplet storage).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import kernels
from .symfuncs import ANGULAR_TYPES


class _Table:
    """Unique rows (tuples) with stable ids."""

    def __init__(self):
        self.rows, self.ids = [], {}

    def add(self, row) -> int:
        if row not in self.ids:
            self.ids[row] = len(self.rows)
            self.rows.append(row)
        return self.ids[row]


def _radial_terms(slots, rows):
    """Kernel arrays (kind, float params, int params) of radial-term rows."""
    n = max(len(rows), 1)
    kind, p, ints = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3), np.int64)
    for t, row in enumerate(rows):
        if row[0] == 0:                         # (0, eta, rs, rc)
            kind[t], p[t] = 0, row[1:4]
            ints[t, 0] = slots.index(row[3])
        else:                                   # (1, rl, rc, order, asym)
            kind[t], p[t, :2] = 1, row[1:3]
            ints[t, 1:] = row[3:5]
    return kind, p, ints


class FastSF:
    """Raw SFs and dE/dD of one model through the compiled kernels."""

    def __init__(self, model):
        cl = model.conv_length
        self.cl = cl
        self.nel = nel = len(model.elements)
        self.nsf = [len(model.symfuncs[e]) for e in model.elements]
        self.ctype, self.alpha = int(model.cutoff_type), float(model.cutoff_alpha)
        rad_rt, ang_rt, ang_at = _Table(), _Table(), _Table()
        rad = {}                                  # (c, e) -> [(col, rt)]
        ang = {}                                  # (c, e1, e2) -> {(rt, jk): [(col, at)]}
        slots = set()
        for c, el in enumerate(model.elements):
            for col, sf in enumerate(model.symfuncs[el]):
                if sf.type in (2, 3, 9):
                    rt = (0, sf.eta / cl ** 2, sf.rs * cl, sf.rc * cl)
                    slots.add(sf.rc * cl)
                else:
                    rt = (1, sf.rl * cl, sf.rc * cl, int(sf.subtype[1]),
                          int(sf.subtype.endswith("a")))
                if sf.type not in ANGULAR_TYPES:
                    rad.setdefault((c, sf.i1), []).append((col, rad_rt.add(rt)))
                    continue
                if sf.type == 22:
                    at = (1, math.radians(sf.angle_left), math.radians(sf.angle_right),
                          int(sf.subtype[1]))
                else:
                    at = (0, sf.lam, sf.zeta, 2.0 ** (1.0 - sf.zeta))
                eg = (ang_rt.add(rt), sf.type == 3)
                fam = ang.setdefault((c, sf.i1, sf.i2), {})
                fam.setdefault(eg, []).append((col, ang_at.add(at)))
        self.slot_rc = np.array(sorted(slots) or [1.0])
        slots = list(self.slot_rc)
        self.rad_rt = _radial_terms(slots, rad_rt.rows)
        self.ang_rt = _radial_terms(slots, ang_rt.rows)
        n = max(len(ang_at.rows), 1)
        kind, p, ints = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 2), np.int64)
        for a, row in enumerate(ang_at.rows):
            kind[a] = row[0]
            if row[0] == 0:
                p[a] = row[1:4]
                z = row[2]
                ints[a, 0] = int(z) if float(z).is_integer() and z <= 64 else 0
            else:
                p[a, :2] = row[1:3]
                ints[a, 1] = row[3]
        self.ang_at = (kind, p, ints)

        # radial families: (c, e) -> CSR over (col, rt)
        self.rfam = np.full((nel, nel), -1, np.int64)
        cols, rts, start = [], [], [0]
        rc_rad = 0.0
        for f, ((c, e), sfs) in enumerate(rad.items()):
            self.rfam[c, e] = f
            for col, rt in sfs:
                cols.append(col)
                rts.append(rt)
                rc_rad = max(rc_rad, rad_rt.rows[rt][3 if rad_rt.rows[rt][0] == 0 else 2])
            start.append(len(cols))
        self.r_start = np.array(start, np.int64)
        self.r_col, self.r_rt = np.array(cols, np.int64), np.array(rts, np.int64)
        self.rc_rad = rc_rad

        # angular families: (c, e1, e2) -> egroups (rt, jk) -> SFs (col, local angular term)
        self.afam = np.full((nel, nel, nel), -1, np.int64)
        f_rmax, f_jkmax, f_at, at_ids, f_eg = [], [], [0], [], [0]
        eg_rt, eg_jk, eg_sf, sf_col, sf_aloc = [], [], [0], [], []
        for f, ((c, e1, e2), groups) in enumerate(ang.items()):
            self.afam[c, e1, e2] = f
            local = {}
            rcs = []
            for (rt, jk), sfs in groups.items():
                row = ang_rt.rows[rt]
                rcs.append(row[3] if row[0] == 0 else row[2])
                eg_rt.append(rt)
                eg_jk.append(jk)
                for col, at in sfs:
                    sf_col.append(col)
                    sf_aloc.append(local.setdefault(at, len(local)))
                eg_sf.append(len(sf_col))
            f_eg.append(len(eg_rt))
            at_ids.extend(local)
            f_at.append(len(at_ids))
            f_rmax.append(max(rcs))
            alljk = all(jk for _, jk in groups)
            f_jkmax.append(max(rcs) if alljk else np.inf)
        self.a_tab = tuple(np.array(x, dt) for x, dt in (
            (f_rmax, float), (f_jkmax, float), (f_at, np.int64), (at_ids, np.int64),
            (f_eg, np.int64), (eg_rt, np.int64), (eg_jk, np.bool_), (eg_sf, np.int64),
            (sf_col, np.int64), (sf_aloc, np.int64)))
        self.rc_ang = max(f_rmax) if f_rmax else 0.0

    # ------------------------------------------------------------------
    def prepare(self, species, i, j, D):
        """Sort pairs by centre; index the radial and angular pair subsets."""
        if len(i) > 1 and np.any(i[1:] < i[:-1]):
            order = np.argsort(i, kind="stable")
            i, j, D = i[order], j[order], D[order]
        i, j = np.ascontiguousarray(i, np.int64), np.ascontiguousarray(j, np.int64)
        D = np.ascontiguousarray(D, dtype=float)
        Dl = D * self.cl
        r = np.sqrt(np.einsum("ij,ij->i", Dl, Dl))
        n = len(species)
        geo = {"species": np.ascontiguousarray(species, np.int64), "i": i, "j": j, "D": D, "n": n}
        for name, rc in (("rad", self.rc_rad), ("ang", self.rc_ang)):
            inside = r < rc
            if inside.all():        # usual case: the neighbour list used the largest cutoff
                geo[name] = (None, np.searchsorted(i, np.arange(n + 1)), j, Dl, r)
                continue
            sel = np.nonzero(inside)[0]
            geo[name] = (sel, np.searchsorted(i[sel], np.arange(n + 1)),
                         np.ascontiguousarray(j[sel]), np.ascontiguousarray(Dl[sel]),
                         np.ascontiguousarray(r[sel]))
        return geo

    def _run(self, geo, V):
        """Raw SFs (N, nsf_max) and dE/dD (M, P, 3) in model length units."""
        n, sp = geo["n"], geo["species"]
        M = V.shape[0]
        G = np.zeros((n, max(self.nsf)))
        gD = np.zeros((M, len(geo["i"]), 3))
        common = (self.slot_rc, self.ctype, self.alpha)
        if len(self.r_col):
            sel, start, j, D, r = geo["rad"]
            g = gD if sel is None else np.zeros((M, len(sel), 3))
            kernels.radial_kernel(start, j, sp, D, r, *common, *self.rad_rt, self.rfam,
                                  self.r_start, self.r_col, self.r_rt, V, G, g)
            if sel is not None:
                gD[:, sel] += g
        if self.rc_ang > 0:
            sel, start, j, D, r = geo["ang"]
            g = gD if sel is None else np.zeros((M, len(sel), 3))
            kernels.angular_kernel(start, j, sp, D, r, *common, *self.ang_rt, *self.ang_at,
                                   self.afam, *self.a_tab, V, G, g)
            if sel is not None:
                gD[:, sel] += g
        gD *= self.cl
        return G, gD

    def values(self, geo) -> list:
        """Raw SFs per element: list of (n_e, nsf_e) float64 tensors (Z order)."""
        G, _ = self._run(geo, np.zeros((0, geo["n"], max(self.nsf))))
        sp = geo["species"]
        return [torch.from_numpy(np.ascontiguousarray(G[sp == c, :self.nsf[c]]))
                for c in range(self.nel)]

    def gradients(self, geo, dEdG: list) -> list:
        """dE/dD (n_pairs, 3) for each entry of ``dEdG`` (list of per-element (n_e, nsf_e))."""
        sp = geo["species"]
        V = np.zeros((len(dEdG), geo["n"], max(self.nsf)))
        for m, per_el in enumerate(dEdG):
            for c, g in enumerate(per_el):
                V[m, sp == c, :self.nsf[c]] = np.asarray(torch.as_tensor(g).detach(), dtype=float)
        _, gD = self._run(geo, V)
        return list(gD)
