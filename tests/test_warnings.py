"""Issue 18 item 1, quiet by default: the test configuration filters the third-party warnings the
drivers hide (one list each, kept in step), and our own warnings name what they are about."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from ase.build import bulk

from committee_calc import cli
from committee_calc.domain import DomainWarning, DomainWatch, parse_domain

ROOT = Path(__file__).resolve().parents[1]


def _filters() -> list:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["tool"]["pytest"]["ini_options"]["filterwarnings"]


def test_pytest_filters_cover_every_module_the_drivers_quiet():
    lines = _filters()
    missing = [m for m in cli.QUIET_MODULES if not any(f.endswith(f":{m}.*") for f in lines)]
    assert not missing, f"pyproject.toml filterwarnings lacks the driver-quieted modules {missing}"
    messages = [t for t in cli.QUIET_MESSAGES if not any(t.replace("[", "\\[") in f for f in lines)]
    assert not messages, messages


def test_our_warnings_stay_visible():
    """Nothing filters the warnings committee_calc emits on purpose."""
    ours = ("committee_calc", "QHAWarning", "PhononWarning", "DomainWarning", "OffsetWarning", "CommitteeWarning")
    assert not [f for f in _filters() if any(w in f for w in ours)]
    # CommitteeWarning is a RuntimeWarning: only message-specific RuntimeWarning filters (scipy's logm)
    assert not [f for f in _filters() if f.startswith("ignore::RuntimeWarning")]


def test_domain_warning_names_structure_measure_value_and_range():
    watch = DomainWatch(parse_domain({"volume_per_atom_A3": [10.0, 12.5]}), {})
    a = bulk("Cu", "fcc", a=3.2, cubic=True)  # 8.19 Å³/atom
    a.info["name"] = "cand-7"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch(a)
        watch(a)
    (w,) = [w for w in caught if issubclass(w.category, DomainWarning)]
    assert str(w.message).startswith("name cand-7: volume per atom 8.192 Å³/atom is outside the committee's "
                                     "training range [10, 12.5] Å³/atom (committee domain: volume_per_atom_A3)")
