"""The committee's recorded domain and trust: warn when a committee-only run leaves them.

A committee YAML may carry (:mod:`committee_calc.config`)::

    trust:                          # calibrated thresholds, internal units
      forces_std_max: 0.12          # eV/Å, max_i ‖σ_F,i‖
      energy_std_per_atom: 0.004    # eV/atom
      source: 95th percentile on data/heldout.extxyz   # free text
    domain:                         # the training set's ranges (record_domain)
      elements: [Si]
      volume_per_atom_A3: [16.9, 24.1]   # Å³/atom, min and max
      pressure_GPa: [-8.2, 14.5]         # GPa, min and max (from the reference stress)
      source: data/seed.extxyz (130 frames)

* :func:`parse_trust`, :func:`parse_domain` check the blocks (:class:`~committee_calc.errors.ConfigError`
  naming the key and the fix).
* :func:`record_domain` computes the ``domain:`` block from training frames;
  :func:`committee_calc.config.write_domain` writes it (and optionally ``trust:``) into a committee YAML.
* :class:`DomainWatch` checks every structure a committee evaluates (the committee calls it with the
  structure and the member predictions: elements, volume per atom, pressure) and warns with a
  :class:`DomainWarning` once per structure and measure, naming the measure, the value and the
  recorded range.  The trust thresholds need the aggregated (calibrated) spreads:
  :func:`check_results` takes them: a committee-only :class:`~committee_calc.gate.Gate`
  calls it with the measures it computed for every structure (the members' hook does not
  aggregate).  A structure is named by ``info['candidate']``/``'candidate_id'``/``'name'``/``'id'``
  when present, else its reduced formula (an MD trajectory, the volumes and displaced supercells
  of one QHA scan are one structure).
* :func:`watch` switches the check on for a committee (the command-line builder does so for every
  run without a reference: committee-only runs).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from . import keys as K
from .errors import ConfigError
from .structures import is_bulk
from .units import ev_per_a3_to_gpa

#: trust measures a committee YAML may carry -> (unit, description)
TRUST_MEASURES = {K.FORCES_STD_MAX: ("eV/Å", "max atomic force spread"),
                  K.ENERGY_STD_PER_ATOM: ("eV/atom", "energy spread per atom")}
#: domain ranges -> (unit, description)
RANGES = {"volume_per_atom_A3": ("Å³/atom", "volume per atom"), "pressure_GPa": ("GPa", "pressure")}
DOMAIN_KEYS = {"elements", "source", *RANGES}
_NAME_KEYS = ("candidate", "candidate_id", "name", "id")


class DomainWarning(UserWarning):
    """A committee-only run evaluates a structure outside the committee's recorded domain or
    above its calibrated trust thresholds: the numbers there are extrapolations."""


def parse_trust(block) -> dict:
    """``trust:`` block -> {measure: threshold float, internal units}; None -> {}."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"committee 'trust:' must be a mapping of measure: threshold, got {block!r}")
    out = {}
    for key, value in block.items():
        if key == "source":  # where the thresholds come from (free text)
            continue
        if key not in TRUST_MEASURES:
            raise ConfigError(f"unknown trust measure {key!r} in the committee YAML; known: "
                              f"{sorted(TRUST_MEASURES)} (internal units eV/Å, eV/atom)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or not math.isfinite(value):
            raise ConfigError(f"trust {key}: {value!r} must be a positive number "
                              f"[{TRUST_MEASURES[key][0]}]")
        out[key] = float(value)
    return out


def parse_domain(block) -> dict:
    """``domain:`` block -> {"elements": set or None, range key: (lo, hi)}; None -> {}."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"committee 'domain:' must be a mapping, got {block!r}")
    unknown = set(block) - DOMAIN_KEYS
    if unknown:
        raise ConfigError(f"unknown committee domain keys {sorted(unknown)}; known: {sorted(DOMAIN_KEYS)}")
    out: dict = {}
    if block.get("elements") is not None:
        elements = block["elements"]
        if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
            raise ConfigError(f"domain elements must be a list of element symbols, got {elements!r}")
        out["elements"] = set(elements)
    for key in RANGES:
        if block.get(key) is None:
            continue
        value = block[key]
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"domain {key}: {value!r} must be [min, max] [{RANGES[key][0]}]") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ConfigError(f"domain {key}: {value!r} must be finite with min <= max")
        out[key] = (lo, hi)
    return out


def _pressure_gpa(stress) -> float:
    """Pressure [GPa] of a Voigt (6,) or 3×3 stress [eV/Å³] (ASE sign: P = -trace/3)."""
    s = np.asarray(stress, dtype=float)
    diag = np.diag(s) if s.shape == (3, 3) else s.reshape(-1)[:3]
    return float(ev_per_a3_to_gpa(-diag.mean()))


def _reference_stress(atoms, stress_key: str):
    if stress_key in atoms.info:
        return atoms.info[stress_key]
    if atoms.calc is not None and "stress" in getattr(atoms.calc, "results", {}):
        return atoms.calc.results["stress"]
    return None


def record_domain(frames, stress_key: str = "REF_stress", source: str | None = None) -> dict:
    """The ``domain:`` block of training ``frames`` (ASE Atoms): elements, the range of volume
    per atom [Å³/atom] over the 3-D periodic frames and of pressure [GPa] from their reference
    stress (``info[stress_key]``, Voigt or 3×3 eV/Å³, or a stored calculator's stress).  Ranges
    without any frame are left out.  Raises ConfigError for no frames."""
    frames = list(frames)
    if not frames:
        raise ConfigError("record_domain needs at least one training frame")
    bulk = [a for a in frames if is_bulk(a)]
    out: dict = {"elements": sorted({s for a in frames for s in a.get_chemical_symbols()})}
    if bulk:
        v = [a.get_volume() / len(a) for a in bulk]
        out["volume_per_atom_A3"] = [round(float(min(v)), 3), round(float(max(v)), 3)]
    p = [_pressure_gpa(s) for s in (_reference_stress(a, stress_key) for a in bulk) if s is not None]
    if p:
        out["pressure_GPa"] = [round(float(min(p)), 3), round(float(max(p)), 3)]
    out["source"] = source or f"{len(frames)} frames"
    return out


def _structure_name(atoms) -> str:
    for key in _NAME_KEYS:
        value = atoms.info.get(key)
        if value is not None and not isinstance(value, (dict, list, np.ndarray)):
            return f"{key} {value}"
    return atoms.get_chemical_formula(empirical=True)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class DomainWatch:
    """Checks structures against ``domain`` (:func:`parse_domain`) and ``trust``
    (:func:`parse_trust`) and warns once per structure and measure (module docstring).

    pressure: False for a committee whose stress is not the total (a Δ-learning correction).
    ``warned``: the (structure, measure) pairs warned about so far; ``n_checked``: structures seen.
    """

    def __init__(self, domain: dict, trust: dict, pressure: bool = True):
        self.domain, self.trust, self.pressure = dict(domain), dict(trust), pressure
        self.warned: set = set()
        self.messages: list = []  # every warning given, in order (for summary.md)
        self.n_checked = 0

    def measures(self, atoms, predictions=None, results=None) -> dict:
        """{measure: (value, allowed (lo, hi), unit, description)} for every measure that can be
        computed for ``atoms`` (``predictions``: the members' dicts, for the pressure; ``results``:
        the committee's aggregated results, for the trust thresholds); elements give (sorted
        unknown symbols, recorded symbols, "", ...)."""
        out: dict = {}
        if "elements" in self.domain:
            out["elements"] = (sorted(set(atoms.get_chemical_symbols()) - self.domain["elements"]),
                               sorted(self.domain["elements"]), "", "elements")
        bulk = is_bulk(atoms)
        if bulk and "volume_per_atom_A3" in self.domain:
            out["volume_per_atom_A3"] = (atoms.get_volume() / len(atoms), self.domain["volume_per_atom_A3"],
                                         *RANGES["volume_per_atom_A3"])
        preds = predictions or []
        if bulk and self.pressure and "pressure_GPa" in self.domain and preds \
                and all("stress" in p for p in preds):
            p = float(np.mean([_pressure_gpa(q["stress"]) for q in preds]))
            out["pressure_GPa"] = (p, self.domain["pressure_GPa"], *RANGES["pressure_GPa"])
        if self.trust and results:
            for key, limit in self.trust.items():
                if results.get(key) is not None:
                    out[key] = (float(results[key]), (0.0, limit), *TRUST_MEASURES[key])
        return out

    def __call__(self, atoms, predictions=None, committee=None, results=None) -> list:
        """Check one structure (the committee's hook passes the members' ``predictions`` and
        itself; ``results``: aggregated committee results, for the trust thresholds); warn for each
        measure outside its range not yet warned about for this structure.  Returns the messages
        warned now."""
        self.n_checked += 1
        name = _structure_name(atoms)
        said = []
        for key, (value, allowed, unit, what) in self.measures(atoms, predictions, results).items():
            if (name, key) in self.warned:
                continue
            if key == "elements":
                if not value:
                    continue
                text = (f"{name}: elements {value} are not in the committee's training set "
                        f"(domain elements {allowed})")
            elif allowed[0] <= value <= allowed[1]:
                continue
            elif key in self.trust:
                text = (f"{name}: {what} {_fmt(value)} {unit} is above the committee's calibrated "
                        f"trust threshold {_fmt(allowed[1])} {unit} (committee trust: {key})")
            else:
                text = (f"{name}: {what} {_fmt(value)} {unit} is outside the committee's training "
                        f"range [{_fmt(allowed[0])}, {_fmt(allowed[1])}] {unit} (committee domain: {key})")
            self.warned.add((name, key))
            said.append(text)
            self.messages.append(text)
            warnings.warn(text + "; the committee extrapolates here (committee-only run: nothing "
                          "checks it; give --reference and thresholds to label such structures)",
                          DomainWarning, stacklevel=4)
        return said


def check_results(committee, atoms, results) -> list:
    """Check the aggregated committee ``results`` of ``atoms`` against the trust thresholds of a
    watched ``committee`` (:func:`watch`); [] when it is not watched.  Returns the messages warned."""
    w = getattr(_inner(committee), "domain_watch", None)
    if w is None or not w.trust:
        return []
    keep, seen = w.domain, w.n_checked
    w.domain = {}  # the domain measures were checked (and the structure counted) by the members' hook already
    try:
        return w(atoms, None, None, results)
    finally:
        w.domain, w.n_checked = keep, seen


def _inner(committee):
    """The CommitteeCalculator under a Δ-learning wrapper (``.committee``), else ``committee``."""
    inner = getattr(committee, "committee", None)
    return inner if inner is not None and hasattr(inner, "members") else committee


def watch(committee) -> DomainWatch | None:
    """Switch the domain/trust check on for ``committee`` (a CommitteeCalculator or a Δ-learning
    calculator built by :mod:`committee_calc.config` with ``domain:``/``trust:`` blocks): every
    structure it evaluates from now on is checked.  Returns the watch, or None when the committee
    records neither block."""
    inner = _inner(committee)
    domain, trust = getattr(inner, "domain", None) or {}, getattr(inner, "trust", None) or {}
    if not domain and not trust:
        return None
    w = DomainWatch(domain, trust, pressure=inner is committee)
    inner.domain_watch = w
    return w


def unwatch(committee) -> None:
    """Switch the check off again."""
    _inner(committee).domain_watch = None


__all__ = ["DomainWarning", "DomainWatch", "check_results", "parse_domain", "parse_trust", "record_domain", "watch",
           "unwatch", "TRUST_MEASURES", "RANGES"]
