"""Committee statistics: means, spreads and summary measures.

Every spread is a sample standard deviation over members (``ddof=1``) in the
unit of its quantity, mapped by the calibrator of that quantity
(:mod:`committee_calc.calibration_maps`: a factor α, split-conformal or isotonic).
Shapes: M members, N atoms.

========================== ======== ======= =======================================
key                        shape    unit    meaning
========================== ======== ======= =======================================
energy, free_energy        ()       eV      committee mean
forces                     (N,3)    eV/Å    mean
stress                     (6,)     eV/Å³   mean, Voigt, ASE sign convention
energies                   (N,)     eV      mean per-atom energies
energy_members             (M,)     eV      per member (raw, uncalibrated)
forces_members             (M,N,3)  eV/Å    per member
stress_members             (M,6)    eV/Å³   per member
energies_members           (M,N)    eV      per member
energy_std                 ()       eV      c_E(std(energy_members, ddof=1))
energy_std_per_atom        ()       eV      energy_std / N
forces_std                 (N,3)    eV/Å    c_F(per-component std)
forces_std_atom            (N,)     eV/Å    sqrt(sum over xyz of forces_std²)
forces_std_max             ()       eV/Å    max(forces_std_atom)
force_uncertainty_relative ()       1       max‖σ_F,i‖ / max‖F̄_i‖ (Hessmann et al.)
stress_std                 (6,)     eV/Å³   c_S(per-component std)
n_nonfinite                ()       1       members with non-finite output
========================== ======== ======= =======================================

A member with non-finite output is left out of the means and makes every
spread equal :data:`UNCERTAIN` (a finite sentinel, "infinitely uncertain")
with ``n_nonfinite > 0`` as the flag.  :func:`reaggregate` recomputes the spreads of a
result under another calibration from the ``*_members`` values it carries.
"""
from __future__ import annotations

import numpy as np

from . import keys as K
from .calibration_maps import Calibrator, parse_calibration
from .errors import NonFiniteOutputError

#: spread reported when a member returned NaN/inf (eV, eV/Å, eV/Å³ or 1)
UNCERTAIN = 1.0e6
#: floor of max‖F̄‖ in the relative force uncertainty, eV/Å
FORCE_FLOOR = 1.0e-8

QUANTITIES = (K.ENERGY, K.FORCES, K.STRESS, K.ENERGIES)


def force_uncertainty_relative(forces_mean: np.ndarray, forces_std_atom: np.ndarray) -> float:
    """U = max_i ‖σ_F,i‖ / max_i ‖F̄_i‖ (denominator floored at FORCE_FLOOR)."""
    fmax = float(np.max(np.linalg.norm(forces_mean, axis=1))) if len(forces_mean) else 0.0
    smax = float(np.max(forces_std_atom)) if len(forces_std_atom) else 0.0
    return smax / max(fmax, FORCE_FLOOR)


def _calibrators(calibration) -> dict:
    """{quantity: Calibrator} for energy, forces, stress, energies (identity where not given)."""
    cal = calibration if calibration and all(isinstance(v, Calibrator) for v in calibration.values()) \
        else parse_calibration(calibration or None)
    out = {q: cal.get(q, _IDENTITY) for q in (K.ENERGY, K.FORCES, K.STRESS)}
    e = cal.get(K.ENERGY, _IDENTITY)
    out[K.ENERGIES] = cal.get(K.ENERGIES, e if e.is_scale or e.per_atom else _IDENTITY)
    return out


_IDENTITY = Calibrator("alpha", 1.0)


def aggregate(predictions: list, calibration: dict | None = None) -> dict:
    """Combine per-member prediction dicts into the committee result schema.

    ``predictions``: list of M dicts as returned by ``Member.predict``.
    ``calibration``: optional ``{"energy": c_E, "forces": c_F, "stress": c_S}``, each an α factor,
    a :class:`~committee_calc.calibration_maps.Calibrator` or its YAML mapping (a per-atom energy
    map acts on σ_E/N).  Only quantities present in every member's prediction are aggregated.
    """
    cal = _calibrators(calibration)
    m = len(predictions)
    keys = [q for q in QUANTITIES if all(q in p for p in predictions)]
    stacks = {q: np.array([p[q] for p in predictions], dtype=float) for q in keys}

    finite = np.ones(m, dtype=bool)
    for s in stacks.values():
        finite &= np.isfinite(s.reshape(m, -1)).all(axis=1)
    n_bad = int(m - finite.sum())
    if finite.sum() == 0:
        raise NonFiniteOutputError(
            "every committee member returned non-finite energy/forces/stress; the "
            "structure is far outside the training data (or the models are broken)"
        )
    natoms = len(stacks[K.FORCES][0]) if K.FORCES in stacks else (
        len(stacks[K.ENERGIES][0]) if K.ENERGIES in stacks else 1)

    res: dict = {K.N_NONFINITE: n_bad}
    for q, s in stacks.items():
        good = s[finite]
        res[q] = good.mean(axis=0) if q != K.ENERGY else float(good.mean())
        res[f"{q}_members"] = s.copy()
        if n_bad or len(good) < 2:
            res[f"{q}_std"] = np.full_like(good[0], UNCERTAIN) if q != K.ENERGY else UNCERTAIN
        else:
            raw = np.std(good, axis=0, ddof=1)
            std = cal[q](raw, natoms if q == K.ENERGY else 1)
            res[f"{q}_std"] = float(std) if q == K.ENERGY else std
    if K.ENERGY in res:
        res[K.FREE_ENERGY] = res[K.ENERGY]
    if K.FORCES in res:
        fsa = np.sqrt(np.sum(res[K.FORCES_STD] ** 2, axis=1))
        if n_bad:
            fsa = np.full(natoms, UNCERTAIN)
        res[K.FORCES_STD_ATOM] = fsa
        res[K.FORCES_STD_MAX] = float(fsa.max()) if natoms else 0.0
        res[K.FORCE_UNCERTAINTY_RELATIVE] = (
            UNCERTAIN if n_bad else force_uncertainty_relative(res[K.FORCES], fsa)
        )
        res[K.ENERGY_STD_PER_ATOM] = res[K.ENERGY_STD] / max(natoms, 1)
    return res


def reaggregate(results: dict, calibration: dict | None = None) -> dict:
    """``results`` of :func:`aggregate` with the spreads recomputed under ``calibration`` from the
    per-member values they carry (``*_members``): a new calibration without evaluating the
    committee again."""
    members = {q: np.asarray(results[f"{q}_members"], float) for q in QUANTITIES
               if f"{q}_members" in results}
    if K.ENERGY not in members:
        raise KeyError("results without energy_members cannot be recalibrated")
    m = len(members[K.ENERGY])
    preds = [{q: (float(v[k]) if q == K.ENERGY else v[k]) for q, v in members.items()} for k in range(m)]
    return aggregate(preds, calibration)


def energy_std_per_molecule(energy_std_eV: float, n_molecules: int) -> float:
    """Energy spread per molecule in eV (total spread / molecule count)."""
    if n_molecules is None or int(n_molecules) < 1:
        raise ValueError(f"n_molecules must be a positive integer, got {n_molecules!r}")
    return float(energy_std_eV) / int(n_molecules)
