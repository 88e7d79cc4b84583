"""Shared command-line plumbing: every driver builds committee, reference, gate and
label store here, from the same options, and runs through :func:`run_cli`.

* :func:`add_committee_arguments`, :func:`add_gate_arguments`, :func:`add_output_argument`
  add the shared options; threshold and cap options are generated from
  :data:`committee_calc.measures.MEASURES` (``--threshold-<measure>-<unit>``,
  ``--cap-<measure>-<unit>``), so a new measure reaches every driver.
* :func:`limits_from_args` turns them into internal units through
  :func:`committee_calc.measures.parse_limits` (the one parser).
* :func:`build_gate` returns the :class:`~committee_calc.gate.Gate` — the one
  evaluator — with its reference, label store, molecules and retraining.
* :class:`ArgumentParser` (argparse with the same ``error:`` line) and :func:`check_outputs`
  (``--out`` and ``--labels`` can be created; nothing is created) are used by every driver
  before any work.
* :data:`nonnegative_int`, :data:`positive_int`, :data:`finite_float`, :data:`positive_float`,
  :data:`nonnegative_float`: argparse ``type=`` checks (seeds, counts, pressures, times).
* :func:`run_cli` maps committee_calc errors (and OSErrors) to one ``error:`` line and exit 2,
  and hides known third-party warnings unless ``COMMITTEE_CALC_VERBOSE=1``.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from .config import load_committee
from .errors import CommitteeError, ConfigError, GateStop
from .fileio import check_dir
from .gate import Gate
from .imports import import_object
from .measures import MEASURES, check_molecules, parse_limits
from .reference import load_reference
from .train import committee_retrainer
from .units import check_count, check_finite, check_positive

log = logging.getLogger("committee_calc")

LIMIT_KINDS = ("threshold", "cap")
#: warnings of these frameworks are hidden by :func:`run_cli` (``COMMITTEE_CALC_VERBOSE=1`` shows them)
QUIET_MODULES = ("e3nn", "torch", "torch_geometric", "mace", "phonopy", "spglib", "ase.md")
QUIET_CATEGORIES = (DeprecationWarning, FutureWarning, UserWarning)
QUIET_MESSAGES = ("The TorchScript type system",)  # attributed to the stdlib module ast


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors end, like every other refusal, with one ``error:`` line
    (after the usage) and exit code 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {self.prog}: {' '.join(str(message).split())}\n")


def _arg_type(check, label: str):
    """An argparse ``type=`` that runs ``check(name, text)`` (a :mod:`committee_calc.units`
    checker); its UnitError becomes argparse's usage error (one ``error:`` line, exit 2)."""
    def parse(text):
        try:
            return check("value", text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value must be", "must be", 1)) from None

    parse.__name__ = label  # argparse names the type in its own messages
    return parse


#: argparse types for options checked at parse time (before anything is read or written)
nonnegative_int = _arg_type(lambda n, t: check_count(n, t, 0), "integer >= 0")
positive_int = _arg_type(lambda n, t: check_count(n, t, 1), "integer >= 1")
finite_float = _arg_type(check_finite, "finite number")
positive_float = _arg_type(check_positive, "number > 0")
nonnegative_float = _arg_type(lambda n, t: check_positive(n, t, allow_zero=True), "number >= 0")


def add_committee_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--committee", required=required, help="committee YAML (members, calibration)")
    parser.add_argument("--molecules", default=None,
                        help="molecule count per structure for per-molecule measures: an int or 'auto'")


def add_gate_arguments(parser: argparse.ArgumentParser, labels_required: bool = False,
                       retrain: bool = True) -> None:
    """--reference, --labels, one --threshold-… and --cap-… per measure, --logic, --retrain-every."""
    g = parser.add_argument_group("uncertainty gate")
    g.add_argument("--reference", help="reference-calculator YAML (e.g. GPAW); omit to run committee-only")
    g.add_argument("--labels", required=labels_required, help="label store (extxyz), appended to")
    for m in MEASURES.values():
        unit = f" [{m.display_unit()}]" if m.cli_unit else ""
        for kind, what in (("threshold", "fall back to the reference above this"),
                           ("cap", "hard cap: stop instead of labelling above this")):
            dest = m.option(kind)
            g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=float, default=None,
                           metavar="X", help=f"{what} {m.help}{unit}")
    g.add_argument("--logic", choices=("any", "all"), default="any",
                   help="combine several thresholds with any/all (default: any)")
    if retrain:
        g.add_argument("--retrain-every", type=int, default=None,
                       help="retrain after every K new labels (needs 'training:' in the committee YAML)")


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (resumed if it exists)")


def check_outputs(args) -> None:
    """``--out`` and the label store's folder (``--labels``, where the driver has it) exist or
    can be created; checked before any work, creating nothing (ConfigError naming the path)."""
    if getattr(args, "out", None):
        check_dir(args.out, "output folder (--out)")
    if getattr(args, "labels", None):
        check_dir(Path(args.labels).expanduser().absolute().parent, "folder of the label store (--labels)")


def limits_from_args(args, kind: str) -> dict:
    """Thresholds (``kind="threshold"``) or hard caps (``"cap"``) in internal units."""
    if kind not in LIMIT_KINDS:
        raise ValueError(kind)
    given = {}
    for m in MEASURES.values():
        v = getattr(args, m.option(kind), None)
        if v is not None:
            given[m.option(kind)[len(kind) + 1:]] = v
    return parse_limits(given, what="--" + kind)


