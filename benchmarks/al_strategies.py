"""Active-learning strategy benchmark on a small water CSP landscape (paper Tables 1-2 form).

Landscape (made here; every stage cached in ``benchmarks/out/``):

1. *Candidates*: random water packings in P1 (Z=2, Z'=2), P-1 (Z=2),
   P2_1/c (Z=4) and P2_12_12_1 (Z=4): one molecule (random orientation,
   general position) copied by the space group's symmetry operations into a
   random cell of the right crystal system at a loose density of
   0.55-0.85 g/cm³; rejected if any intermolecular H…O < 1.7 Å or O…O < 2.5 Å.
2. *Baseline relaxation* (the "force-field CSP search"): :class:`WaterFF`, a
   flexible TIP3P-like water (TIP3P charges, O LJ; CHARMM H LJ; SPC/Fw bond
   and angle force constants around the gas-phase geometry of
   ``ase.build.molecule('H2O')``; intermolecular Coulomb by damped shifted
   force, α = 0.2 Å⁻¹, r_c = 9 Å), positions + cell by FIRE on ASE's
   FrechetCellFilter, fmax 0.05 eV/Å, at most ``--relax-steps`` steps
   (``committee_calc.active.baseline.relax_with_baseline``).  Baseline energy and
   forces are recorded at the relaxed geometry (``relax_water.extxyz``).
3. *Deduplication* of near-identical minima
   (``committee_calc.analysis.landscape.deduplicate_minima``: ΔE ≤ 0.1 kJ/mol/molecule,
   Δρ ≤ 1 %, relative SOAP distance ≤ 1 %), after dropping relaxations that
   broke molecules or collapsed.
4. *Reference labels*: GFN2-xTB (tblite) energies + forces on a random subset
   of ``--n-label`` unique minima, each on the smallest supercell whose
   perpendicular widths are all ≥ ``--ref-min-width`` Å (tblite samples the
   Γ-point only: on the 2-4 Å thin cells the relaxation produces, the
   primitive-cell energy is off by up to ~450 kJ/mol/molecule; at 5 Å it is
   within ~1-8 kJ/mol/molecule of a ≥ 9 Å supercell on the structures
   checked) (``water_csp_landscape.extxyz``).

Committee: ridge resampling committee of pair-basis potentials
(``committee_calc.train.ridge``), M members.  5-fold cross-validation:
the held-out fold is the test set, the other four are the pool.  Per fold,
quantity (E, E+F, dE, dE+dF) × strategy (random, highest_uncertainty,
highest_uncertainty_fps, expected_improvement, energy_force_dbscan) × M:
initial FPS batch of 10 seeded by the lowest-baseline structure, batches of
10, threshold σ > ``--threshold-kjmol`` per molecule, stop when ≤ 5 % of the
unlabelled pool is above the threshold or at ``--max-train`` labels.  EI:
Kriging-believer batches on a ridge-RS surrogate over SOAP (M members) of the
reference energy per molecule, energy window ``--ei-window-kjmol``.
energy_force_dbscan: score low predicted energy + high force σ among σ > the
threshold, one pick per DBSCAN cluster of SOAP rows.  Reported: test MAE/RMSE
(kJ/mol per molecule) at the stop, final training-set size, labels to reach
a test-MAE target (mean ± std over folds); learning curves in
``al_strategies_curves.json`` / ``al_strategies_curves.png``.

    python benchmarks/al_strategies.py            # build/cached landscape + CV grid + table + check
    python benchmarks/al_strategies.py --check    # only evaluate the paper's findings on stored curves
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.calculator import Calculator, all_changes  # noqa: E402
from ase.geometry import cellpar_to_cell, find_mic  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.neighborlist import neighbor_list  # noqa: E402
from scipy.special import erfc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ase import units as ase_units  # noqa: E402

from committee_calc.active.baseline import relax_with_baseline  # noqa: E402
from committee_calc.analysis import select as sel  # noqa: E402
from committee_calc.analysis.landscape import deduplicate_minima  # noqa: E402
from committee_calc.descriptors import standardise, structure_descriptors  # noqa: E402
from committee_calc.structures import cell_widths, density_gcm3  # noqa: E402
from committee_calc.train.ridge import PairRidgeCommittee  # noqa: E402
from committee_calc.units import AMU_PER_A3_TO_GCM3, KCALMOL, KJMOL  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
MASS_H2O = 18.015
COULOMB = ase_units.Hartree * ase_units.Bohr       # e²/(4πε₀) in eV Å
QUANTITIES = ("E", "E+F", "dE", "dE+dF")
STRATEGIES = ("random", "highest_uncertainty", "highest_uncertainty_fps", "expected_improvement",
              "energy_force_dbscan")


# ---------------------------------------------------------------------------- baseline force field
class WaterFF(Calculator):
    """Flexible TIP3P-like water; atoms ordered (O, H, H) per molecule.

    E = Σ_mol [k_b/2 Σ (r_OH − r0)² + k_θ/2 (θ − θ0)²]
        + ½ Σ_{i,j in different molecules or images} [LJ_ij(r) + q_i q_j DSF(r)],  r < r_c.
    Energies eV, forces eV/Å, stress eV/Å³ (ASE sign convention).
    """

    implemented_properties = ["energy", "forces", "stress"]
    q = {"O": -0.834, "H": 0.417}
    lj = {"O": (3.15061, 0.1521 * KCALMOL), "H": (0.4, 0.046 * KCALMOL)}   # σ Å, ε eV

    def __init__(self, r_cut=9.0, alpha=0.2, **kw):
        super().__init__(**kw)
        ref = molecule("H2O")
        self.r0 = float(np.linalg.norm(ref.positions[1] - ref.positions[0]))
        self.theta0 = float(np.radians(ref.get_angle(1, 0, 2)))
        self.kb, self.kt = 1059.162 * KCALMOL, 75.90 * KCALMOL            # eV/Å², eV/rad²
        self.rc, self.a = float(r_cut), float(alpha)

    def _dsf(self, r):
        a, rc = self.a, self.rc
        c = erfc(a * rc) / rc ** 2 + 2 * a / np.sqrt(np.pi) * np.exp(-(a * rc) ** 2) / rc
        e = erfc(a * r) / r - erfc(a * rc) / rc + c * (r - rc)
        de = -(erfc(a * r) / r ** 2 + 2 * a / np.sqrt(np.pi) * np.exp(-(a * r) ** 2) / r) + c
        return e, de

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        at = self.atoms
        sym = np.array(at.get_chemical_symbols())
        n = len(at)
        if n % 3 or not all(sym[0::3] == "O") or not all(sym[1::3] == "H") or not all(sym[2::3] == "H"):
            raise ValueError("WaterFF needs atoms ordered O,H,H per molecule")
        mol = np.arange(n) // 3
        F = np.zeros((n, 3))
        W = np.zeros((3, 3))       # Σ dE/dε contributions (virial, eV)
        E = 0.0
        # intramolecular
        P = at.positions
        u, _ = find_mic(P[1::3] - P[0::3], at.cell, at.pbc)
        v, _ = find_mic(P[2::3] - P[0::3], at.cell, at.pbc)
        ru, rv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
        cos = np.clip(np.einsum("ij,ij->i", u, v) / (ru * rv), -1, 1)
        th = np.arccos(cos)
        sin = np.maximum(np.sin(th), 1e-8)
        E += (0.5 * self.kb * np.sum((ru - self.r0) ** 2 + (rv - self.r0) ** 2)
              + 0.5 * self.kt * np.sum((th - self.theta0) ** 2))
        dth = (self.kt * (th - self.theta0))[:, None]
        gu = ((self.kb * (ru - self.r0) / ru)[:, None] * u
              - dth / sin[:, None] * (v / (ru * rv)[:, None] - cos[:, None] * u / (ru ** 2)[:, None]))
        gv = ((self.kb * (rv - self.r0) / rv)[:, None] * v
              - dth / sin[:, None] * (u / (ru * rv)[:, None] - cos[:, None] * v / (rv ** 2)[:, None]))
        F[1::3] -= gu
        F[2::3] -= gv
        F[0::3] += gu + gv
        W += u.T @ gu + v.T @ gv
        # intermolecular pairs (each ordered pair once -> factor ½ on energy/virial)
        i, j, d, D, S = neighbor_list("ijdDS", at, self.rc)
        keep = ~((mol[i] == mol[j]) & ~S.any(1))
        i, j, d, D = i[keep], j[keep], d[keep], D[keep]
        qi = np.array([self.q[s] for s in sym])
        sig = np.array([self.lj[s][0] for s in sym])
        eps = np.array([self.lj[s][1] for s in sym])
        s_ij, e_ij = 0.5 * (sig[i] + sig[j]), np.sqrt(eps[i] * eps[j])
        x6 = (s_ij / d) ** 6
        xc6 = (s_ij / self.rc) ** 6
        elj = 4 * e_ij * (x6 * x6 - x6) - 4 * e_ij * (xc6 * xc6 - xc6)
        delj = 4 * e_ij * (-12 * x6 * x6 + 6 * x6) / d
        ec, dec = self._dsf(d)
        qq = COULOMB * qi[i] * qi[j]
        E += 0.5 * np.sum(elj + qq * ec)
        dU = delj + qq * dec                      # dU/dr
        fi = (dU / d)[:, None] * D                # force on i from the pair: +dU/dr · D/r
        np.add.at(F, i, fi)
        W += 0.5 * (D * (dU / d)[:, None]).T @ D
        self.results["energy"] = float(E)
        self.results["free_energy"] = float(E)
        self.results["forces"] = F
        Wsym = 0.5 * (W + W.T) / at.get_volume()
        self.results["stress"] = Wsym.flat[[0, 4, 8, 5, 2, 1]]


# ---------------------------------------------------------------------------- candidate packings
def _ops(sg):
    one = np.eye(3)
    d = np.diag
    return {"P1": [(one, (0, 0, 0))],
            "P-1": [(one, (0, 0, 0)), (-one, (0, 0, 0))],
            "P21/c": [(one, (0, 0, 0)), (d([-1, 1, -1]), (0, .5, .5)), (-one, (0, 0, 0)), (d([1, -1, 1]), (0, .5, .5))],
            "P212121": [(one, (0, 0, 0)), (d([-1, -1, 1]), (.5, 0, .5)), (d([-1, 1, -1]), (0, .5, .5)),
                        (d([1, -1, -1]), (.5, .5, 0))]}[sg]


SPACE_GROUPS = {"P1": 2, "P-1": 2, "P21/c": 4, "P212121": 4}   # space group -> Z


def _mol_ids_ok(atoms, min_hx=1.7, min_oo=2.5):
    mol = np.arange(len(atoms)) // 3
    i, j, d, S = neighbor_list("ijdS", atoms, 3.0)
    inter = ~((mol[i] == mol[j]) & ~S.any(1))
    sym = np.array(atoms.get_chemical_symbols())
    oo = inter & (sym[i] == "O") & (sym[j] == "O")
    return not (np.any(d[inter] < min_hx) or np.any(d[oo] < min_oo))


def random_packing(rng, sg, tries=2000):
    """One random packing of water in space group ``sg`` (see module doc)."""
    Z = SPACE_GROUPS[sg]
    ops = _ops(sg)
    for _ in range(tries):
        rho = rng.uniform(0.55, 0.85)
        vol = Z * MASS_H2O * AMU_PER_A3_TO_GCM3 / rho
        lengths = rng.uniform(0.75, 1.3, 3)
        if sg in ("P1", "P-1"):
            ang = rng.uniform(70, 110, 3)
        elif sg == "P21/c":
            ang = np.array([90.0, rng.uniform(90, 120), 90.0])
        else:
            ang = np.array([90.0, 90.0, 90.0])
        cell = cellpar_to_cell(np.concatenate([lengths, ang]))
        if not abs(np.linalg.det(cell)) > 0.3 * np.prod(lengths):
            continue
        cell *= (vol / abs(np.linalg.det(cell))) ** (1 / 3)
        inv = np.linalg.inv(cell)
        m = molecule("H2O")
        m.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        m.translate(rng.random(3) @ cell - m.get_center_of_mass())
        frac = m.positions @ inv
        a = Atoms(cell=cell, pbc=True)
        if sg == "P1":    # Z' = 2: a second independent molecule
            m2 = molecule("H2O")
            m2.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
            m2.translate(rng.random(3) @ cell - m2.get_center_of_mass())
            images = [frac, m2.positions @ inv]
        else:
            images = [frac @ R.T + np.asarray(t) for R, t in ops]
        for f in images:
            a += Atoms("OH2", positions=f @ cell)
        if _mol_ids_ok(a):
            a.info.update(space_group=sg, n_molecules=Z)
            return a
    raise RuntimeError(f"no packing found for {sg} in {tries} tries")


def molecules_intact(atoms, max_oh=1.25, min_inter=1.35):
    """Every O keeps its two H (mic distance ≤ max_oh), no intermolecular contact < min_inter Å."""
    P = atoms.positions
    for k in (1, 2):
        v, _ = find_mic(P[k::3] - P[0::3], atoms.cell, atoms.pbc)
        if np.linalg.norm(v, axis=1).max() > max_oh:
            return False
    return _mol_ids_ok(atoms, min_hx=min_inter, min_oo=2.2)


# ---------------------------------------------------------------------------- landscape pipeline (cached)
def _append(path, atoms):
    write(path, atoms, append=True, format="extxyz")


def reference_supercell(atoms, min_width):
    """Repeats (3,) so that every perpendicular width of the supercell is ≥ ``min_width`` Å."""
    widths = cell_widths(atoms.cell)
    return tuple(int(x) for x in np.maximum(1, np.ceil(min_width / widths)))


def build_landscape(n_candidates, relax_steps, n_label=150, ref_min_width=5.0, seed=0, log=print):
    """Candidates -> baseline relaxation -> dedup -> GFN2-xTB labels on a random subset of
    ``n_label`` unique minima, each computed on the smallest supercell whose perpendicular
    widths are all ≥ ``ref_min_width`` Å (tblite is Γ-point only: a 2-4 Å thin cell gives
    energies hundreds of kJ/mol/molecule off).  Every stage cached in OUT."""
    t0 = time.time()
    rpath = OUT / "relax_water.extxyz"
    relaxed = read(rpath, ":") if rpath.exists() else []
    rng = np.random.default_rng(seed)
    sgs = list(SPACE_GROUPS)
    cands = [random_packing(rng, sgs[k % len(sgs)]) for k in range(n_candidates)]
    for k in range(len(relaxed), n_candidates):
        r = relax_with_baseline(cands[k], WaterFF(), fmax=0.05, max_steps=relax_steps, optimizer="BFGS")
        r.info.update(cand_index=k, space_group=cands[k].info["space_group"], n_molecules=cands[k].info["n_molecules"])
        r.info["intact"] = bool(molecules_intact(r))
        _append(rpath, r)
        relaxed.append(r)
        if (k + 1) % 25 == 0:
            log(f"relaxed {k + 1}/{n_candidates} ({time.time() - t0:.0f} s)")
    relaxed = relaxed[:n_candidates]
    t_relax = time.time() - t0
    ok = [r for r in relaxed if r.info["intact"] and 0.3 < density_gcm3(r) < 2.5]
    e = np.array([r.info["baseline_energy"] / r.info["n_molecules"] for r in ok])
    X = structure_descriptors(ok, kind="soap")
    kept, dup = deduplicate_minima(e, X, densities=[density_gcm3(r) for r in ok], energy_tol_eV=0.1 * KJMOL,
                                   density_rel_tol=0.01, descriptor_tol=0.01)
    kept = sorted(kept, key=lambda i: ok[i].info["cand_index"])
    stats = {"candidates": len(relaxed), "broken_or_collapsed": len(relaxed) - len(ok), "duplicates": len(dup),
             "unique": len(kept), "relax_converged": int(sum(bool(r.info["relax_converged"]) for r in relaxed)),
             "relax_steps_mean": float(np.mean([r.info["relax_steps"] for r in relaxed]))}
    log(f"landscape: {stats}")
    lpath = OUT / "water_csp_landscape.extxyz"
    have = read(lpath, ":") if lpath.exists() else []
    done = {int(a.info["cand_index"]) for a in have}
    from tblite.ase import TBLite

    t1 = time.time()
    subset = [kept[k] for k in np.sort(np.random.default_rng(1).permutation(len(kept))[:n_label])]
    todo = [ok[i] for i in subset if int(ok[i].info["cand_index"]) not in done]
    for n, a in enumerate(todo):
        rep = reference_supercell(a, ref_min_width)
        b = a.repeat(rep)
        b.calc = TBLite(method="GFN2-xTB", verbosity=0)
        try:
            a.info["REF_energy"] = float(b.get_potential_energy()) / int(np.prod(rep))
            a.arrays["REF_forces"] = np.array(b.get_forces())[:len(a)]
            a.info["ref_supercell"] = " ".join(map(str, rep))
        except Exception as exc:  # SCF failure: skip the structure, say so
            log(f"GFN2-xTB failed on candidate {a.info['cand_index']}: {exc}")
            continue
        a.info["name"] = f"w{int(a.info['cand_index']):04d}"
        _append(lpath, a)
        have.append(a)
        if (n + 1) % 25 == 0:
            log(f"labelled {n + 1}/{len(todo)} ({time.time() - t1:.0f} s)")
    want = {int(ok[i].info["cand_index"]) for i in subset}
    structs = sorted([a for a in have if int(a.info["cand_index"]) in want], key=lambda a: a.info["cand_index"])
    stats.update(labelled=len(structs), t_relax_s=round(t_relax, 1), t_label_s=round(time.time() - t1, 1))
    return structs, stats


# ---------------------------------------------------------------------------- one active-learning run
def _nmol(structs, idx):
    return np.array([float(structs[i].info["n_molecules"]) for i in idx])


def fit_model(structs, delta, forces, idx, M, seed):
    E = [structs[i].info["REF_energy"] - (structs[i].info["baseline_energy"] if delta else 0.0) for i in idx]
    F = None
    if forces:
        F = [structs[i].arrays["REF_forces"] - (structs[i].arrays["baseline_forces"] if delta else 0.0) for i in idx]
    return PairRidgeCommittee(["H", "O"], n_members=M, seed=seed, r_cut=5.0, n_basis=12).fit(
        [structs[i] for i in idx], E, F)


def predict(model, structs, idx, delta, force_sigma=False):
    """Total energy per molecule [eV], calibrated σ per molecule [eV], and (optionally)
    the calibrated max-over-atoms force σ [eV/Å] (n,)."""
    P = np.array([[model.member_predict(k, structs[i], forces=False)["energy"] for i in idx]
                  for k in range(model.n_members)])
    base = np.array([structs[i].info["baseline_energy"] for i in idx]) if delta else 0.0
    nm = _nmol(structs, idx)
    mu, s = (P.mean(0) + base) / nm, P.std(0, ddof=1) * model.alpha / nm
    if not force_sigma:
        return mu, s, None
    fs = []
    for i in idx:
        Fk = np.array([model.member_predict(k, structs[i])["forces"] for k in range(model.n_members)])
        fs.append(float(np.sqrt(Fk.var(0, ddof=1).sum(1)).max()) * model.alpha)
    return mu, s, np.array(fs)


def _dbscan_pick(e, s, fs, Xc, n, thr):
    """energy_force_dbscan among σ > thr; DBSCAN eps starts at the library default (2 × median
    nearest-neighbour distance) and is halved (≤ 6 times) until the batch can be filled."""
    from scipy.spatial import cKDTree

    above = np.flatnonzero(s > thr)
    if above.size == 0:
        return []
    Xa = Xc[above]
    eps = 2.0 * float(np.median(cKDTree(Xa).query(Xa, k=2)[0][:, 1])) if len(Xa) > 1 else 1.0
    for _ in range(7):
        sub = sel.energy_force_dbscan(e[above], fs[above], Xa, n, eps=max(eps, 1e-9))
        if len(sub) >= min(n, above.size):
            break
        eps *= 0.5
    return [int(above[k]) for k in sub]


def run_one(structs, X, pool, test, quantity, strategy, M, fold, cfg):
    """One AL run; returns the learning curve [(n_train, test MAE, test RMSE) kJ/mol/molecule] and stop reason."""
    delta, forces = quantity.startswith("d"), "F" in quantity
    thr, batch, max_n = cfg["threshold_kjmol"] * KJMOL, cfg["batch"], cfg["max_train"]
    base = np.array([structs[i].info["baseline_energy"] for i in pool]) / _nmol(structs, pool)
    lab = [int(pool[k]) for k in sel.farthest_point_sampling(X[pool], batch, start=int(np.argmin(base)))]
    ref_test = np.array([structs[i].info["REF_energy"] for i in test]) / _nmol(structs, test)
    ref_pool = {int(i): structs[i].info["REF_energy"] / structs[i].info["n_molecules"] for i in pool}
    pos = {int(p): k for k, p in enumerate(pool)}
    surrogate = (sel.ridge_rs_fit_predict(X[pool], n_members=M, seed=fold)
                 if strategy == "expected_improvement" else None)
    curve, stop = [], None
    while True:
        model = fit_model(structs, delta, forces, lab, M, fold)
        mu, _, _ = predict(model, structs, test, delta)
        err = (mu - ref_test) / KJMOL
        curve.append((len(lab), float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err ** 2)))))
        taken = set(lab)
        cand = np.array([i for i in pool if i not in taken])
        if cand.size == 0:
            stop = "pool_empty"
            break
        e, s, fs = predict(model, structs, cand, delta, force_sigma=strategy == "energy_force_dbscan")
        if np.mean(s > thr) <= cfg["target_fraction"]:
            stop = "converged"
            break
        if len(lab) >= max_n:
            stop = "max_train"
            break
        n = min(batch, max_n - len(lab))
        rng = np.random.default_rng([fold, len(lab)])
        if strategy == "random":
            loc = sel.random_above_threshold(s, n, thr, rng)
        elif strategy == "highest_uncertainty":
            loc = sel.highest_uncertainty(s, n, lower=thr)
        elif strategy == "highest_uncertainty_fps":
            loc = sel.highest_uncertainty_fps(s, X[cand], n, thr)
        elif strategy == "energy_force_dbscan":
            loc = _dbscan_pick(e, s, fs, X[cand], n, thr)
        else:
            picks = sel.kriging_believer(surrogate, [pos[i] for i in lab], [ref_pool[i] for i in lab], n,
                                         cfg["ei_window_kjmol"] * KJMOL)
            cpos = {int(c): k for k, c in enumerate(cand)}
            loc = [cpos[int(pool[p])] for p in picks if int(pool[p]) in cpos]
        if not loc:
            stop = "no_pick"
            break
        lab += [int(cand[k]) for k in loc]
    return curve, stop


# ---------------------------------------------------------------------------- analysis
def mean_curve(curves):
    """Fold-mean and fold-std of test MAE on the union of label counts; a run that has stopped
    keeps its last value. Returns (n (k,), mean (k,), std (k,)) in labels / kJ/mol."""
    ns = sorted({n for c in curves for n, _, _ in c})
    vals = []
    for c in curves:
        d = dict((n, m) for n, m, _ in c)
        row, last = [], c[0][1]
        for n in ns:
            last = d.get(n, last if n > c[0][0] else c[0][1])
            row.append(last)
        vals.append(row)
    vals = np.array(vals)
    return np.array(ns), vals.mean(0), vals.std(0)


def labels_to_reach(ns, mae, target):
    hit = np.flatnonzero(mae <= target)
    return int(ns[hit[0]]) if hit.size else None


def check_findings(rows, members):
    """The paper's two qualitative findings evaluated on stored curves; returns (lines, verdicts)."""
    lines, verdicts = ["## Findings check (from stored learning curves; fold-mean curves)"], {}
    lines.append("### 1. Δ-learning needs fewer labels than total-energy learning for the same MAE")
    lines.append("target = the fold-mean final test MAE of the non-Δ run; "
                 "N = labels at which the fold-mean curve first reaches it")
    ok1 = []
    for a, b in (("E", "dE"), ("E+F", "dE+dF")):
        for st in STRATEGIES:
            for M in members:
                if (a, st, M) not in rows or (b, st, M) not in rows:
                    continue
                na, ma, _ = mean_curve(rows[(a, st, M)])
                nb, mb, _ = mean_curve(rows[(b, st, M)])
                target = float(ma[-1])
                Na, Nb = labels_to_reach(na, ma, target), labels_to_reach(nb, mb, target)
                holds = Nb is not None and Na is not None and Nb < Na
                ok1.append(holds)
                red = f"{100 * (1 - Nb / Na):.0f} % fewer" if (Na and Nb is not None) else "n/a"
                lines.append(f"- {a} vs {b}, {st}, M={M}: MAE {target:.2f} kJ/mol reached with N_{a}={Na}, "
                             f"N_{b}={Nb} ({red}) -> {'holds' if holds else 'does NOT hold'}")
    verdicts["delta_fewer_labels"] = f"{sum(ok1)}/{len(ok1)} comparisons hold"
    lines.append(f"**Finding 1: {verdicts['delta_fewer_labels']}**")
    lines.append("### 2. highest-uncertainty converges at least as fast as random")
    lines.append("target = 1.05 × the larger of the two fold-mean final MAEs (both reach it); "
                 "also mean MAE over the common label range (area) and mean fold-std")
    ok2, ok2b = [], []
    for q in QUANTITIES:
        for M in members:
            if (q, "random", M) not in rows or (q, "highest_uncertainty", M) not in rows:
                continue
            nr, mr, sr = mean_curve(rows[(q, "random", M)])
            nh, mh, sh = mean_curve(rows[(q, "highest_uncertainty", M)])
            target = 1.05 * max(mr[-1], mh[-1])
            Nr, Nh = labels_to_reach(nr, mr, target), labels_to_reach(nh, mh, target)
            common = sorted(set(nr) & set(nh))
            area_r = float(np.mean([mr[list(nr).index(n)] for n in common]))
            area_h = float(np.mean([mh[list(nh).index(n)] for n in common]))
            holds = Nh is not None and Nr is not None and Nh <= Nr
            ok2.append(holds)
            ok2b.append(area_h <= area_r)
            lines.append(f"- {q}, M={M}: MAE ≤ {target:.2f}: N_HU={Nh}, N_random={Nr}; mean MAE over n≤{common[-1]}: "
                         f"HU {area_h:.2f} vs random {area_r:.2f}; mean fold-std HU {sh.mean():.2f} vs random "
                         f"{sr.mean():.2f} -> {'holds' if holds else 'does NOT hold'}")
    verdicts["hu_at_least_as_fast"] = f"{sum(ok2)}/{len(ok2)} comparisons hold (labels to target); " \
                                      f"{sum(ok2b)}/{len(ok2b)} by mean MAE over the common range"
    lines.append(f"**Finding 2: {verdicts['hu_at_least_as_fast']}**")
    return lines, verdicts


