"""Names and checks shared by the relaxation modules: policies, optimisers, statuses.

:func:`policy_thresholds` turns a policy and the user's thresholds into the gate's thresholds
and U_max; :func:`optimizer_class` resolves an optimiser name; :func:`count_setting` checks a
non-negative integer setting.  Policies and statuses are explained in :mod:`.gated`.
"""
from __future__ import annotations

from .. import keys as K
from ..errors import ConfigError
from ..units import check_positive

POLICIES = ("fallback", "stop", "stop_and_label")
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
STATUSES = ("converged", "unverified", "stalled", "max_steps", "uncertain", "threshold", "hard_cap",
            "exploded", "reference_failed", "committee_failed")


def optimizer_class(name: str):
    """The ASE optimiser class of ``name`` (one of :data:`OPTIMIZERS`); ConfigError otherwise."""
    import ase.optimize as opt

    key = str(name).upper()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    return getattr(opt, key)


def policy_thresholds(policy: str, thresholds=None, u_max=None) -> tuple:
    """The gate thresholds and U_max a policy implies -> ``(thresholds, u_max)``.

    thresholds: ``{measure key: value}`` in internal units (e.g. from
        :func:`committee_calc.cli.limits_from_args`); not modified.
    u_max: U_max of the stop policies; default ``thresholds["force_uncertainty_relative"]``.

    ``fallback``: the thresholds as given (an explicit ``u_max`` is refused: it is no fallback
    threshold); none: the committee answers every step (a plain
    committee relaxation, verified at the end when the gate has a reference).
    ``stop``: U_max is the stop criterion, not a fallback threshold: it is
    removed; other thresholds, if any, still fall back (none: committee only).
    ``stop_and_label``: U_max needed; the threshold on U is set to U_max, so
    the gate labels exactly when U > U_max.
    Raises :class:`~committee_calc.errors.ConfigError` (UnitError for a NaN, infinite or
    non-positive ``u_max``).
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    th = dict(thresholds or {})
    given = th.get(K.FORCE_UNCERTAINTY_RELATIVE)
    if u_max is not None:
        if policy == "fallback":
            raise ConfigError("--u-max is the stop criterion of --policy stop/stop_and_label; with "
                              "--policy fallback give --threshold-force-uncertainty-relative "
                              "(fall back to the reference above it) instead")
        u_max = check_positive("--u-max", u_max)
    if u_max is not None and given is not None and float(u_max) != float(given):
        raise ConfigError(f"U_max given twice with different values (--u-max {u_max:g} and "
                          f"--threshold-force-uncertainty-relative {given:g}); give it once")
    u_max = u_max if u_max is not None else given
    if policy == "stop":
        th.pop(K.FORCE_UNCERTAINTY_RELATIVE, None)
    elif policy == "stop_and_label":
        if u_max is None:
            raise ConfigError("policy 'stop_and_label' needs U_max (--u-max or "
                              "--threshold-force-uncertainty-relative)")
        th[K.FORCE_UNCERTAINTY_RELATIVE] = u_max
    return th, u_max


def count_setting(name, value) -> int:
    """A non-negative integer setting; ConfigError otherwise."""
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


__all__ = ["OPTIMIZERS", "POLICIES", "STATUSES", "count_setting", "optimizer_class",
           "policy_thresholds"]
