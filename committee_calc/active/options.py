"""Command-line options shared by the landscape drivers (``committee-learn``, ``committee-rerank``).

* :func:`add_landscape_arguments` / :func:`landscape_from_args` — the
  landscape file, its baseline keys and the molecule count (``auto``, an int,
  or ``none`` for per-atom energies);
* :func:`add_energy_option` — ``--NAME-kjmol`` (per molecule) and
  ``--NAME-mev-atom`` (per atom); :func:`energy_from_args` converts an energy
  through :mod:`committee_calc.units`, :func:`spread_from_args` an energy
  spread (threshold, σ cap) into gate limits through
  :func:`committee_calc.measures.parse_limits`;
* :func:`add_committee_source_arguments` / :func:`committee_from_args` —
  ``--committee`` YAML (``--delta``) or ``--learn-dir``.

These build only on the library (this package sits below :mod:`committee_calc.cli`).
"""
from __future__ import annotations

from .. import keys as K
from ..analysis.landscape import load_landscape
from ..config import load_committee
from ..errors import ConfigError
from ..measures import check_molecules, parse_limits
from ..units import energy_factor
from .trainers import committee_from_learn_dir

#: option suffix -> (landscape unit it needs, energy unit, measure of a spread in that unit)
_SUFFIXES = {"kjmol": ("molecule", "kJ/mol", K.ENERGY_STD_PER_MOLECULE + "_kjmol"),
             "mev_atom": ("atom", "meV", K.ENERGY_STD_PER_ATOM + "_meV")}


def add_landscape_arguments(p) -> None:
    p.add_argument("landscape", help="landscape file (extxyz, ASE db, folder) with baseline values")
    p.add_argument("--baseline-energy-key", default=K.BASELINE_ENERGY, help="info key of baseline energies [eV]")
    p.add_argument("--baseline-forces-key", default=K.BASELINE_FORCES, help="arrays key of baseline forces [eV/Å]")
    p.add_argument("--molecules", default="auto",
                   help="molecules per structure: 'auto', an int, or 'none' (per-atom energies)")


def landscape_from_args(args):
    """The :class:`~committee_calc.analysis.landscape.Landscape` of the landscape options."""
    mol = None if str(args.molecules).lower() == "none" else check_molecules(args.molecules)
    return load_landscape(args.landscape, baseline_energy_key=args.baseline_energy_key,
                          baseline_forces_key=args.baseline_forces_key, molecules=mol)


def add_energy_option(p, name: str, help: str = "") -> None:
    """``--NAME-kjmol`` [kJ/mol per molecule] and ``--NAME-meV-per-atom`` (old spelling ``--NAME-mev-atom``)
    [meV/atom] (dest ``NAME_kjmol``…)."""
    flag = name.replace("_", "-")
    p.add_argument(f"--{flag}-kjmol", dest=f"{name}_kjmol", type=float, default=None,
                   help=f"{help} [kJ/mol per molecule]")
    p.add_argument(f"--{flag}-meV-per-atom", f"--{flag}-mev-atom", dest=f"{name}_mev_atom", type=float, default=None,
                   help=f"{help} [meV/atom]")


def _given(args, name, unit):
    """(suffix, value) of the one ``--NAME-…`` option given, checked against the landscape unit."""
    flag = "--" + name.replace("_", "-")
    given = [(s, getattr(args, f"{name}_{s}")) for s in _SUFFIXES if getattr(args, f"{name}_{s}") is not None]
    if len(given) > 1:
        raise ConfigError(f"give {flag}-kjmol or {flag}-mev-atom, not both")
    if not given:
        return None
    suffix, value = given[0]
    if _SUFFIXES[suffix][0] != unit:
        hint = "--molecules auto/N" if suffix == "kjmol" else "--molecules none"
        raise ConfigError(f"{flag}-{suffix.replace('_', '-')} is per {_SUFFIXES[suffix][0]}; use {hint}")
    return suffix, value


def energy_from_args(args, name: str, unit: str):
    """Energy of ``--NAME-kjmol``/``--NAME-mev-atom`` in eV per ``unit`` (None if not given)."""
    given = _given(args, name, unit)
    return None if given is None else given[1] * energy_factor(_SUFFIXES[given[0]][1])


def spread_from_args(args, name: str, unit: str, limits=None) -> dict:
    """Energy spread of ``--NAME-kjmol``/``--NAME-mev-atom`` as gate limits
    ``{energy_std_per_molecule | energy_std_per_atom: eV per unit}``, merged into ``limits``
    (internal units, e.g. the shared ``--threshold-…`` options); ConfigError when the same
    measure is given twice."""
    given = _given(args, name, unit)
    extra = {} if given is None else {_SUFFIXES[given[0]][2]: given[1]}
    return parse_limits(limits, what="--" + name.replace("_", "-"), **extra)


def add_committee_source_arguments(p) -> None:
    """``--committee`` YAML (with ``--delta``) or ``--learn-dir``, one of them required."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--committee", help="committee YAML")
    g.add_argument("--learn-dir", help="output folder of committee-learn")
    p.add_argument("--delta", action="store_true", help="with --committee: it predicts reference − baseline")


def committee_from_args(args) -> tuple:
    """``(committee, delta)`` from ``--committee``/``--delta`` or ``--learn-dir``."""
    if args.committee:
        return load_committee(args.committee), bool(args.delta)
    return committee_from_learn_dir(args.learn_dir)


def check_experimental(landscape, names) -> list:
    """``names`` (``--experimental``) as strings, each the name of a structure of
    ``landscape``; ConfigError naming the unknown ones (a typo would silently mark nothing)."""
    names = [str(n) for n in names or ()]
    unknown = sorted(set(names) - set(landscape.names))
    if unknown:
        shown = ", ".join(landscape.names[:10]) + (" …" if len(landscape.names) > 10 else "")
        raise ConfigError(f"--experimental names {unknown} are not structures of the landscape "
                          f"(its names: {shown}); use the names in the file's 'name' info")
    return names
