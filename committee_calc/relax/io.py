"""File output of a relaxed pool beyond the resumable files of :mod:`.pool`.

``clusters.csv``: the ranked cluster table of :func:`committee_calc.analysis.cluster.ranked_table`,
columns :data:`CLUSTERS_CSV_COLUMNS` (:data:`~committee_calc.analysis.cluster.CLUSTER_COLUMNS`,
then the energy surface the ranking used, the reference energy per atom [eV, empty where not
known] and ``verified``), written atomically (a kill leaves the old file or the new one,
never a torn one).
"""
from __future__ import annotations

import csv
import io
import numbers

from ..analysis.cluster import CLUSTER_COLUMNS
from ..fileio import atomic_write_text

CLUSTERS_CSV_COLUMNS = CLUSTER_COLUMNS + ("energy_surface", "reference_energy_per_atom_eV", "verified")


def _cell(value):
    """A CSV cell: reals as ``repr(float)`` (round-trips, also for numpy scalars), else as is."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return repr(float(value))
    return value


def write_clusters_csv(path, table) -> None:
    """Write the ranked cluster table (list of dicts keyed by CLUSTER_COLUMNS) to ``path``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CLUSTERS_CSV_COLUMNS)
    for row in table:
        w.writerow([_cell(row.get(c, "")) for c in CLUSTERS_CSV_COLUMNS])
    atomic_write_text(path, buf.getvalue())


__all__ = ["CLUSTERS_CSV_COLUMNS", "write_clusters_csv"]
