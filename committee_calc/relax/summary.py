"""``summary.csv`` of a relaxed pool: its columns and rows, upgrades, reopening, order.

One row per *finished* candidate (columns :data:`SUMMARY_COLUMNS`; the layout and meaning of
the pool folder are in :mod:`.pool`).  Rows are appended as candidates finish (:class:`CsvLog`);
:func:`summary_in_order` puts them in input order after a batched run, :func:`reopen_summary`
drops the rows a rerun continues, :func:`upgrade_summary` extends a file of an earlier version.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from ..errors import CommitteeCalculationError
from ..fileio import atomic_write_text

log = logging.getLogger("committee_calc.relax.gated")

#: columns of ``summary.csv``; the last six (verification, surface changes) are newer: a
#: ``summary.csv`` of an earlier version is extended in place when its pool is resumed
SUMMARY_COLUMNS = ("id", "status", "steps", "committee_calls", "reference_calls", "labels",
                   "energy_eV", "energy_per_atom_eV", "energy_std_eV", "forces_std_max_eVA",
                   "force_uncertainty_relative", "fmax_eVA", "density_gcm3", "natoms", "reason",
                   "committee_energy_eV", "reference_energy_eV", "reference_fmax_eVA",
                   "reference_stress_max_GPa", "verified", "surface_switches")
#: ``verified`` column: the reference agrees / disagrees / was not asked
VERIFIED = {True: "yes", False: "no", None: "not verified"}
#: statuses of a candidate whose reference or committee raised: retried on a rerun
FAILED = ("reference_failed", "committee_failed")


def log_row(row):
    (log.error if row["status"] in FAILED else log.info)("%s", describe_row(row))


def failed_row(cid, atoms, exc, attempted, steps) -> dict:
    """The row of a candidate whose reference raised (``attempted`` calls, the failed one too;
    status ``reference_failed``) or whose committee raised (CommitteeCalculationError:
    ``committee_failed``)."""
    status = "committee_failed" if isinstance(exc, CommitteeCalculationError) else "reference_failed"
    return {"id": cid, "status": status, "reason": str(exc).splitlines()[0],
            "natoms": len(atoms), "reference_calls": attempted, "verified": VERIFIED[None],
            "steps": steps}


def summary_in_order(path, ids) -> None:
    """Rewrite ``summary.csv`` (atomically) with its rows in the order of ``ids`` (a batched
    run appends them as candidates finish); nothing when they are in order already."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    rank = {cid: k for k, cid in enumerate(ids)}
    ordered = sorted(rows, key=lambda r: rank.get(r["id"], len(rank)))
    if [r["id"] for r in ordered] == [r["id"] for r in rows]:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, SUMMARY_COLUMNS)
    w.writeheader()
    w.writerows(ordered)
    atomic_write_text(path, buf.getvalue())


def reopen_summary(path, max_steps) -> list:
    """Drop from ``summary.csv`` (atomically) the rows a rerun should continue: candidates whose
    reference failed (retried: the reference may work now) and candidates that ended at
    ``max_steps`` below the current ``max_steps`` (continued from their last frame).  Returns
    the ids reopened."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    if not text.endswith("\n"):  # a torn last line: CsvLog drops it
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    if tuple(reader.fieldnames or ()) != SUMMARY_COLUMNS:
        return []  # CsvLog refuses (or repairs) it

    def reopen(r):
        return r["status"] in FAILED or (
            r["status"] == "max_steps" and int(r.get("steps") or 0) < int(max_steps))

    ids = [r["id"] for r in rows if reopen(r)]
    if ids:
        buf = io.StringIO()
        w = csv.DictWriter(buf, SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(r for r in rows if not reopen(r))
        atomic_write_text(path, buf.getvalue())
        log.info("continuing %d candidates of %s (reference or committee failed, or max_steps below %d): %s",
                 len(ids), path.parent, max_steps, ", ".join(ids))
    return ids


def describe_row(row) -> str:
    """One log line for a summary row (no ``None``: missing values are left out)."""
    head = f"{row['id']}: {row['status']}"
    if row.get("steps") not in (None, ""):
        head += f" after {row['steps']} steps ({row.get('reference_calls', 0)} reference calls)"
    if row.get("energy_eV") not in (None, ""):
        head += f", E = {float(row['energy_eV']):.6g} eV"
    return f"{head}; {row['reason']}" if row.get("reason") else head


def upgrade_summary(path) -> None:
    """Extend a ``summary.csv`` written with an earlier prefix of :data:`SUMMARY_COLUMNS` by the
    newer (empty) columns, atomically; anything else is left to :class:`CsvLog` to refuse."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    n = len(header)
    if 0 < n < len(SUMMARY_COLUMNS) and tuple(header) == SUMMARY_COLUMNS[:n]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(SUMMARY_COLUMNS)
        for r in rows[1:]:
            if len(r) == n:  # a torn last line is dropped, as CsvLog would
                w.writerow(r + [""] * (len(SUMMARY_COLUMNS) - n))
        atomic_write_text(path, buf.getvalue())
        log.info("%s: added the columns %s of this version", path, SUMMARY_COLUMNS[n:])


def number_cell(x):
    """A finite float, or an empty CSV cell for a value that is not known."""
    return float(x) if x is not None and math.isfinite(x) else ""


__all__ = ["SUMMARY_COLUMNS", "VERIFIED", "describe_row", "failed_row", "log_row", "number_cell", "reopen_summary",
           "summary_in_order", "upgrade_summary"]
