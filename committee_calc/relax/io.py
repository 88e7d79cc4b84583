"""File output of a relaxed pool beyond the resumable files of :mod:`.pool`.

``clusters.csv``: the ranked cluster table of :func:`committee_calc.analysis.cluster.ranked_table`,
columns :data:`~committee_calc.analysis.cluster.CLUSTER_COLUMNS`, written atomically
(a kill leaves the old file or the new one, never a torn one).
"""
from __future__ import annotations

import csv
import io
import numbers

from ..analysis.cluster import CLUSTER_COLUMNS
from ..fileio import atomic_write_text


def _cell(value):
    """A CSV cell: reals as ``repr(float)`` (round-trips, also for numpy scalars), else as is."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return repr(float(value))
    return value


def write_clusters_csv(path, table) -> None:
    """Write the ranked cluster table (list of dicts keyed by CLUSTER_COLUMNS) to ``path``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CLUSTER_COLUMNS)
    for row in table:
        w.writerow([_cell(row.get(c, "")) for c in CLUSTER_COLUMNS])
    atomic_write_text(path, buf.getvalue())


__all__ = ["write_clusters_csv"]