def molecules_from_args(args):
    return check_molecules(getattr(args, "molecules", None))


def load_committee_from_args(args, molecules=None):
    """The committee of ``--committee``; ``molecules`` (int or "auto") overrides ``--molecules``."""
    molecules = check_molecules(molecules) if molecules is not None else molecules_from_args(args)
    return load_committee(args.committee, **({"molecules": molecules} if molecules is not None else {}))


def load_reference_from_args(args):
    """The reference spec of ``--reference`` with its calculator(s) imported now, not at the
    first fallback (None without ``--reference``)."""
    path = getattr(args, "reference", None)
    if not path:
        return None
    spec = load_reference(path)
    import_object(spec.calculator)
    if spec.dispersion:
        import_object(spec.dispersion["calculator"])
    return spec


def check_species(committee, images) -> None:
    """Every element of every structure must be known to every member (checked before writing)."""
    members = getattr(committee, "members", None) or getattr(getattr(committee, "committee", None),
                                                             "members", [])
    for i, atoms in enumerate(images):
        for m in members:
            try:
                m.check_atoms(atoms)
            except CommitteeError as exc:
                raise type(exc)(f"structure {i}: {exc}") from None


def retrainer_from_args(args):
    """``retrain(label_file) -> committee`` fine-tuning the committee of ``--committee`` (its YAML's
    ``training:`` section, written by ``train_committee``) into ``<--out>/retrain/``, or None
    without ``--retrain-every``.  ConfigError when the section is missing."""
    every = getattr(args, "retrain_every", None)
    if not every:
        return None
    if isinstance(every, bool) or int(every) < 1:
        raise ConfigError(f"--retrain-every must be a positive number of labels, got {every!r}")
    out = getattr(args, "out", None) or "."
    return committee_retrainer(args.committee, Path(out) / "retrain")


def build_gate(args, driver: str, committee=None, molecules=None, thresholds=None,
               label_store=True) -> Gate:
    """The gate of a driver from the shared options.

    committee: built from ``--committee`` unless given.  molecules: overrides ``--molecules``.
    thresholds: overrides the ``--threshold-…`` options (internal units), e.g. for a policy.
    label_store: False to ignore ``--labels``.
    """
    mol = check_molecules(molecules) if molecules is not None else molecules_from_args(args)
    committee = committee or load_committee_from_args(args, molecules=mol)
    th = limits_from_args(args, "threshold") if thresholds is None else thresholds
    caps = limits_from_args(args, "cap")
    reference = load_reference_from_args(args)
    if th and reference is None:
        raise ConfigError("thresholds were given but no --reference to fall back to")
    labels = getattr(args, "labels", None) if label_store else None
    if labels and reference is None:
        raise ConfigError("--labels needs a --reference to compute the labels")
    retrain = retrainer_from_args(args)
    return Gate(committee, reference, thresholds=th or None, logic=getattr(args, "logic", "any"),
                hard_cap=caps or None, label_store=labels or None, provenance={"driver": driver},
                retrain=retrain, retrain_every=getattr(args, "retrain_every", None) if retrain else None,
                molecules=mol)


def cap_hint(text: str) -> str:
    """`` (hard cap set by --cap-…)`` naming the options of the measures a hard-cap message
    names (``key=value``), or "" when it names none."""
    flags = ["--" + m.option("cap").replace("_", "-") for k, m in MEASURES.items()
             if re.search(rf"(?<!\w){re.escape(k)}=", text)]
    return f" (hard cap set by {', '.join(flags)})" if flags else ""


def error_line(exc: BaseException) -> str:
    """One ``error: <Type>: <message>`` line; a hard-cap stop names the ``--cap-…`` option(s)
    that set the cap; a plain OSError (an output that cannot be written) says what to check."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, GateStop):
        msg += cap_hint(msg)
    elif not isinstance(exc, CommitteeError):
        msg += " (a file could not be read or written: check the path, its permissions and free disk space)"
    return f"error: {type(exc).__name__}: {msg}"


def quiet_third_party_warnings() -> None:
    """Ignore the deprecation/future/user warnings of :data:`QUIET_MODULES` (and
    :data:`QUIET_MESSAGES`) in the current warnings filter context."""
    modules = rf"({'|'.join(re.escape(m) for m in QUIET_MODULES)})(\..*)?$"
    for category in QUIET_CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=modules)
    for text in QUIET_MESSAGES:
        warnings.filterwarnings("ignore", message=re.escape(text))


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)``; map errors to one ``error:`` line and exit codes (0, 2 user error
    or an output that cannot be written, 130 interrupt).  Warnings of third-party frameworks
    (:data:`QUIET_MODULES`) are hidden unless the environment sets ``COMMITTEE_CALC_VERBOSE=1``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with warnings.catch_warnings():
        if os.environ.get("COMMITTEE_CALC_VERBOSE", "") in ("", "0"):
            quiet_third_party_warnings()
        try:
            rc = main(argv)
        except (CommitteeError, OSError) as exc:
            print(error_line(exc), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: outputs written so far are kept; rerun to resume", file=sys.stderr)
            return 130
    return int(rc or 0)
