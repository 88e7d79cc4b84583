"""Issue 18, CLI conventions: every option of every driver shows its default and its unit in
``--help``, one spelling per unit across all drivers, ``--version`` and ``--verbose`` everywhere.

The test walks every ``drivers/*.py`` that has ``build_parser()`` and formats each option's help
line with the drivers' own formatter (what ``--help`` prints)."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re

import pytest

import drivers
from committee_calc import __version__, cli

#: argparse types of numbers that are physical quantities (a float option needs a unit)
FLOAT_TYPES = (float, cli.finite_float, cli.positive_float, cli.nonnegative_float)
#: a float option without a unit suffix must say so in its help
UNITLESS = re.compile(r"dimensionless|no unit|unit of|same unit|factor|ratio|fraction|\[1\]|quantile|"
                      r"strength|probability|relative|count|\bunits?\b", re.I)
#: known gaps in drivers this change could not edit (none left)
KNOWN_GAPS: dict = {}


def _parsers():
    out = []
    for info in pkgutil.iter_modules(drivers.__path__):
        mod = importlib.import_module(f"drivers.{info.name}")
        if hasattr(mod, "build_parser"):
            out.append((info.name, mod.build_parser()))
    return out


PARSERS = _parsers()


def _options(parser):
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield action


def _help_line(parser, action) -> str:
    fmt = parser._get_formatter()
    return " ".join(fmt._format_action(action).split())


def test_every_driver_found():
    names = {n for n, _ in PARSERS}
    assert {"npt_md", "qha", "relax", "threshold_mc", "active_learn", "rerank", "campaign"} <= names


@pytest.mark.parametrize("name,parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_every_option_shows_default_and_unit(name, parser):
    missing_default, missing_unit = [], []
    for action in _options(parser):
        line = _help_line(parser, action)
        opt = action.option_strings[-1]
        flag = action.nargs == 0
        if not (flag or action.required or "default" in line.lower()):
            missing_default.append(opt)
        unit = cli.option_unit(*action.option_strings)
        if unit and unit not in line:
            missing_unit.append(opt)
        if action.type in FLOAT_TYPES and not unit and not UNITLESS.search(line) and "[" not in line:
            missing_unit.append(opt)
    assert not missing_default, f"{name}: options whose --help shows no default: {missing_default}"
    missing_unit = [o for o in missing_unit if o not in KNOWN_GAPS.get(name, ())]
    assert not missing_unit, f"{name}: options whose --help shows no unit: {missing_unit}"


def test_one_spelling_per_unit():
    """Each unit suffix of an option name is spelled one way across all drivers (``-eVA``, not
    ``-eV-A`` or ``-evA``), and every suffix that looks like a unit is a known one."""
    spellings = {}
    for _, parser in PARSERS:
        for action in _options(parser):
            tail = action.option_strings[0].rsplit("-", 1)[-1]
            if cli.option_unit(action.option_strings[0]):
                spellings.setdefault(tail.lower(), set()).add(tail)
            elif action.type in FLOAT_TYPES + (int, cli.positive_int, cli.nonnegative_int):
                assert tail.lower() not in {s.lower() for s in cli.UNIT_SUFFIXES}, \
                    f"{action.option_strings[-1]}: unit suffix {tail!r} is spelled {set(cli.UNIT_SUFFIXES)}"
    assert all(len(v) == 1 for v in spellings.values()), spellings
    assert {"K", "GPa", "eVA"} <= set().union(*spellings.values())


def test_threshold_energies_and_trust_windows_share_the_unit():
    """``--lower-trust``/``--upper-trust`` of committee-md say which unit they take."""
    parser = dict(PARSERS)["npt_md"]
    for action in _options(parser):
        if action.dest in ("lower_trust", "upper_trust"):
            assert "unit" in _help_line(parser, action)


@pytest.mark.parametrize("name,parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_version_and_verbose(name, parser, capsys):
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"{parser.prog} {__version__}"
    assert any("--verbose" in a.option_strings for a in parser._actions)


def test_trust_window_takes_the_threshold_unit_of_the_measure():
    """``--lower-trust 5 --select-measure energy_std_per_atom`` means 5 meV/atom, as
    ``--threshold-energy-std-per-atom-meV 5`` does; forces stay eV/Å."""
    from committee_calc.md.select import trust_from_option

    assert trust_from_option("energy_std_per_atom", 5) == pytest.approx(0.005)
    assert trust_from_option("forces_std_max", 0.2) == pytest.approx(0.2)
    assert trust_from_option("energy_std", 0.1) == pytest.approx(0.1)
    assert trust_from_option("forces_std_max", None) is None