def table(rows, stops, header, target):
    lines = [header, "| quantity | strategy | M | MAE (kJ/mol) | RMSE (kJ/mol) | final N_train | stop | "
                     f"N to MAE ≤ {target:.2f} |",
             "|---|---|---|---|---|---|---|---|"]
    for (q, st, M), cs in rows.items():
        mae = np.array([c[-1][1] for c in cs])
        rmse = np.array([c[-1][2] for c in cs])
        n = np.array([c[-1][0] for c in cs], float)
        reach = [next((k for k, m, _ in c if m <= target), None) for c in cs]
        r = np.array([x for x in reach if x is not None], float)
        reach_s = f"{r.mean():.0f} ± {r.std():.0f} ({len(r)}/{len(cs)} reached)" if len(r) else "not reached"
        counts = {s: stops[(q, st, M)].count(s) for s in stops[(q, st, M)]}
        why = ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))
        lines.append(f"| {q} | {st} | {M} | {mae.mean():.2f} ± {mae.std():.2f} | "
                     f"{rmse.mean():.2f} ± {rmse.std():.2f} | "
                     f"{n.mean():.0f} ± {n.std():.0f} | {why} | {reach_s} |")
    return lines


def plot_curves(rows, members, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(members), len(QUANTITIES), figsize=(4 * len(QUANTITIES), 3.2 * len(members)),
                             squeeze=False, sharey=True)
    for r, M in enumerate(members):
        for c, q in enumerate(QUANTITIES):
            ax = axes[r][c]
            for st in STRATEGIES:
                if (q, st, M) in rows:
                    n, m, s = mean_curve(rows[(q, st, M)])
                    ax.plot(n, m, label=st)
                    ax.fill_between(n, m - s, m + s, alpha=0.15)
            ax.set_title(f"{q}, M={M}")
            ax.set_yscale("log")
            ax.set_xlabel("training structures")
            if c == 0:
                ax.set_ylabel("test MAE (kJ/mol/molecule)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- driver
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", type=int, default=300, help="random packings to relax (split over 4 space groups)")
    p.add_argument("--relax-steps", type=int, default=150)
    p.add_argument("--n-label", type=int, default=150, help="unique minima labelled with GFN2-xTB (CV set)")
    p.add_argument("--ref-min-width", type=float, default=5.0, help="min supercell width for GFN2-xTB [Å]")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--members", type=int, nargs="+", default=[4, 8])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--threshold-kjmol", type=float, default=4.184, help="σ threshold per molecule (default 1 kcal/mol)")
    p.add_argument("--ei-window-kjmol", type=float, default=5.0)
    p.add_argument("--max-train", type=int, default=80)
    p.add_argument("--mae-target-kjmol", type=float, default=None)
    p.add_argument("--check", action="store_true", help="only evaluate the findings on the stored curves")
    args = p.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    curves_path = OUT / "al_strategies_curves.json"
    if args.check:
        stored = json.loads(curves_path.read_text())
        rows = {tuple(k.split("|")[:2]) + (int(k.split("|")[2]),): v["curves"] for k, v in stored["runs"].items()}
        members = sorted({k[2] for k in rows})
        lines, _ = check_findings(rows, members)
        print("\n".join(lines))
        return 0
    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    t0 = time.time()
    structs, stats = build_landscape(args.candidates, args.relax_steps, args.n_label, args.ref_min_width, log=log)
    log(f"landscape ready: {len(structs)} structures ({time.time() - t0:.0f} s)")
    X = standardise(structure_descriptors(structs, kind="soap"))
    cfg = {"threshold_kjmol": args.threshold_kjmol, "batch": 10, "max_train": args.max_train,
           "target_fraction": 0.05, "ei_window_kjmol": args.ei_window_kjmol, "n": len(structs), "folds": args.folds}
    cache_path = OUT / "al_strategies_runs.jsonl"
    cache = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            rec = json.loads(line)
            if rec["cfg"] == cfg:
                cache[rec["key"]] = rec
    folds = np.array_split(np.random.default_rng(42).permutation(len(structs)), args.folds)
    rows, stops = {}, {}
    t1 = time.time()
    for f in range(args.folds):
        test = np.sort(folds[f])
        pool = np.sort(np.concatenate([folds[g] for g in range(args.folds) if g != f]))
        for q in QUANTITIES:
            for st in args.strategies:
                for M in args.members:
                    key = f"{f}|{q}|{st}|{M}"
                    if key not in cache:
                        ts = time.time()
                        curve, stop = run_one(structs, X, pool, test, q, st, M, f, cfg)
                        cache[key] = {"key": key, "cfg": cfg, "curve": curve, "stop": stop, "t_s": time.time() - ts}
                        with open(cache_path, "a") as fh:
                            fh.write(json.dumps(cache[key]) + "\n")
                    rows.setdefault((q, st, M), []).append(cache[key]["curve"])
                    stops.setdefault((q, st, M), []).append(cache[key]["stop"])
        log(f"fold {f + 1}/{args.folds} done ({time.time() - t1:.0f} s)")
    target = args.mae_target_kjmol
    if target is None:   # 1.5 × the median final MAE of the E-trained runs
        target = 1.5 * float(np.median([c[-1][1] for (q, _, _), cs in rows.items() if q == "E" for c in cs]))
    sg_counts = {}
    for a in structs:
        sg_counts[a.info["space_group"]] = sg_counts.get(a.info["space_group"], 0) + 1
    e = np.array([a.info["baseline_energy"] / a.info["n_molecules"] for a in structs]) / KJMOL
    r = np.array([a.info["REF_energy"] / a.info["n_molecules"] for a in structs]) / KJMOL
    header = (f"# water CSP landscape: {stats['unique']} unique minima of {stats['candidates']} random packings; "
              f"CV on {len(structs)} GFN2-labelled minima "
              f"({', '.join(f'{k} {v}' for k, v in sg_counts.items())}); baseline relaxation flexible TIP3P-like FF "
              f"(cell + positions, ≤ {args.relax_steps} BFGS steps, {stats['relax_converged']}/{stats['candidates']} "
              f"converged; {stats['broken_or_collapsed']} broken/collapsed dropped, {stats['duplicates']} duplicates "
              f"removed); baseline energy span {np.ptp(e):.1f} kJ/mol/molecule, "
              f"GFN2-xTB span {np.ptp(r - r.min()):.1f}; "
              f"std of (GFN2 − baseline) {np.std(r - e):.1f} kJ/mol/molecule\n"
              f"# reference GFN2-xTB (tblite) E+F on supercells ≥ {args.ref_min_width} Å wide; "
              f"{args.folds}-fold CV; threshold {args.threshold_kjmol} kJ/mol/molecule; "
              f"batch 10; stop at ≤ 5 % above threshold or {args.max_train} labels; "
              f"EI window {args.ei_window_kjmol} kJ/mol")
    lines = table(rows, stops, header, target)
    check_lines, verdicts = check_findings(rows, args.members)
    text = "\n".join(lines + [""] + check_lines)
    print(text)
    (OUT / "al_strategies_table.md").write_text(text + "\n")
    curves_path.write_text(json.dumps({"cfg": cfg, "landscape": stats, "verdicts": verdicts,
                                       "runs": {"|".join(map(str, k)): {"curves": v, "stops": stops[k]}
                                                for k, v in rows.items()}}))
    plot_curves(rows, args.members, OUT / "al_strategies_curves.png")
    log(f"total {time.time() - t0:.0f} s (landscape {stats['t_relax_s']} s relax + {stats['t_label_s']} s labels; "
        f"CV {time.time() - t1:.0f} s)")
    with open(OUT / "run.log", "a") as fh:
        fh.write("\n".join(log_lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
