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
* :func:`add_executor_arguments` and :func:`spec_from_args`: where the work runs (``--workers``,
  ``--scheduler``, ``--cluster-config``, ``--shard``; :mod:`committee_calc.scale`);
  :mod:`committee_calc.cli_scale`: the run's one executor (opened once, closed by :func:`run_cli`);
  with ``reference_tasks=True`` every reference call of the driver is a task on it
  (:func:`load_reference_from_args`).
* :func:`run_cli` maps committee_calc errors (and OSErrors) to one ``error:`` line and exit 2,
  and hides (and counts) known third-party warnings unless ``--verbose``.
* :class:`ArgumentParser` adds ``--version`` and ``--verbose`` to every driver and shows every
  option's default in ``--help`` (:class:`HelpFormatter`).
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from .cli_edge import driver_edge, exit_code, interrupted_line
from .cli_scale import close_executors, reference_on_executor, spec_from_args  # noqa: F401 (drivers: cli.spec_from_args)
from .config import load_committee
from .domain import watch as watch_domain
from .errors import CommitteeError, ConfigError, GateStop
from .fileio import check_dir
from .gate import Gate
from .imports import import_object
from .measures import MEASURES, check_molecules, cli_limit_value, parse_limits
from .reference import load_reference
from .relax.pool import check_candidates
from .train import committee_retrainer
from .units import check_count, check_finite, check_positive

log = logging.getLogger("committee_calc")

LIMIT_KINDS = ("threshold", "cap")
#: warnings raised from these frameworks are hidden and counted by :func:`run_cli` (``--verbose`` shows them)
QUIET_MODULES = ("e3nn", "torch", "torch_geometric", "mace", "phonopy", "spglib", "ase.md", "chgnet", "pymatgen",
                 "nequip", "schnetpack")
#: third-party warnings attributed to other modules (ast; phonopy's warnings with a stacklevel
#: that points into committee_calc, whose own QHAWarning/PhononWarning say the same specifically)
QUIET_MESSAGES = ("The TorchScript type system", "Lattice parameters are extrapolated outside the fitted volume",
                  "Half-grid shift", "Mesh [", "logm result may be inaccurate")  # the last: scipy in ASE's cell filter


#: unit suffix of an option name (``--pressure-GPa``) -> the unit shown in ``--help``; one spelling
#: per unit across all drivers (tests/test_cli_help.py checks every option against this table)
UNIT_SUFFIXES = {"K": "K", "GPa": "GPa", "fs": "fs", "ps": "ps", "eVA": "eV/Å", "A": "Å", "A3": "Å³",
                 "meV": "meV", "eV": "eV", "eV-per-atom": "eV/atom", "meV-per-atom": "meV/atom",
                 "kjmol": "kJ/mol", "THz": "THz", "s": "s"}


