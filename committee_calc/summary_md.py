"""``summary.md``: the few conclusions a user reads first, one file per driver run.

:func:`write_summary_md` writes ``<out>/summary.md``: a title, one sentence on what ran, a table
of key numbers (each with its unit), the warnings of the run (or "none") and the output files with
what each holds.  Drivers' runners build the content; this module only formats it (Markdown).
"""
from __future__ import annotations

from pathlib import Path

from .fileio import atomic_write_text

#: file name written in every driver's output folder
SUMMARY_MD = "summary.md"


def summary_text(title: str, ran: str, numbers, warnings=(), files=()) -> str:
    """The Markdown text.  numbers: (quantity, value text incl. unit) pairs; warnings: str;
    files: (file name, what it holds) pairs (names relative to the output folder)."""
    lines = [f"# {title}", "", ran, "", "## Key numbers", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {q} | {v} |" for q, v in numbers]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in warnings] or ["none"]
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`: {what}" for name, what in files]
    return "\n".join(lines) + "\n"


def write_summary_md(out, title: str, ran: str, numbers, warnings=(), files=()) -> str:
    """Write ``<out>/summary.md`` (:func:`summary_text`, atomically); returns its path."""
    path = Path(out) / SUMMARY_MD
    atomic_write_text(path, summary_text(title, ran, numbers, warnings, files))
    return str(path)


def present_files(out, files) -> list:
    """The (name, what it holds) pairs of ``files`` whose name exists in the folder ``out``."""
    return [(name, what) for name, what in files if (Path(out) / name).exists()]


def domain_warnings(committee) -> list:
    """The domain/trust warnings a committee-only run gave (:mod:`committee_calc.domain`), as text;
    [] when the committee records no domain or none was left."""
    inner = getattr(committee, "committee", None)
    inner = inner if inner is not None and hasattr(inner, "members") else committee
    watch = getattr(inner, "domain_watch", None)
    return list(getattr(watch, "messages", []))


__all__ = ["SUMMARY_MD", "domain_warnings", "present_files", "summary_text", "write_summary_md"]
