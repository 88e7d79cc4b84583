"""Adaptive gate thresholds: a quantile of the running distribution of a measure, within bounds.

``q0.95:0.05:0.5`` on ``--threshold-forces-std-max-eVA`` means: fall back to the reference when
``forces_std_max`` exceeds the 95th percentile of the values the gate has seen, but never trust
a spread above 0.5 eV/Å (ceiling) nor label one below 0.05 eV/Å (floor); the floor and ceiling
are in the option's unit and apply to calibrated spreads (the committee's calibration is applied
before any measure is computed).  Parsed by :func:`committee_calc.measures.parse_limits`, applied
by :func:`committee_calc.measures.decide` — so every driver, through the one gate, uses it alike.

Rule, per decision (aims-PAX and DP-GEN adapt thresholds to the running uncertainty likewise):

* threshold in force = clip(quantile_{q_t}(last ``window`` values), floor, ceiling), from the
  values seen *before* this structure; during the first ``warmup`` values it is the floor
  (nothing is known about the distribution yet: every spread above the user's lower bound is
  labelled);
* then the structure's value joins the window (non-finite values are skipped), and the level
  q_t moves by γ·(exceeded − (1 − q)) — adaptive conformal inference (Gibbs & Candès, NeurIPS
  2021, arXiv:2106.00170): a window's quantile lags a drifting distribution, so on its own it
  labels too much while the spread grows; the level update keeps the long-run labelled fraction
  at 1 − q under any shift (|mean − (1 − q)| ≤ (1 + γ)/(γ T) after T values).  The level does
  not move while the floor or ceiling decides (the user's bounds rule then); γ = 0 disables it.

The running distribution lives in the object (one per gate threshold) and is not saved with a
run's resume state: a resumed run warms up again.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from .errors import ConfigError

#: defaults of the optional ``warmup=`` / ``window=`` / ``gamma=`` fields
WARMUP, WINDOW, GAMMA = 20, 500, 0.005


class AdaptiveThreshold:
    """A threshold that is a quantile of the last ``window`` observed values, clipped to
    [``floor``, ``ceiling``] (internal units of the measure); ``floor`` during the first
    ``warmup`` values; its level starts at ``quantile`` and adapts with step ``gamma`` (module
    docstring).  Raises ConfigError for q outside (0, 1), floor ≤ 0, ceiling < floor,
    warmup < 1, window < warmup or gamma outside [0, 1)."""

    def __init__(self, quantile: float, floor: float, ceiling: float, warmup: int = WARMUP,
                 window: int = WINDOW, unit: str = "", gamma: float = GAMMA):
        q, lo, hi = float(quantile), float(floor), float(ceiling)
        if not 0.0 < q < 1.0:
            raise ConfigError(f"the quantile of an adaptive threshold must be in (0, 1), got {quantile!r}")
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
            raise ConfigError(f"an adaptive threshold needs 0 < floor <= ceiling (finite), got floor "
                              f"{floor!r}, ceiling {ceiling!r}")
        if int(warmup) != warmup or warmup < 1 or int(window) != window or window < warmup:
            raise ConfigError(f"an adaptive threshold needs integers 1 <= warmup <= window, got "
                              f"warmup={warmup!r}, window={window!r}")
        if not 0.0 <= float(gamma) < 1.0:
            raise ConfigError(f"the level step gamma of an adaptive threshold must be in [0, 1), got {gamma!r}")
        self.quantile, self.floor, self.ceiling = q, lo, hi
        self.warmup, self.window, self.unit, self.gamma = int(warmup), int(window), unit, float(gamma)
        self.values: deque = deque(maxlen=self.window)
        self.n_seen = self.n_exceeded = 0
        self.level = q
        self._bounded = True  # the last threshold given out came from the floor/ceiling

    # ------------------------------------------------------------------ the rule
    def state(self) -> tuple:
        """(threshold in force now [internal units], why: the rule's state as one line)."""
        n = len(self.values)
        head = f"q{self.quantile:g} of the running distribution"
        if n < self.warmup:
            self._bounded = True
            return self.floor, f"{head}: warm-up ({n}/{self.warmup} values), floor {self.floor:.4g}"
        level = min(max(self.level, 0.0), 1.0)
        raw = float(np.quantile(np.fromiter(self.values, float, n), level))
        value = min(max(raw, self.floor), self.ceiling)
        self._bounded = value != raw
        where = ("clipped to the floor" if raw < self.floor else "clipped to the ceiling" if raw > self.ceiling
                 else "within [floor, ceiling]")
        return value, (f"{head} (level now {level:.4g}; last {n} of {self.n_seen} values) = {raw:.4g}, "
                       f"{where} [{self.floor:.4g}, {self.ceiling:.4g}]")

    def value(self) -> float:
        """The threshold in force now (internal units)."""
        return self.state()[0]

    def rule(self) -> str:
        """Why the threshold has its current value, for messages and label provenance."""
        return self.state()[1]

    def observe(self, x, threshold: float | None = None) -> None:
        """Add a measured value to the running distribution (non-finite values are skipped) and,
        given the ``threshold`` it was judged against (from :meth:`state`), adapt the level."""
        x = float(x)
        if not math.isfinite(x):
            return
        if threshold is not None:
            exceeded = x > threshold
            self.n_exceeded += exceeded
            if not self._bounded:
                self.level += self.gamma * (exceeded - (1.0 - self.quantile))
        self.values.append(x)
        self.n_seen += 1

    def spec(self) -> str:
        """The text form in internal units: ``q0.95:0.05:0.5:warmup=20:window=500``."""
        return (f"q{self.quantile:g}:{self.floor:g}:{self.ceiling:g}:warmup={self.warmup}"
                f":window={self.window}:gamma={self.gamma:g}")

    def fresh(self) -> AdaptiveThreshold:
        """The same rule with an empty running distribution."""
        return AdaptiveThreshold(self.quantile, self.floor, self.ceiling, self.warmup, self.window,
                                 self.unit, self.gamma)

    # ------------------------------------------------------------------ number-like
    def __float__(self) -> float:
        return self.value()

    def __format__(self, spec: str) -> str:
        return format(self.value(), spec)

    def __mul__(self, other) -> float:
        return self.value() * float(other)

    __rmul__ = __mul__

    def __lt__(self, other) -> bool:
        return self.value() < float(other)

    def __le__(self, other) -> bool:
        return self.value() <= float(other)

    def __gt__(self, other) -> bool:
        return self.value() > float(other)

    def __ge__(self, other) -> bool:
        return self.value() >= float(other)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"AdaptiveThreshold({self.spec()!r}, now={self.value():.4g})"


def parse_adaptive(text: str, convert, what: str) -> AdaptiveThreshold:
    """``q<quantile>:<floor>:<ceiling>[:warmup=N][:window=N][:gamma=G]`` -> AdaptiveThreshold.

    convert(field) turns a floor/ceiling field into internal units (the caller knows the unit).
    Raises ConfigError naming ``what`` for a missing floor/ceiling or a malformed field."""
    fields = [f.strip() for f in str(text).strip().split(":")]
    example = f"{what}=q0.95:FLOOR:CEILING (floor and ceiling in the option's unit), e.g. q0.95:0.05:0.5"
    if len(fields) < 3 or not fields[1] or not fields[2]:
        raise ConfigError(f"{what}={text!r}: a quantile threshold needs a floor and a ceiling: {example}")
    try:
        q = float(fields[0][1:])
    except ValueError:
        raise ConfigError(f"{what}={text!r}: cannot read the quantile {fields[0]!r}; {example}") from None
    opts = {}
    for f in fields[3:]:
        key, _, val = f.partition("=")
        try:
            if key not in ("warmup", "window", "gamma"):
                raise ValueError
            opts[key] = float(val) if key == "gamma" else int(val)
        except ValueError:
            raise ConfigError(f"{what}={text!r}: bad field {f!r}; optional fields are warmup=N, window=N "
                              "and gamma=G (level step, 0 = fixed level)") from None
    return AdaptiveThreshold(q, convert(fields[1]), convert(fields[2]), **opts)


def is_adaptive_text(value) -> bool:
    """True for a string written as a quantile threshold (``q0.95:…``)."""
    return isinstance(value, str) and value.strip()[:1] in ("q", "Q")


__all__ = ["AdaptiveThreshold", "parse_adaptive", "is_adaptive_text", "WARMUP", "WINDOW"]
