"""Calibration metrics of Gaussian predictive spreads: NLL, miscalibration area, coverage.

Errors Δ = ŷ − y and spreads σ (> 0) in one unit; the predictive distribution is N(ŷ, σ²).
Definitions follow uncertainty-toolbox (Chung et al., arXiv:2109.10254; not installed here,
so the few lines are written out with scipy):

* ``nll``: mean of ½ ln(2πσ²) + Δ²/(2σ²) (unit-dependent: compare within one quantity);
* ``coverage(z)``: fraction of |Δ| ≤ z σ (68.27 % at z = 1, 95 % at z = 1.95996);
* calibration curve: for expected proportions p on a grid in [0, 1], the observed fraction inside
  the central interval ±Φ⁻¹((1 + p)/2) σ (uncertainty-toolbox's ``prop_type="interval"``);
* ``miscalibration_area``: ∫₀¹ |observed(p) − p| dp (trapezoid on 101 points; 0 is perfect).
"""
from __future__ import annotations

import numpy as np

from .errors import CalibrationError

#: expected proportions of the calibration curve
PROPORTIONS = np.linspace(0.0, 1.0, 101)
#: z of the central 68.27 % (1σ) and 95 % intervals of a Gaussian
Z68, Z95 = 1.0, 1.959963984540054


def _arrays(errors, sigmas):
    e = np.asarray(errors, float).reshape(-1)
    s = np.asarray(sigmas, float).reshape(-1)
    if e.shape != s.shape or e.size == 0:
        raise CalibrationError(f"errors {e.shape} and sigmas {s.shape} must be equally long and non-empty")
    ok = np.isfinite(e) & np.isfinite(s) & (s > 0)
    if not ok.any():
        raise CalibrationError("no sample with a finite error and a positive spread")
    return e[ok], s[ok]


def nll(errors, sigmas) -> float:
    """Mean Gaussian negative log likelihood (nats per sample)."""
    e, s = _arrays(errors, sigmas)
    return float(np.mean(0.5 * np.log(2 * np.pi * s * s) + e * e / (2 * s * s)))


def coverage(errors, sigmas, z: float) -> float:
    """Fraction of |Δ| ≤ z σ."""
    e, s = _arrays(errors, sigmas)
    return float(np.mean(np.abs(e) <= z * s))


def calibration_curve(errors, sigmas, proportions=PROPORTIONS) -> tuple:
    """(expected proportions p, observed fractions) of the central intervals."""
    from scipy.stats import norm

    e, s = _arrays(errors, sigmas)
    p = np.asarray(proportions, float)
    z = norm.ppf(0.5 + 0.5 * np.clip(p, 0.0, 1.0 - 1e-12))
    r = np.sort(np.abs(e) / s)
    observed = np.searchsorted(r, z, side="right") / r.size
    return p, observed


def miscalibration_area(errors, sigmas) -> float:
    """∫₀¹ |observed(p) − p| dp of the calibration curve."""
    p, obs = calibration_curve(errors, sigmas)
    d = np.abs(obs - p)
    return float(np.sum(0.5 * (d[1:] + d[:-1]) * np.diff(p)))  # trapezoid (numpy < 2 has no trapezoid)


def summary(errors, sigmas) -> dict:
    """Every metric of one (errors, σ) set: n, nll, miscalibration_area, coverage_68, coverage_95,
    rmse, rms_sigma (units of the quantity)."""
    e, s = _arrays(errors, sigmas)
    return {"n": int(e.size), "nll": nll(e, s), "miscalibration_area": miscalibration_area(e, s),
            "coverage_68": coverage(e, s, Z68), "coverage_95": coverage(e, s, Z95),
            "rmse": float(np.sqrt(np.mean(e * e))), "rms_sigma": float(np.sqrt(np.mean(s * s)))}


__all__ = ["PROPORTIONS", "Z68", "Z95", "nll", "coverage", "calibration_curve", "miscalibration_area",
           "summary"]