def option_unit(*options: str) -> str | None:
    """The unit of the first option named ``--<quantity>-<unit suffix>`` (:data:`UNIT_SUFFIXES`;
    ``--lid-eV-per-atom`` -> eV/atom), else None."""
    for option in options:
        for suffix in sorted(UNIT_SUFFIXES, key=len, reverse=True):
            if option.startswith("--") and option.endswith("-" + suffix) and len(option) > len(suffix) + 3:
                return UNIT_SUFFIXES[suffix]
    return None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The drivers' ``--help``: the description as written, and every option's default appended
    as ``(default: …)`` unless its help already states one (``default``), the option is required
    or a flag, or it is positional.  An option without a value shows ``(default: not set)``."""

    def _format_action(self, action):
        if action.help is not argparse.SUPPRESS and action.option_strings:
            action = copy.copy(action)  # the help shows "[unit]" of the option's name and its default
            action.help = self.help_text(action) or None
        return super()._format_action(action)

    @staticmethod
    def help_text(action) -> str:
        """The help of an option: its text, ``[unit]`` from its name, ``(default: …)``."""
        text, unit = action.help or "", option_unit(*action.option_strings)
        if unit and unit not in text:
            text = f"{text} [{unit}]".strip()
        if not ("default" in text.lower() or action.required or action.nargs == 0
                or action.default is argparse.SUPPRESS):
            d = action.default
            shown = ("not set" if d is None else " ".join(map(str, d)) if isinstance(d, list | tuple)
                     else str(d))
            text = f"{text} (default: {shown.replace('%', '%%')})".strip()
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are, like every other refusal, one ``error:`` line (naming
    ``--help``, not the whole usage) and exit code 2; every driver's parser also gets ``--version`` and
    ``--verbose`` (third-party warnings shown, see :func:`run_cli`) and the :class:`HelpFormatter`
    (defaults in ``--help``)."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("formatter_class") in (None, argparse.RawDescriptionHelpFormatter, argparse.HelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
        self.add_argument("--verbose", action="store_true",
                          help="show third-party (torch, e3nn, MACE, phonopy, ...) warnings")

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(str(message).split())} ({self.prog} --help lists "
                     f"the options)\n")


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
                       retrain: bool = True, reference_tasks: bool = False, stops: bool = False) -> None:
    """--reference, --labels, one --threshold-… and --cap-… per measure, --logic, --retrain-every;
    ``stops``: every threshold stops the run and labels there (a campaign's help says so); with
    ``reference_tasks`` also the scale-out options, the reference calls as tasks on them
    (:func:`add_executor_arguments`: drivers whose own work is one sequential run)."""
    if reference_tasks:
        add_executor_arguments(parser, reference_tasks=True, distributes="the reference calls, each a task "
                               "(the run itself stays in this process and waits for each label)")
    g = parser.add_argument_group("uncertainty gate")
    g.add_argument("--reference", help="reference-calculator YAML (e.g. GPAW); omit to run committee-only")
    g.add_argument("--labels", required=labels_required, help="label store (extxyz), appended to")
    for m in MEASURES.values():
        unit = f" [{m.display_unit()}]" if m.cli_unit else ""
        for kind, what in (("threshold", "stop and label above this" if stops else "fall back to the reference "
                            "above this (or q<quantile>:<floor>:<ceiling>: a quantile of the running values)"),
                           ("cap", "hard cap: stop instead of labelling above this")):
            dest = m.option(kind)
            g.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, metavar="X",
                           type=cli_limit_value if kind == "threshold" else float,
                           help=f"{what} {m.help}{unit}")
    g.add_argument("--logic", choices=("any", "all"), default="any",
                   help="combine several thresholds with any/all (default: any)")
    if retrain:
        g.add_argument("--retrain-every", type=int, default=None,
                       help="retrain after every K new labels (needs 'training:' in the committee YAML)")


def add_executor_arguments(parser: argparse.ArgumentParser, shard: bool = False, distributes: str | None = None,
                           reference_tasks: bool = False) -> None:
    """Where the work runs (:mod:`committee_calc.scale`): ``--workers N`` (a local Dask cluster),
    ``--scheduler ADDRESS|FILE``, ``--cluster-config FILE`` (dask-jobqueue YAML; ``--dry-run``
    prints its job script and exits), ``--retries``, ``--scheduler-timeout-s``; with ``shard``
    also ``--shard k/N``.  distributes: what runs on the workers, for ``--help``.
    reference_tasks: every reference call of the driver becomes a task on the executor
    (:func:`load_reference_from_args`).  Read by :func:`spec_from_args`."""
    g = parser.add_argument_group("scale-out (default: this process)",
                                  f"On the workers: {distributes}." if distributes else None)
    parser.set_defaults(reference_tasks=bool(reference_tasks))
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="run tasks on a local Dask cluster of N single-threaded worker processes")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS|FILE",
                       help="run tasks on an existing Dask scheduler (tcp://host:8786 or a scheduler file)")
    where.add_argument("--cluster-config", default=None, metavar="FILE",
                       help="run tasks on batch jobs: dask-jobqueue YAML (examples/cluster/slurm.yaml)")
    g.add_argument("--dry-run", action="store_true", help="with --cluster-config: print the job script, exit")
    g.add_argument("--retries", type=nonnegative_int, default=2, help="resubmissions of a failed task before it is "
                   "reported failed")
    g.add_argument("--scheduler-timeout-s", type=positive_float, default=30.0,
                   help="give up connecting to --scheduler after this long")
    if shard:
        g.add_argument("--shard", default=None, metavar="k/N", help="relax share k of N of the pool "
                       "into <out>/shard-k-of-N (job arrays; combine with committee-merge)")


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
        if getattr(args, "reference_tasks", False):  # nothing to distribute: the options still checked
            spec_from_args(args)
        return None
    spec = load_reference(path)
    import_object(spec.calculator)
    if spec.dispersion:
        import_object(spec.dispersion["calculator"])
    if getattr(args, "reference_tasks", False):  # add_executor_arguments(reference_tasks=True)
        return reference_on_executor(args, spec)
    return spec


def check_species(committee, images) -> None:
    """Every element of every structure must be known to every member (checked before writing;
    the error names the structure by its id, :func:`~committee_calc.relax.pool.check_candidates`)."""
    check_candidates(committee, images)


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
    Without a reference (a committee-only run) the committee's ``domain:``/``trust:`` are watched
    (:func:`committee_calc.domain.watch`: a warning once per structure that leaves them).
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
    if label_store and reference is not None and not labels and hasattr(args, "labels") \
            and getattr(args, "out", None):
        # reference results are training labels: never compute them only to drop them
        labels = args.labels = str(Path(args.out) / "labels.extxyz")
        print(f"labels: {labels} (no --labels given)", flush=True)
    retrain = retrainer_from_args(args)
    if reference is None:  # committee only: warn when a structure leaves the recorded domain/trust
        watch_domain(committee)
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


class _CountingPattern:
    """A compiled regex whose ``match`` counts its hits.  The warnings machinery calls ``match``
    on a filter's message and module patterns (C and pure-Python implementations alike), so an
    ``ignore`` filter with this pattern hides a warning and counts it."""

    def __init__(self, pattern: str):
        self.regex, self.hits = re.compile(pattern), 0

    def match(self, text):
        m = self.regex.match(text)
        self.hits += m is not None
        return m


def quiet_third_party_warnings() -> list:
    """Ignore (and count) every warning raised from :data:`QUIET_MODULES` or matching
    :data:`QUIET_MESSAGES` in the current warnings filter context; returns the counting
    patterns (``sum(p.hits for p in patterns)`` warnings were hidden)."""
    patterns = [_CountingPattern(rf"({'|'.join(re.escape(m) for m in QUIET_MODULES)})(\..*)?$"),
                _CountingPattern("|".join(re.escape(t) for t in QUIET_MESSAGES))]
    warnings.filters.insert(0, ("ignore", None, Warning, patterns[0], 0))
    warnings.filters.insert(0, ("ignore", patterns[1], Warning, None, 0))
    warnings._filters_mutated()  # drop the per-module "already warned" caches
    return patterns


def _verbose(argv) -> bool:
    words = sys.argv[1:] if argv is None else list(argv)
    return "--verbose" in words or os.environ.get("COMMITTEE_CALC_VERBOSE", "") not in ("", "0")


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)``; map errors to one ``error:`` line and exit codes (0, 2 user error
    or an output that cannot be written, 130 interrupt, 143 SIGTERM: :mod:`.cli_edge`, which
    also prints our own warnings as ``warning: <message>`` lines).  Warnings of third-party frameworks
    (:data:`QUIET_MODULES`, :data:`QUIET_MESSAGES`) are hidden unless ``--verbose`` is given (or
    the environment sets ``COMMITTEE_CALC_VERBOSE=1``); a run that ends normally then prints one
    line ``N third-party warnings hidden (--verbose shows them)`` on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    patterns = []
    with warnings.catch_warnings(), driver_edge(verbose=_verbose(argv)):  # SIGTERM as Ctrl-C; our warnings
        if not _verbose(argv):
            patterns = quiet_third_party_warnings()
        try:
            rc = main(argv)
        except (CommitteeError, OSError) as exc:
            print(error_line(exc), file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # Ctrl-C (130) or SIGTERM (143, cli_edge.Terminated)
            print(interrupted_line(exc), file=sys.stderr)
            return exit_code(exc)
        finally:
            close_executors()
    hidden = sum(p.hits for p in patterns)
    if hidden:
        print(f"{hidden} third-party warning{'s' * (hidden != 1)} hidden (--verbose shows them)",
              file=sys.stderr)
    return int(rc or 0)
