"""Unit conversion at the edges.  Internally everything is eV, Å, K, eV/Å³.

Energies given by users may carry a unit; per-molecule energies (the CSP
convention) are converted with an explicit molecule count.
"""
from __future__ import annotations

import math

from ase import units as _u

from .errors import UnitError

#: eV per 1 kJ/mol (per molecule / per formula unit).
KJMOL = _u.kJ / _u.mol
#: eV per 1 kcal/mol.
KCALMOL = _u.kcal / _u.mol
#: eV/Å³ per GPa.
GPA = _u.GPa
#: J/K/mol per eV/K (per formula unit)
JKMOL_PER_EVK = _u.mol / _u.J
#: kJ/mol per eV
EV_TO_KJMOL = 1.0 / KJMOL
#: g/cm³ per amu/Å³
AMU_PER_A3_TO_GCM3 = 1.66053906660  # CODATA 2018 amu in 1e-24 g
#: kJ/mol per eV as phonopy uses it (its thermal properties come in these units)
PHONOPY_EV_TO_KJMOL = 96.4853905398362
#: J/mol per eV as phonopy uses it
PHONOPY_EV_TO_JMOL = PHONOPY_EV_TO_KJMOL * 1e3
#: GPa per eV/Å³ as phonopy uses it
PHONOPY_EV_A3_TO_GPA = 160.21773299999998

ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1.0e-3,
    "kJ/mol": KJMOL,
    "kcal/mol": KCALMOL,
    "Hartree": _u.Hartree,
    "Ha": _u.Hartree,
    "Ry": _u.Rydberg,
}
LENGTH_UNITS = {"Angstrom": 1.0, "Å": 1.0, "A": 1.0, "Bohr": _u.Bohr, "nm": 10.0}
#: force units, eV/Å per unit
FORCE_UNITS = {"eV/Å": 1.0, "eV/A": 1.0, "meV/Å": 1.0e-3, "meV/A": 1.0e-3}
#: unit suffixes of keyword/CLI names (``energy_std_per_molecule_kjmol``), internal units per unit
ENERGY_SUFFIXES = {"eV": 1.0, "meV": 1.0e-3, "kjmol": KJMOL, "kcalmol": KCALMOL, "Ha": _u.Hartree}
FORCE_SUFFIXES = {"eVA": 1.0, "meVA": 1.0e-3}
PRESSURE_UNITS = {"eV/A^3": 1.0, "eV/Å³": 1.0, "GPa": GPA, "bar": _u.bar, "kbar": 1e3 * _u.bar}


def _lookup(table, unit, kind):
    try:
        return table[unit]
    except KeyError:
        raise UnitError(
            f"unknown {kind} unit {unit!r}; use one of {sorted(table)}"
        ) from None


def energy_factor(unit: str) -> float:
    """eV per one ``unit`` of energy."""
    return _lookup(ENERGY_UNITS, unit, "energy")


def length_factor(unit: str) -> float:
    """Å per one ``unit`` of length."""
    return _lookup(LENGTH_UNITS, unit, "length")


def force_factor(unit: str) -> float:
    """eV/Å per one ``unit`` of force."""
    return _lookup(FORCE_UNITS, unit, "force")


def pressure_factor(unit: str) -> float:
    """eV/Å³ per one ``unit`` of pressure."""
    return _lookup(PRESSURE_UNITS, unit, "pressure")


def kjmol_to_ev(value_kjmol: float) -> float:
    """kJ/mol -> eV (per molecule stays per molecule)."""
    return float(value_kjmol) * KJMOL


def ev_to_kjmol(value_ev: float) -> float:
    """eV -> kJ/mol."""
    return float(value_ev) / KJMOL


def gpa_to_ev_per_a3(value_gpa: float) -> float:
    return float(value_gpa) * GPA


def ev_per_a3_to_gpa(value: float) -> float:
    return float(value) / GPA


def check_positive(name: str, value, allow_zero: bool = False, allow_inf: bool = False) -> float:
    """Validate a threshold-like number: finite (unless allowed), > 0 (or >= 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UnitError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise UnitError(f"{name} must be finite, got {_show(value)}")
    if v < 0 or (v == 0 and not allow_zero):
        raise UnitError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {_show(value)}")
    return v


def _show(value) -> str:
    """``value`` as the user wrote it (numpy scalars as plain numbers, not ``np.float64(nan)``)."""
    return repr(value.item()) if hasattr(value, "item") and not isinstance(value, str) else repr(value)


def check_finite(name: str, value) -> float:
    """``value`` as a finite float (NaN/inf and non-numbers: UnitError naming ``name``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UnitError(f"{name} must be a number, got {_show(value)}") from None
    if not math.isfinite(v):
        raise UnitError(f"{name} must be finite, got {_show(value)}")
    return v


def check_count(name: str, value, minimum: int = 0) -> int:
    """``value`` as an integer >= ``minimum`` (a count, a seed, an interval); anything else
    (negative, fractional, not a number) is a UnitError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UnitError(f"{name} must be an integer >= {minimum}, got {_show(value)}") from None
    if not math.isfinite(v) or v != int(v) or int(v) < minimum:
        raise UnitError(f"{name} must be an integer >= {minimum}, got {_show(value)}")
    return int(v)
