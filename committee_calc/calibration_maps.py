"""Calibrators: maps from a committee's raw spread σ to a calibrated spread σ', one per quantity.

A calibrator is fitted by :mod:`committee_calc.calibration`, persisted in the committee YAML's
``calibration:`` block and applied by :func:`committee_calc.uncertainty.aggregate` to every
spread (never to a mean), so results, gate, drivers and plots all see calibrated spreads.

================ =============================================== ==================================
method           σ' (calibrated 1σ spread)                       YAML value
================ =============================================== ==================================
``alpha``        α·σ (global factor; Imbalzano et al. 2021)      ``2.1`` (old form) or
                                                                 ``{method: alpha, alpha: 2.1}``
``conformal``    (q̂ / z_c)·σ: the central interval ±z_c σ' is   ``{method: conformal,
                 ±q̂ σ, whose coverage is ``coverage`` (split-   coverage: 0.95, quantile: 3.9}``
                 conformal; z_c = Φ⁻¹((1 + c)/2), 1.96 at 95 %)
``isotonic``     √g(σ), g the isotonic (non-decreasing) fit of   ``{method: isotonic, per_atom:
                 Δ² on σ (scikit-learn ``IsotonicRegression``),  true, sigma: [...],
                 linear between knots; below the first knot its  calibrated: [...]}``
                 value, above the last σ·σ'_last/σ_last
================ =============================================== ==================================

Quantities: ``energy`` (σ of the total energy [eV]; a ``per_atom`` map acts on σ/N and is scaled
back by N), ``forces`` (each Cartesian component [eV/Å]), ``stress`` (each Voigt component
[eV/Å³]) and ``energies`` (per-atom energies; default: the energy calibrator acting per atom).
Raises :class:`~committee_calc.errors.CalibrationError` for an invalid specification.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import CalibrationError

#: quantities a calibration may name
CALIBRATION_KEYS = ("energy", "forces", "stress", "energies")
METHODS = ("alpha", "conformal", "isotonic")


def gaussian_z(coverage: float) -> float:
    """z with P(|N(0,1)| ≤ z) = coverage (1.95996 at 0.95)."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + 0.5 * check_coverage(coverage)))


def check_coverage(coverage) -> float:
    """``coverage`` as a float strictly inside (0, 1); CalibrationError otherwise."""
    try:
        c = float(coverage)
    except (TypeError, ValueError):
        raise CalibrationError(f"coverage must be a number in (0, 1), got {coverage!r}") from None
    if not 0.0 < c < 1.0:
        raise CalibrationError(f"coverage must be > 0 and < 1 (e.g. 0.95), got {coverage!r}")
    return c


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"calibration factor for {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise CalibrationError(f"calibration factor for {name} must be finite and > 0, got {value!r}")
    return v


@dataclass(frozen=True)
class Calibrator:
    """One fitted map σ → σ' (module docstring).

    method: ``alpha`` | ``conformal`` | ``isotonic``; alpha: the factor of the scale methods
    (conformal: quantile / z_coverage); coverage, quantile: conformal level and q̂ of |Δ|/σ;
    sigma, calibrated: isotonic knots (ascending raw σ, non-decreasing σ' > 0) in the unit of
    the quantity (per atom when ``per_atom``); estimator: how α was estimated (information only).
    """

    method: str = "alpha"
    alpha: float = 1.0
    coverage: float | None = None
    quantile: float | None = None
    sigma: tuple = ()
    calibrated: tuple = ()
    per_atom: bool = False
    estimator: str | None = None

    @property
    def is_scale(self) -> bool:
        """True for a single factor (alpha, conformal)."""
        return self.method != "isotonic"

    def __float__(self) -> float:
        if not self.is_scale:
            raise CalibrationError("an isotonic calibration is a map σ → σ', not one factor α; "
                                   "use a global α or split-conformal calibration where a factor is needed")
        return float(self.alpha)

    def __call__(self, sigma, n_atoms: int = 1):
        """Calibrated spread of raw ``sigma`` (scalar or array, same shape back)."""
        s = np.asarray(sigma, dtype=float)
        if self.is_scale:
            out = self.alpha * s
        else:
            n = max(int(n_atoms), 1) if self.per_atom else 1
            x, y = np.asarray(self.sigma), np.asarray(self.calibrated)
            u = s / n
            out = np.where(u > x[-1], u * (y[-1] / x[-1]) if x[-1] > 0 else y[-1], np.interp(u, x, y)) * n
        return float(out) if np.ndim(out) == 0 else out

    def as_spec(self):
        """The YAML value (a bare number for a plain α, as before)."""
        if self.method == "alpha":
            if self.estimator is None:
                return float(self.alpha)
            return {"method": "alpha", "alpha": float(self.alpha), "estimator": self.estimator}
        if self.method == "conformal":
            return {"method": "conformal", "coverage": float(self.coverage),
                    "quantile": float(self.quantile), "alpha": float(self.alpha)}
        return {"method": "isotonic", "per_atom": bool(self.per_atom),
                "sigma": [float(f"{v:.8g}") for v in self.sigma],
                "calibrated": [float(f"{v:.8g}") for v in self.calibrated]}

    def describe(self) -> str:
        if self.method == "alpha":
            return f"alpha α={self.alpha:.4g}"
        if self.method == "conformal":
            return f"conformal {100 * self.coverage:g} % (q̂={self.quantile:.4g}, α={self.alpha:.4g})"
        return f"isotonic ({len(self.sigma)} knots{', per atom' if self.per_atom else ''})"


