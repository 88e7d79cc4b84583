"""Uncertainty measures, one table: keys, units, spellings, conversion, computation.

Each :class:`Measure` is defined once in :data:`MEASURES`.  Everything that
names a measure — gate thresholds and hard caps, the ``--threshold-…`` and
``--cap-…`` options of every driver, YAML configs, the Python API — goes
through this table and the one parser :func:`parse_limits`, and every
decision through the pure function :func:`decide`.

Adding a measure is one entry in :data:`MEASURES` (its key, internal unit,
unit spellings, CLI unit and ``compute`` function); every driver then offers
``--threshold-<key>-<unit>`` and ``--cap-<key>-<unit>``.

=========================== ========= ====================== =====================================
measure (result key)        unit      CLI option unit        computed from committee results
=========================== ========= ====================== =====================================
energy_std                  eV        ``eV``                 ``energy_std``
energy_std_per_atom         eV/atom   ``meV``                ``energy_std / N``
energy_std_per_molecule     eV/mol.   ``kjmol``              ``energy_std / n_molecules``
forces_std_max              eV/Å      ``eVA``                ``max_i ‖σ_F,i‖``
forces_std_mean             eV/Å      ``eVA``                ``mean_i ‖σ_F,i‖``
force_uncertainty_relative  1         (none)                 ``max‖σ_F‖ / max‖F̄‖`` (Hessmann et al.)
=========================== ========= ====================== =====================================

Limits are written either as ``<measure>_<unit>=value`` keywords
(``forces_std_max_eVA=0.3``, ``energy_std_per_molecule_kjmol=2``) or as
``<measure>: value`` with the value in internal units or a string with its
unit (``"2 kJ/mol"``, ``"5 meV/atom"``, ``"0.3 eV/A"``).

A threshold (not a hard cap) may adapt: ``q0.95:0.05:0.5`` is the 95th percentile of the
running distribution of the measure, clipped to floor 0.05 and ceiling 0.5 in the option's
unit (:mod:`committee_calc.calibration_thresholds`; also ``{quantile: 0.95, floor: …,
ceiling: …}`` in YAML).  :func:`decide` applies it and lets it observe the measure; every
:class:`Decision` carries ``provenance`` (threshold in force and why) for the label it may cause.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import keys as K
from .calibration_offsets import OffsetWarning, backends, needs_offsets
from .calibration_thresholds import AdaptiveThreshold, is_adaptive_text, parse_adaptive
from .errors import ConfigError, UnitError
from .units import ENERGY_SUFFIXES, FORCE_SUFFIXES, check_positive, energy_factor, force_factor

LOGICS = ("any", "all")


@dataclass(frozen=True)
class Measure:
    """One uncertainty measure.

    key: result key (a :mod:`committee_calc.keys` constant) and the name in limit dicts.
    unit: internal unit (for messages).
    kind: ``"energy"``, ``"force"`` or ``"none"`` — which unit spellings apply.
    cli_unit: the unit suffix of its command-line options (None: dimensionless).
    compute: ``f(results, n_atoms, n_molecules) -> float | None`` from committee results.
    needs_molecules: the measure needs a molecule count.
    help: one line for ``--help``.
    """

    key: str
    unit: str
    kind: str
    cli_unit: str | None
    compute: Callable = field(repr=False)
    needs_molecules: bool = False
    help: str = ""

    @property
    def suffixes(self) -> Mapping[str, float]:
        """Keyword unit suffix -> internal units per unit."""
        return {"energy": ENERGY_SUFFIXES, "force": FORCE_SUFFIXES}.get(self.kind, {})

    def option(self, prefix: str) -> str:
        """The keyword / CLI dest name, e.g. ``threshold_forces_std_max_eVA``."""
        return f"{prefix}_{self.key}" + (f"_{self.cli_unit}" if self.cli_unit else "")

    def display_unit(self) -> str:
        return {"eV": "eV", "meV": "meV", "kjmol": "kJ/mol", "eVA": "eV/Å"}.get(self.cli_unit, "")


def _per_molecule(r, n, nmol):
    if K.ENERGY_STD_PER_MOLECULE in r:
        return float(r[K.ENERGY_STD_PER_MOLECULE])
    return float(r[K.ENERGY_STD]) / nmol if nmol else None


#: the measures, by key
MEASURES: dict[str, Measure] = {m.key: m for m in (
    Measure(K.ENERGY_STD, "eV", "energy", "eV",
            lambda r, n, nmol: float(r[K.ENERGY_STD]),
            help="committee energy spread of the whole cell"),
    Measure(K.ENERGY_STD_PER_ATOM, "eV/atom", "energy", "meV",
            lambda r, n, nmol: float(r[K.ENERGY_STD]) / max(n, 1),
            help="committee energy spread per atom"),
    Measure(K.ENERGY_STD_PER_MOLECULE, "eV/molecule", "energy", "kjmol", _per_molecule,
            needs_molecules=True,
            help="committee energy spread per molecule (needs --molecules)"),
    Measure(K.FORCES_STD_MAX, "eV/Å", "force", "eVA",
            lambda r, n, nmol: float(r[K.FORCES_STD_MAX]),
            help="largest per-atom force spread max_i ‖σ_F,i‖"),
    Measure(K.FORCES_STD_MEAN, "eV/Å", "force", "eVA",
            lambda r, n, nmol: float(np.mean(r[K.FORCES_STD_ATOM])) if n else 0.0,
            help="mean per-atom force spread mean_i ‖σ_F,i‖"),
    Measure(K.FORCE_UNCERTAINTY_RELATIVE, "1", "none", None,
            lambda r, n, nmol: float(r[K.FORCE_UNCERTAINTY_RELATIVE]),
            help="relative force uncertainty U = max‖σ_F‖/max‖F̄‖ (Hessmann et al.)"),
)}


def compute_measures(results: dict, n_atoms: int, n_molecules=None) -> dict:
    """Every measure computable from committee ``results`` -> {key: value} (internal units)."""
    out = {}
    for key, m in MEASURES.items():
        try:
            v = m.compute(results, n_atoms, n_molecules)
        except KeyError:
            continue
        if v is not None:
            out[key] = float(v)
    return out


# ---------------------------------------------------------------------- parsing
_VALUE_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan)\s*(\S.*)?$",
                         re.IGNORECASE)
#: what a unit string may say after the unit, per measure ("2 kJ/mol per molecule")
_QUALIFIERS = {"atom": K.ENERGY_STD_PER_ATOM, "molecule": K.ENERGY_STD_PER_MOLECULE}


def _split(name: str):
    """'forces_std_max_eVA' -> (Measure, 'eVA'); 'forces_std_max' -> (Measure, None)."""
    if name in MEASURES:
        return MEASURES[name], None
    for key in sorted(MEASURES, key=len, reverse=True):
        if name.startswith(key + "_"):
            m, unit = MEASURES[key], name[len(key) + 1:]
            if unit not in m.suffixes:
                hint = (f"use one of {sorted(m.suffixes)} (e.g. {key}_{m.cli_unit})"
                        if m.suffixes else "it takes no unit")
                raise UnitError(f"unknown unit suffix {unit!r} in {name!r}; {hint}")
            return m, unit
    raise UnitError(f"unknown uncertainty measure {name!r}; use <measure>_<unit> with measure "
                    f"one of {sorted(MEASURES)}")


def _text_value(m: Measure, name: str, text: str) -> float:
    match = _VALUE_UNIT.match(text)
    if not match:
        raise UnitError(f"cannot read {name}={text!r}; write a number with a unit, e.g. '2 kJ/mol'")
    number, unit = match.group(1), (match.group(2) or "").strip()
    for word, key in _QUALIFIERS.items():
        said = any(q in unit for q in (f"/{word}", f" per {word}"))
        if said and m.key != key:
            raise UnitError(f"{name}={text!r} says 'per {word}' but {m.key} is "
                            f"{m.unit}; use {key} for a per-{word} limit")
    unit = unit.split("/atom")[0].split("/molecule")[0].split(" per ")[0].strip()
    if not unit:
        return check_positive(name, number)
    if m.kind == "none":
        raise UnitError(f"{name} is dimensionless; give a plain number, not {text!r}")
    factor = force_factor(unit) if m.kind == "force" else energy_factor(unit)
    return check_positive(name, number) * factor


#: ``what`` of parse_limits for limits that must stay fixed numbers (hard caps, stop criteria)
FIXED_LIMITS = ("hard cap", "--cap", "stop threshold")


def _adaptive(m: Measure, unit, label: str, value, what: str) -> AdaptiveThreshold:
    """An adaptive threshold from ``q…`` text or a {quantile, floor, ceiling[, warmup, window]} mapping."""
    if what in FIXED_LIMITS:
        raise ConfigError(f"{label}={value!r}: a {what.lstrip('-')} is a fixed number; only fallback "
                          "thresholds may adapt (q<quantile>:<floor>:<ceiling>)")

    def convert(field):
        if unit is not None:
            return check_positive(label, field) * m.suffixes[unit]
        return _text_value(m, label, field) if isinstance(field, str) else check_positive(label, field)

    if isinstance(value, Mapping):
        extra = set(value) - {"quantile", "floor", "ceiling", "warmup", "window", "gamma"}
        if extra or "quantile" not in value or "floor" not in value or "ceiling" not in value:
            raise ConfigError(f"{label}: an adaptive threshold mapping needs quantile, floor and ceiling "
                              f"(optional warmup, window, gamma), got {dict(value)!r}")
        opts = {k: value[k] for k in ("warmup", "window", "gamma") if k in value}
        t = AdaptiveThreshold(value["quantile"], convert(value["floor"]), convert(value["ceiling"]), **opts)
    else:
        t = parse_adaptive(value, convert, label)
    t.unit = m.unit
    return t


def parse_limits(spec=None, /, what: str = "threshold", **kwargs) -> dict:
    """Thresholds or hard caps in internal units: ``{measure key: value}``.

    ``spec`` (a mapping, e.g. from YAML) and keyword arguments are merged; keys
    are ``<measure>_<unit>`` (value in that unit) or ``<measure>`` (value in
    internal units, or a string with a unit).  None values are skipped.
    A threshold may be adaptive (module docstring): ``"q0.95:0.05:0.5"``, a mapping
    ``{quantile, floor, ceiling}`` or an :class:`AdaptiveThreshold` (kept as is: a gate shares it).
    Raises :class:`UnitError` for unknown names or units and non-positive,
    non-finite or non-numeric values; :class:`ConfigError` for a measure given
    twice, a quantile threshold without floor and ceiling, or an adaptive hard cap.
    """
    if spec is not None and not isinstance(spec, Mapping):
        raise ConfigError(f"{what}s must be a mapping like {{'forces_std_max_eVA': 0.3}}, got {spec!r}")
    items = list((spec or {}).items()) + list(kwargs.items())
    out = {}
    for name, value in items:
        if value is None:
            continue
        m, unit = _split(str(name))
        label = f"{what} {name}"
        if isinstance(value, AdaptiveThreshold):
            if what in FIXED_LIMITS:
                raise ConfigError(f"{label}: a {what.lstrip('-')} is a fixed number; only fallback "
                                  "thresholds may adapt")
            v = value
        elif is_adaptive_text(value) or isinstance(value, Mapping):
            v = _adaptive(m, unit, label, value, what)
        elif isinstance(value, str):
            if unit is not None:
                raise UnitError(f"{label}={value!r}: the unit is already in the name; give a number")
            v = _text_value(m, label, value)
        else:
            if isinstance(value, bool):
                raise UnitError(f"{label} must be a number, got {value!r}")
            v = check_positive(label, value) * (m.suffixes[unit] if unit else 1.0)
        if m.key in out:
            raise ConfigError(f"{what} for {m.key!r} given twice ({name!r}); give it once")
        out[m.key] = v
    return out


def check_molecules(n):
    """A molecule count: a positive int, ``"auto"`` or None.  Raises ConfigError."""
    if n is None or n == "auto":
        return n
    if isinstance(n, str):
        try:
            n = int(n)
        except ValueError:
            raise ConfigError(f"molecules must be a positive integer or 'auto', got {n!r}") from None
    if isinstance(n, (bool, float)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"molecules must be a positive integer or 'auto', got {n!r}")
    return int(n)


def describe(values: dict) -> str:
    """'forces_std_max=0.3 eV/Å, …' for messages (an adaptive threshold: its rule and value now)."""
    return ", ".join(f"{k}={v.spec() + ' (now ' if isinstance(v, AdaptiveThreshold) else ''}{v:.4g}"
                     f"{')' if isinstance(v, AdaptiveThreshold) else ''} {MEASURES[k].unit}"
                     for k, v in values.items())


def cli_limit_value(text: str):
    """argparse ``type=`` of a ``--threshold-…`` option: a number (float) or the text of an adaptive
    threshold (``q0.95:0.05:0.5``, checked by :func:`parse_limits`); anything else is argparse's
    ``invalid float value`` error (the function is named ``float`` for that message)."""
    if is_adaptive_text(text):
        return text.strip()
    return float(text)


cli_limit_value.__name__ = "float"


def check_energy_offsets(committee, thresholds: dict, caps: dict | None = None) -> bool:
    """Warn (OffsetWarning) when an energy measure is gated on a committee whose members come from
    different frameworks and carry no energy offsets (their energy spread then measures the
    offsets between members, not the uncertainty).  Returns True when it warned."""
    gated = [k for k in {**(thresholds or {}), **(caps or {})} if MEASURES[k].kind == "energy"]
    if not gated or not needs_offsets(committee):
        return False
    warnings.warn(f"{gated} gate(s) a committee whose members come from different frameworks "
                  f"({backends(committee)}) without energy offsets: the energy spread measures the "
                  "offsets between members, not the uncertainty. Fit offsets (committee-calibrate "
                  "--offsets) or gate on force measures (forces_std_max)", OffsetWarning, stacklevel=3)
    return True


# ---------------------------------------------------------------------- deciding
@dataclass(frozen=True)
class Decision:
    """What the measures say.

    trusted: the committee result may be used.
    stop: a hard cap is exceeded (nothing should be labelled).
    reason: one sentence.
    exceeded: measure keys above their thresholds (or caps when ``stop``).
    provenance: for a label: ``threshold_<key>`` (the threshold in force, internal units),
        ``threshold_rule_<key>`` (``fixed`` or the adaptive rule's state) and ``gate_reason``.
    """

    trusted: bool
    stop: bool
    reason: str
    exceeded: tuple = ()
    provenance: dict = field(default_factory=dict, compare=False)


def check_limits(thresholds: dict, caps: dict, logic: str = "any", molecules=None) -> None:
    """Validate a gate configuration (ConfigError): logic, caps ≥ thresholds, molecule count."""
    if logic not in LOGICS:
        raise ConfigError(f"logic must be one of {LOGICS}, got {logic!r}")
    for k, cap in caps.items():
        t = thresholds.get(k)
        if isinstance(t, AdaptiveThreshold) and cap < t.ceiling:
            raise ConfigError(f"the hard cap on {k} ({cap:.4g} {MEASURES[k].unit}) is below the ceiling "
                              f"of its adaptive threshold ({t.ceiling:.4g}); the cap must be the larger value")
        if t is not None and not isinstance(t, AdaptiveThreshold) and cap < t:
            raise ConfigError(f"the hard cap on {k} ({cap:.4g} {MEASURES[k].unit}) is below its "
                              f"threshold ({thresholds[k]:.4g}); the cap must be the larger value")
    need = [k for k in {**thresholds, **caps} if MEASURES[k].needs_molecules]
    if need and molecules is None:
        raise ConfigError(f"{need[0]} is per molecule: give a molecule count (--molecules N or "
                          "--molecules auto; molecules= in Python)")


def decide(measures: dict, thresholds: dict, caps: dict | None = None, logic: str = "any",
           finite: bool = True, threshold_scale: float = 1.0) -> Decision:
    """Decide from measures (internal units) — a pure function.

    1. ``finite=False`` (non-finite committee output): untrusted, caps not applied.
    2. A measure strictly above its cap (or missing/NaN): ``stop``.
    3. A measure *exceeds* its threshold when ``value > threshold`` (NaN exceeds);
       ``logic="any"``: one exceeding measure makes the result untrusted,
       ``"all"``: every thresholded measure must exceed.
    No thresholds: trusted.  ``threshold_scale`` multiplies every threshold (not the caps), e.g.
    a re-entry factor < 1 for hysteresis: a structure already on the reference returns to the
    committee only once its spread is below ``threshold × factor``.
    An adaptive threshold is taken at its current value, then observes the measure (the only
    state a decision changes).  ``provenance`` of the Decision records the thresholds in force.
    """
    if not finite:
        return Decision(False, False, "non-finite committee output")
    caps = caps or {}
    over_cap = {k: measures.get(k, math.nan) for k, c in caps.items()
                if not measures.get(k, math.nan) <= c}
    if over_cap:
        text = ", ".join(f"{k}={v:.4g} > {caps[k]:.4g} {MEASURES[k].unit}" for k, v in over_cap.items())
        return Decision(False, True, f"committee uncertainty above the hard cap: {text}",
                        tuple(over_cap))
    if not thresholds:
        return Decision(True, False, "no thresholds")
    adaptive = {k: t for k, t in thresholds.items() if isinstance(t, AdaptiveThreshold)}
    now = {k: (t.state() if k in adaptive else (t, "fixed")) for k, t in thresholds.items()}
    rules = {k: r for k, (_, r) in now.items()}
    thresholds = {k: float(v) * threshold_scale for k, (v, _) in now.items()}
    over = {k: not measures.get(k, math.nan) <= t for k, t in thresholds.items()}
    fall = any(over.values()) if logic == "any" else all(over.values())
    parts = [f"{k}={measures.get(k, math.nan):.4g} {'>' if over[k] else '<='} {t:.4g} "
             f"{MEASURES[k].unit}{' (adaptive)' if k in adaptive else ''}" for k, t in thresholds.items()]
    reason = f"{logic}: " + "; ".join(parts)
    for k, t in adaptive.items():
        t.observe(measures.get(k, math.nan), now[k][0])
    prov = {"gate_reason": reason}
    for k, t in thresholds.items():
        prov[f"threshold_{k}"], prov[f"threshold_rule_{k}"] = t, rules[k]
    return Decision(not fall, False, reason, tuple(k for k, o in over.items() if o), prov)


__all__ = ["Measure", "MEASURES", "LOGICS", "compute_measures", "parse_limits", "check_limits",
           "check_molecules", "describe", "Decision", "decide", "cli_limit_value", "check_energy_offsets",
           "AdaptiveThreshold", "OffsetWarning"]
