"""The uncertainty gate: committee when trusted, reference (DFT) otherwise, label the rest.

::

    gate = Gate(committee, reference, thresholds={"energy_std_per_atom": 0.005}, logic="any",
                hard_cap=None, label_store="labels.extxyz", provenance={"driver": "relax"},
                retrain=None, retrain_every=None)
    atoms.calc = gate                  # on the driver's own atoms: any ASE driver works
    res = gate.evaluate(atoms, step=None, info=None)   # -> GateResult

Measures (internal units; the keys of ``thresholds``/``hard_cap``)
    ``energy_std`` [eV], ``energy_std_per_atom`` [eV/atom],
    ``energy_std_per_molecule`` [eV/molecule], ``forces_std_max`` [eV/Å],
    ``force_uncertainty_relative`` [1].  Values may also be strings with a unit
    (``"2 kJ/mol"``, ``"5 meV"``, ``"0.1 eV/A"``); :func:`thresholds_from_units`
    converts keyword arguments such as ``energy_std_per_molecule_kjmol=2.0``.
    The reserved key ``n_molecules`` (int or ``"auto"``) in ``thresholds`` gives
    the molecule count for the per-molecule measure when the committee has none.

Without thresholds (``thresholds=None``; ``reference`` may then be None) the
gate always answers with the committee and only the hard cap acts; non-finite
output then raises :class:`~committee_calc.errors.NonFiniteOutputError`.

Decision per call
    1. The committee is evaluated on a private copy of the atoms.  Output that
       is not finite (``NonFiniteOutputError``, ``n_nonfinite > 0`` or NaN/inf
       in energy/forces/stress) always falls back to the reference (the hard
       cap is not applied to it).
    2. ``hard_cap`` (any measure strictly above its cap) raises
       :class:`~committee_calc.errors.GateStop`; nothing is labelled.
    3. A measure *exceeds* its threshold when ``value > threshold``.  With
       ``logic="any"`` one exceeding measure falls back, with ``"all"`` every
       thresholded measure must exceed.
    4. Fallback: the reference runs (fresh instance, optional timeout, see
       :mod:`committee_calc.reference`); on failure
       :class:`~committee_calc.errors.ReferenceCalculationError` propagates and
       the store is unchanged.  On success the label (reference values, the
       committee prediction/uncertainty, provenance) is appended to the store.
    5. Every ``retrain_every`` new labels, ``retrain(label_store.path)`` is
       called; the committee it returns replaces ``gate.committee``.  If the
       callback raises, a RuntimeWarning is issued and the old committee kept
       (``retrain_errors="raise"`` re-raises instead).

``gate.results`` (after an ASE call) holds ``energy``, ``free_energy``,
``forces``, (``stress``) of the result used, plus ``gate_decision``
(``"committee"``/``"reference"``), ``gate_reason`` (str), ``gate_measures``
(dict) and the committee's uncertainty keys whenever the committee was
evaluated.  Counters: ``n_calls`` (gate evaluations), ``n_committee_calls``
(committee evaluations, i.e. every call), ``n_trusted`` (calls answered by the
committee), ``n_reference_calls``, ``n_labels``, ``n_retrains``.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .errors import ConfigError, GateStop, NonFiniteOutputError, UnitError
from .units import check_positive, energy_factor

#: measure -> internal unit
MEASURES = {
    "energy_std": "eV",
    "energy_std_per_atom": "eV/atom",
    "energy_std_per_molecule": "eV/molecule",
    "forces_std_max": "eV/Å",
    "force_uncertainty_relative": "1",
}
_ENERGY_MEASURES = ("energy_std", "energy_std_per_atom", "energy_std_per_molecule")
#: keyword suffix -> eV (or eV/Å) per unit, for thresholds_from_units
_SUFFIX = {"eV": 1.0, "meV": 1e-3, "kjmol": energy_factor("kJ/mol"),
           "kcalmol": energy_factor("kcal/mol"), "Ha": energy_factor("Hartree")}
_FORCE_SUFFIX = {"eVA": 1.0, "meVA": 1e-3, "eV_A": 1.0, "meV_A": 1e-3}
_COMMITTEE_KEYS = ("energy_members", "forces_members", "stress_members", "energy_std",
                   "energy_std_per_atom", "energy_std_per_molecule", "n_molecules", "forces_std",
                   "forces_std_atom", "forces_std_max", "force_uncertainty_relative", "stress_std",
                   "energies_std", "n_nonfinite")


def thresholds_from_units(n_molecules=None, **kwargs) -> dict:
    """Thresholds in internal units from ``<measure>_<unit>`` keyword arguments.

    Energy units: ``eV``, ``meV``, ``kjmol``, ``kcalmol``, ``Ha``
    (e.g. ``energy_std_per_atom_meV=5``, ``energy_std_per_molecule_kjmol=2``);
    force units: ``eVA``, ``meVA`` (``forces_std_max_eVA=0.1``);
    ``force_uncertainty_relative`` takes no unit.  A per-molecule threshold
    stays per molecule: 2 kJ/mol per molecule = 2 × 0.0103643 = 0.0207285 eV
    per molecule, i.e. a total ``energy_std`` of 0.0829 eV on a 4-molecule
    cell.  ``n_molecules`` (int or ``"auto"``) is carried in the result so the
    gate can form the per-molecule measure.  Unknown names/units and
    negative or non-finite values raise :class:`UnitError`.
    """
    out = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if key == "force_uncertainty_relative":
            out[key] = check_positive(key, value)
            continue
        for measure in sorted(MEASURES, key=len, reverse=True):
            if key.startswith(measure + "_"):
                unit = key[len(measure) + 1:]
                table = _FORCE_SUFFIX if measure == "forces_std_max" else _SUFFIX
                if unit not in table:
                    raise UnitError(f"unknown unit suffix {unit!r} in {key!r}; use one of "
                                    f"{sorted(table)} (e.g. {measure}_{sorted(table)[0]})")
                out[measure] = check_positive(key, value) * table[unit]
                break
        else:
            raise UnitError(f"unknown threshold {key!r}; use <measure>_<unit> with measure in "
                            f"{sorted(MEASURES)}")
    if n_molecules is not None:
        out["n_molecules"] = _check_molecules(n_molecules)
    return out


def _check_molecules(n):
    if n == "auto":
        return n
    if isinstance(n, (bool, float)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n_molecules must be a positive int or 'auto', got {n!r}")
    return int(n)


_VALUE_UNIT = re.compile(r"^\s*([-+0-9.eE]+)\s*([^\s].*)?$")


def parse_threshold(name: str, value) -> float:
    """One threshold in internal units; ``value`` is a number or ``"<number> <unit>"``."""
    if name not in MEASURES:
        raise ConfigError(f"unknown gate measure {name!r}; use one of {sorted(MEASURES)}")
    if isinstance(value, str):
        m = _VALUE_UNIT.match(value)
        if not m:
            raise UnitError(f"cannot read threshold {name}={value!r}; write e.g. '2 kJ/mol'")
        number, unit = m.group(1), (m.group(2) or "").strip()
        unit = unit.split("/atom")[0].split("/molecule")[0].split(" per ")[0].strip()
        if not unit:
            factor = 1.0
        elif name == "forces_std_max":
            table = {"eV/A": 1.0, "eV/Å": 1.0, "meV/A": 1e-3, "meV/Å": 1e-3}
            if unit not in table:
                raise UnitError(f"unknown force unit {unit!r} for {name}; use {sorted(table)}")
            factor = table[unit]
        elif name == "force_uncertainty_relative":
            raise UnitError(f"{name} is dimensionless; give a plain number, not {value!r}")
        else:
            factor = energy_factor(unit)
        return check_positive(name, number) * factor
    return check_positive(name, value)


def _parse_dict(d, what) -> tuple:
    if d is None:
        return {}, None
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a dict like {{'energy_std_per_atom': 0.005}}, got {d!r}")
    d = dict(d)
    nmol = d.pop("n_molecules", None)
    return {k: parse_threshold(k, v) for k, v in d.items()}, nmol


def compute_measures(results: dict, natoms: int, n_molecules=None) -> dict:
    """The gate measures (internal units) from committee results."""
    e = float(results["energy_std"])
    out = {"energy_std": e, "energy_std_per_atom": e / max(natoms, 1),
           "forces_std_max": float(results["forces_std_max"]),
           "force_uncertainty_relative": float(results["force_uncertainty_relative"])}
    if "energy_std_per_molecule" in results:
        out["energy_std_per_molecule"] = float(results["energy_std_per_molecule"])
    elif n_molecules:
        out["energy_std_per_molecule"] = e / n_molecules
    return out


@dataclass(frozen=True)
class GateResult:
    """Outcome of one gate evaluation.

    decision: "committee" | "reference"; reason: human-readable why;
    measures: {measure: value} in internal units (empty if not computable);
    results: the result used (energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³], ...);
    committee_results: the committee's schema dict, or None if it failed;
    label_index: index in the label store of the appended label, or None;
    reference_failed: always False on a returned result (a failure raises).
    """

    decision: str
    reason: str
    measures: dict
    results: dict
    committee_results: dict | None
    label_index: int | None = None
    reference_failed: bool = False


class Gate(Calculator):
    """ASE calculator that trusts the committee below thresholds (module docstring)."""

    implemented_properties = ("energy", "free_energy", "forces", "stress", "gate_decision",
                              "gate_reason", "gate_measures") + _COMMITTEE_KEYS
    default_parameters: dict = {}

    def __init__(self, committee, reference=None, thresholds=None, logic="any", hard_cap=None,
                 label_store=None, provenance=None, retrain=None, retrain_every=None,
                 molecules=None, stress="auto", retrain_errors="warn", **kwargs):
        super().__init__(**kwargs)
        from .labels import LabelStore
        from .reference import as_reference

        if not hasattr(committee, "calculate") or not hasattr(committee, "results"):
            raise ConfigError(f"committee must be a CommitteeCalculator-like calculator, got {committee!r}")
        self.committee = committee
        self.thresholds, nmol = _parse_dict(thresholds, "thresholds")
        if self.thresholds and reference is None:
            raise ConfigError("thresholds need a reference calculator to fall back to; pass "
                              "reference= (an ASE calculator, ReferenceSpec or YAML path)")
        self.hard_cap, nmol_cap = _parse_dict(hard_cap, "hard_cap")
        for k, cap in self.hard_cap.items():
            if k in self.thresholds and cap < self.thresholds[k]:
                raise ConfigError(f"hard_cap[{k!r}]={cap} is below its threshold "
                                  f"{self.thresholds[k]}; the cap must be the larger value")
        if logic not in ("any", "all"):
            raise ConfigError(f"logic must be 'any' or 'all', got {logic!r}")
        self.logic = logic
        mol = molecules if molecules is not None else (nmol if nmol is not None else nmol_cap)
        self.molecules = _check_molecules(mol) if mol is not None else None
        needs_mol = "energy_std_per_molecule" in set(self.thresholds) | set(self.hard_cap)
        if needs_mol and self.molecules is None and getattr(committee, "molecules", None) is None:
            raise ConfigError("a per-molecule threshold needs a molecule count: pass "
                              "n_molecules (thresholds_from_units), molecules= or a committee "
                              "built with molecules=")
        if stress not in ("auto", True, False):
            raise ConfigError(f"stress must be 'auto', True or False, got {stress!r}")
        self.stress_mode = stress
        if label_store is not None and not isinstance(label_store, LabelStore):
            label_store = LabelStore(label_store)
        self.label_store = label_store
        failed = label_store.path.parent / "failed" if label_store is not None else None
        self.reference = None if reference is None else as_reference(reference, failed_dir=failed)
        self.provenance = dict(provenance or {})
        if (retrain is None) != (retrain_every is None):
            raise ConfigError("give both retrain (a callable) and retrain_every (labels), or neither")
        if retrain is not None:
            if not callable(retrain):
                raise ConfigError("retrain must be callable(label_file) -> committee")
            if label_store is None:
                raise ConfigError("retraining needs a label_store to train on")
            if isinstance(retrain_every, bool) or int(retrain_every) != retrain_every or retrain_every < 1:
                raise ConfigError(f"retrain_every must be a positive int, got {retrain_every!r}")
        if retrain_errors not in ("warn", "raise"):
            raise ConfigError("retrain_errors must be 'warn' or 'raise'")
        self.retrain, self.retrain_every, self.retrain_errors = retrain, retrain_every, retrain_errors
        self.step = None
        self.n_calls = self.n_committee_calls = self.n_trusted = 0
        self.n_reference_calls = self.n_labels = self.n_retrains = 0
        self._labels_since_retrain = 0
        self._nmol_cache = (None, None)
        self.last = None

    # ------------------------------------------------------------------
    def _n_molecules(self, atoms):
        if self.molecules is None or self.molecules != "auto":
            return self.molecules
        key = tuple(atoms.numbers)
        if self._nmol_cache[0] != key:
            from .molecules import count_molecules

            self._nmol_cache = (key, count_molecules(atoms))
        return self._nmol_cache[1]

    def _want_stress(self, atoms, properties) -> bool:
        if any(p == "stress" for p in properties):
            return True
        periodic = bool(np.all(atoms.pbc)) and atoms.cell.rank == 3
        if self.stress_mode is True or (self.stress_mode == "auto" and periodic):
            return "stress" in getattr(self.committee, "implemented_properties", ())
        return False

    def _run_committee(self, atoms, stress):
        copy = atoms.copy()
        copy.calc = None
        props = ["energy", "forces"] + (["stress"] if stress else [])
        self.n_committee_calls += 1
        try:
            self.committee.calculate(copy, props, all_changes)
        except NonFiniteOutputError as exc:
            return None, f"non-finite committee output ({exc})"
        res = dict(self.committee.results)
        bad = [k for k in ("energy", "forces", "stress") if k in res and not np.all(np.isfinite(res[k]))]
        if res.get("n_nonfinite", 0) or bad:
            return res, f"non-finite committee output ({res.get('n_nonfinite', 0)} members; {bad})"
        return res, None

    def evaluate(self, atoms, step=None, info=None, properties=("energy", "forces")) -> GateResult:
        """Gate one structure (``atoms`` is not modified); see module docstring."""
        self.n_calls += 1
        stress = self._want_stress(atoms, properties)
        com, nonfinite = self._run_committee(atoms, stress)
        measures, label_index = {}, None
        if com is not None:
            measures = compute_measures(com, len(atoms), self._n_molecules(atoms))
        if nonfinite:
            decision, reason = "reference", nonfinite
        else:
            capped = {k: measures[k] for k, cap in self.hard_cap.items() if measures[k] > cap}
            if capped:
                raise GateStop(
                    "committee uncertainty above the hard cap: " + ", ".join(
                        f"{k}={v:.4g} > {self.hard_cap[k]:.4g} {MEASURES[k]}" for k, v in capped.items())
                    + "; the structure is too far from the training data to label. Stop here, "
                    "or raise hard_cap")
            over = {k: measures[k] > t for k, t in self.thresholds.items()}
            fall = any(over.values()) if self.logic == "any" else all(over.values())
            parts = [f"{k}={measures[k]:.4g} {'>' if over[k] else '<='} {t:.4g} {MEASURES[k]}"
                     for k, t in self.thresholds.items()]
            decision = "reference" if fall and parts else "committee"
            reason = f"{self.logic}: " + "; ".join(parts) if parts else "no thresholds"
        if decision == "committee":
            self.n_trusted += 1
            results = dict(com)
        else:
            if self.reference is None:
                raise NonFiniteOutputError(f"{reason}, and the gate has no reference to fall "
                                           "back to; give it a reference calculator")
            ref = self.reference.compute(atoms, ["energy", "forces"] + (["stress"] if stress else []))
            self.n_reference_calls += 1
            results = {k: v for k, v in (com or {}).items() if k in _COMMITTEE_KEYS}
            results.update(ref)
            if self.label_store is not None:
                label_index = self._append_label(atoms, ref, com, step, info)
        results.update(gate_decision=decision, gate_reason=reason, gate_measures=dict(measures))
        out = GateResult(decision, reason, dict(measures), results, com, label_index)
        self.last = out
        if label_index is not None:
            self._maybe_retrain()
        return out

    def _append_label(self, atoms, ref, com, step, info):
        prov = dict(self.provenance)
        prov.update(step=step if step is not None else (self.step if self.step is not None
                                                        else self.n_calls - 1),
                    reference=self.reference.name, reference_hash=self.reference.hash)
        if info:
            prov.update(info)
        base = None
        if com is not None and "baseline_energy" in com:
            base = {"energy": com["baseline_energy"], "forces": com.get("baseline_forces"),
                    "stress": com.get("baseline_stress")}
        idx = self.label_store.append(atoms, ref, committee_results=com, provenance=prov,
                                      baseline_results=base)
        if not self.label_store.last_was_duplicate:
            self.n_labels += 1
            self._labels_since_retrain += 1
        return idx

    def _maybe_retrain(self):
        if self.retrain is None or self._labels_since_retrain < self.retrain_every:
            return
        self._labels_since_retrain = 0
        try:
            new = self.retrain(str(self.label_store.path))
            if not hasattr(new, "calculate") or not hasattr(new, "results"):
                raise ConfigError(f"retrain callback returned {new!r}, not a committee calculator")
        except Exception as exc:  # noqa: BLE001
            if self.retrain_errors == "raise":
                raise
            warnings.warn(f"retraining failed ({type(exc).__name__}: {exc}); keeping the "
                          "current committee", RuntimeWarning, stacklevel=3)
            return
        self.committee = new
        self.n_retrains += 1

    # ------------------------------------------------------------------ ASE interface
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        res = self.evaluate(self.atoms, step=self.step, properties=properties)
        self.results = dict(res.results)

    def __repr__(self):
        return (f"Gate({self.committee!r}, reference={self.reference!r}, thresholds="
                f"{self.thresholds}, logic={self.logic!r})")


__all__ = ["Gate", "GateResult", "thresholds_from_units", "parse_threshold", "compute_measures",
           "MEASURES"]
