"""Calibration of committee spreads: one factor α per quantity.

The calibrated spread is α·σ, where σ is the committee's sample standard
deviation (ddof=1).  Two estimators from a labelled validation set with
errors Δ = ȳ − y_ref and raw spreads σ:

* ``resampling`` (Imbalzano et al., J. Chem. Phys. 154, 074102 (2021), eq. for
  resampling committees of M members):
  α² = −1/M + (M−3)/(M−1) · ⟨Δ²/σ²⟩.  It corrects for the noise of σ² estimated
  from M members and for the error of the mean itself; needs M > 3.
* ``nll``: maximum likelihood of Δ ~ N(0, α²σ²), closed form α² = ⟨Δ²/σ²⟩.

Forces are calibrated per Cartesian component (every component a sample).
α is persisted in the committee YAML under ``calibration:``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import read_yaml, write_yaml_atomic
from .errors import CalibrationError

GAUSS_1SIGMA = 0.6826894921370859
GAUSS_2SIGMA = 0.9544997361036416


@dataclass(frozen=True)
class CalibrationResult:
    """α for one quantity, with diagnostics (fractions use the scaled spread)."""

    quantity: str
    alpha: float
    method: str
    n_samples: int
    n_members: int
    frac_within_1sigma: float  # fraction of |Δ| ≤ α σ   (Gaussian: 0.683)
    frac_within_2sigma: float  # fraction of |Δ| ≤ 2 α σ (Gaussian: 0.954)
    frac_within_1sigma_raw: float  # same with α = 1
    rmse: float  # sqrt⟨Δ²⟩, unit of the quantity
    rms_sigma: float  # sqrt⟨α²σ²⟩, unit of the quantity
    nll: float  # mean Gaussian negative log likelihood with α σ

    def as_dict(self) -> dict:
        return asdict(self)


def _clean(errors, sigmas):
    e = np.asarray(errors, dtype=float).reshape(-1)
    s = np.asarray(sigmas, dtype=float).reshape(-1)
    if e.shape != s.shape:
        raise CalibrationError(f"errors {e.shape} and sigmas {s.shape} differ in size")
    ok = np.isfinite(e) & np.isfinite(s) & (s > 0)
    if ok.sum() < 2:
        raise CalibrationError(
            f"only {int(ok.sum())} samples with finite error and positive spread; "
            "calibration needs a validation set where members disagree"
        )
    return e[ok], s[ok]


def alpha_resampling(errors, sigmas, n_members: int) -> float:
    """Imbalzano et al. (2021) estimator: α² = −1/M + (M−3)/(M−1)⟨Δ²/σ²⟩."""
    m = int(n_members)
    if m <= 3:
        raise CalibrationError(
            f"the resampling estimator needs more than 3 members, got {m}; use method='nll'"
        )
    e, s = _clean(errors, sigmas)
    a2 = -1.0 / m + (m - 3) / (m - 1) * float(np.mean((e / s) ** 2))
    if a2 <= 0:
        raise CalibrationError(
            f"resampling estimator gave α² = {a2:.3g} ≤ 0 (committee spread much larger "
            "than its errors); use method='nll' or a larger validation set"
        )
    return math.sqrt(a2)


def alpha_nll(errors, sigmas) -> float:
    """Maximum-likelihood α for Δ ~ N(0, α²σ²): α² = ⟨Δ²/σ²⟩."""
    e, s = _clean(errors, sigmas)
    return math.sqrt(float(np.mean((e / s) ** 2)))


def diagnostics(errors, sigmas, alpha: float) -> dict:
    e, s = _clean(errors, sigmas)
    z = np.abs(e) / (alpha * s)
    var = (alpha * s) ** 2
    return {
        "n_samples": int(e.size),
        "frac_within_1sigma": float(np.mean(z <= 1.0)),
        "frac_within_2sigma": float(np.mean(z <= 2.0)),
        "frac_within_1sigma_raw": float(np.mean(np.abs(e) <= s)),
        "rmse": float(np.sqrt(np.mean(e ** 2))),
        "rms_sigma": float(np.sqrt(np.mean(var))),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * var) + e ** 2 / (2 * var))),
    }


def fit_alpha(errors, sigmas, n_members: int, method: str = "resampling",
              quantity: str = "energy") -> CalibrationResult:
    if method == "resampling":
        a = alpha_resampling(errors, sigmas, n_members)
    elif method == "nll":
        a = alpha_nll(errors, sigmas)
    else:
        raise CalibrationError(f"unknown calibration method {method!r}; use 'resampling' or 'nll'")
    return CalibrationResult(quantity=quantity, alpha=a, method=method, n_members=int(n_members),
                             **diagnostics(errors, sigmas, a))


def reference_values(atoms, energy_key: str | None = None, forces_key: str | None = None):
    """Reference energy (eV) and forces (eV/Å) of a labelled structure.

    Taken from ``atoms.info[energy_key]``/``atoms.arrays[forces_key]`` when the
    keys are given, else from the attached (single-point) calculator.
    """
    e = f = None
    if energy_key:
        e = atoms.info.get(energy_key)
    if forces_key:
        f = atoms.arrays.get(forces_key)
    calc = atoms.calc
    if e is None and calc is not None:
        e = calc.results.get("energy")
    if f is None and calc is not None:
        f = calc.results.get("forces")
    if e is None:
        raise CalibrationError(
            "validation structure has no reference energy; attach a calculator result or "
            "pass energy_key= naming the info key (e.g. 'REF_energy')"
        )
    return float(e), (None if f is None else np.asarray(f, float))


def calibrate(committee, structures, quantities=("energy", "forces"), method="resampling",
              energy_key=None, forces_key=None) -> dict:
    """Fit α per quantity on labelled ``structures``; returns {quantity: CalibrationResult}.

    Uses the committee's raw (α=1) spreads regardless of its current calibration.
    """
    raw = committee.with_calibration(None)
    errs = {q: [] for q in quantities}
    sigs = {q: [] for q in quantities}
    for atoms in structures:
        e_ref, f_ref = reference_values(atoms, energy_key, forces_key)
        res = raw.predict([atoms])[0]
        if "energy" in quantities:
            errs["energy"].append(res["energy"] - e_ref)
            sigs["energy"].append(res["energy_std"])
        if "forces" in quantities:
            if f_ref is None:
                raise CalibrationError("forces calibration asked but a structure has no reference forces")
            errs["forces"].append((res["forces"] - f_ref).ravel())
            sigs["forces"].append(res["forces_std"].ravel())
    out = {}
    for q in quantities:
        e = np.concatenate([np.atleast_1d(x) for x in errs[q]])
        s = np.concatenate([np.atleast_1d(x) for x in sigs[q]])
        out[q] = fit_alpha(e, s, committee.n_members, method, q)
    return out


def save_calibration(yaml_path, results: dict) -> dict:
    """Write α factors into the committee YAML's ``calibration:`` block (atomically)."""
    spec = read_yaml(yaml_path)
    cal = dict(spec.get("calibration") or {})
    for q, r in results.items():
        cal[q] = float(r.alpha if isinstance(r, CalibrationResult) else r)
    spec["calibration"] = cal
    write_yaml_atomic(Path(yaml_path), spec)
    return cal