def alpha_calibrator(alpha, estimator=None, name: str = "quantity") -> Calibrator:
    return Calibrator("alpha", _positive(repr(name), alpha), estimator=estimator)


def conformal_calibrator(coverage, quantile, name: str = "quantity") -> Calibrator:
    c = check_coverage(coverage)
    q = _positive(f"{name!r} (conformal quantile)", quantile)
    return Calibrator("conformal", q / gaussian_z(c), coverage=c, quantile=q)


def isotonic_calibrator(sigma, calibrated, per_atom=False, name: str = "quantity") -> Calibrator:
    try:
        x = np.asarray(sigma, dtype=float).reshape(-1)
        y = np.asarray(calibrated, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise CalibrationError(f"isotonic calibration of {name!r}: sigma and calibrated must be "
                               "lists of numbers") from None
    if x.size < 1 or x.shape != y.shape:
        raise CalibrationError(f"isotonic calibration of {name!r} needs equally long, non-empty "
                               f"sigma and calibrated lists, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x < 0) or np.any(y <= 0):
        raise CalibrationError(f"isotonic calibration of {name!r}: knots must be finite, sigma >= 0, "
                               "calibrated > 0")
    if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise CalibrationError(f"isotonic calibration of {name!r}: sigma must ascend and calibrated "
                               "must not decrease")
    return Calibrator("isotonic", sigma=tuple(x.tolist()), calibrated=tuple(y.tolist()),
                      per_atom=bool(per_atom))


def parse_calibrator(name: str, spec) -> Calibrator:
    """One YAML value (number, mapping or Calibrator) -> Calibrator; CalibrationError."""
    if isinstance(spec, Calibrator):
        return spec
    if not isinstance(spec, dict):
        return alpha_calibrator(spec, name=name)
    method = spec.get("method", "alpha")
    known = {"alpha": {"method", "alpha", "estimator"},
             "conformal": {"method", "coverage", "quantile", "alpha"},
             "isotonic": {"method", "per_atom", "sigma", "calibrated"}}
    if method not in known:
        raise CalibrationError(f"unknown calibration method {method!r} for {name!r}; use one of {METHODS}")
    extra = set(spec) - known[method]
    if extra:
        raise CalibrationError(f"calibration of {name!r} ({method}): unknown keys {sorted(extra)}; "
                               f"known: {sorted(known[method])}")
    if method == "alpha":
        return alpha_calibrator(spec.get("alpha"), spec.get("estimator"), name)
    if method == "conformal":
        if "coverage" not in spec or "quantile" not in spec:
            raise CalibrationError(f"conformal calibration of {name!r} needs coverage and quantile")
        return conformal_calibrator(spec["coverage"], spec["quantile"], name)
    return isotonic_calibrator(spec.get("sigma", ()), spec.get("calibrated", ()),
                               spec.get("per_atom", False), name)


def parse_calibration(calibration) -> dict:
    """The ``calibration:`` block -> {quantity: Calibrator}; None -> {}.  CalibrationError."""
    if calibration is None:
        return {}
    if not isinstance(calibration, dict):
        raise CalibrationError(f"calibration must be a mapping like {{energy: 1.2}}, got {calibration!r}")
    out = {}
    for k, v in calibration.items():
        if k not in CALIBRATION_KEYS:
            raise CalibrationError(f"unknown calibration quantity {k!r}; use {CALIBRATION_KEYS}")
        out[k] = parse_calibrator(k, v)
    return out


def calibration_spec(calibrators: dict) -> dict:
    """{quantity: Calibrator} -> the YAML block (inverse of :func:`parse_calibration`)."""
    return {k: parse_calibrator(k, v).as_spec() for k, v in calibrators.items()}


def scale_view(calibrators: dict) -> dict:
    """{quantity: α} of the single-factor calibrators (a plain α stays a float)."""
    return {k: (float(c.alpha) if c.method == "alpha" and c.estimator is None else c)
            for k, c in calibrators.items()}


__all__ = ["CALIBRATION_KEYS", "METHODS", "Calibrator", "alpha_calibrator", "conformal_calibrator",
           "isotonic_calibrator", "parse_calibrator", "parse_calibration", "calibration_spec",
           "check_coverage", "gaussian_z", "scale_view"]
