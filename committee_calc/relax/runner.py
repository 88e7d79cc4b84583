"""One entry point for a pool relaxation: relax, cluster, plot -> plain data.

::

    relaxer = GatedRelaxer(Gate(committee, reference, thresholds=..., label_store=...))
    run = run_pool(relaxer, images, "runs/relax", cluster=True)
    run.status, run.n_reference_calls, run.clusters[:3]

Files in ``out_dir``: those of :class:`~committee_calc.relax.pool.RelaxPool`
(``relaxed.extxyz``, ``summary.csv``, ``trajectories/``, ``pool.json``), then
``clusters.csv`` (with ``cluster``; :func:`committee_calc.analysis.cluster.cluster_structures`,
DBSCAN on standardised descriptors, Hessmann et al.) and ``landscape.png``
(energy per atom vs density of the finished candidates) and ``summary.md`` (:func:`write_pool_summary_md`:
statuses, lowest energies, reference calls and labels, warnings, files).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.cluster import cluster_structures, ranked_table
from ..analysis.plots import plot_landscape
from ..errors import CommitteeCalculationError, CommitteeError, ReferenceCalculationError
from ..summary_md import domain_warnings, present_files, write_summary_md
from ..units import check_positive
from .io import write_clusters_csv
from .pool import RelaxPool, candidate_ids, final_frame
from .summary import FAILED


@dataclass(frozen=True)
class PoolRun:
    """What a pool relaxation produced (plain data; the files are in ``out``).

    rows: summary rows (dicts of ``summary.csv`` strings), one per finished candidate, input order.
    finished: the rows of candidates with an energy (relaxed, not failed).
    status: {status: number of candidates}.
    n_reference_calls: reference calls over all rows; n_evaluations: evaluated geometries
        (steps + 1 per row).
    clusters: the ranked cluster table (:func:`~committee_calc.analysis.cluster.ranked_table`),
        None without clustering.
    verified: {"yes" | "no" | "not verified": number of converged or unverified candidates}.
    batching: one line on the batched committee calls of this run ("" when not batched).
    """

    out: Path
    rows: list
    finished: list
    status: dict
    n_reference_calls: int
    n_evaluations: int
    clusters: list | None = field(default=None)
    verified: dict = field(default_factory=dict)
    batching: str = ""

    @property
    def n_failed(self) -> int:
        """Candidates whose reference or committee calculation failed."""
        return sum(self.status.get(s, 0) for s in FAILED)

    @property
    def all_failed(self) -> bool:
        """Every candidate's reference or committee failed (nothing was relaxed)."""
        return bool(self.rows) and self.n_failed == len(self.rows)

    def failure(self) -> CommitteeError:
        """The error to raise when :attr:`all_failed`: ReferenceCalculationError when only the
        reference failed, else CommitteeCalculationError (the first reason, where the others are)."""
        ref = self.status.get("reference_failed") == self.n_failed
        what, cls = ("reference", ReferenceCalculationError) if ref else \
            ("reference or committee", CommitteeCalculationError)
        return cls(f"the {what} calculation failed for all {self.n_failed} candidates (first: "
                   f"{self.rows[0]['reason']}); every reason is in {Path(self.out) / 'summary.csv'}")

    def describe(self) -> str:
        """The pool in one line: statuses, verification, failures, reference calls."""
        status = ", ".join(f"{n} {k}" for k, n in self.status.items())
        text = f"{len(self.rows)} candidates: {status}"
        if self.verified:
            text += "; reference check: " + ", ".join(
                f"{n} {'agree' if k == 'yes' else 'disagree' if k == 'no' else k}"
                for k, n in self.verified.items())
        if self.n_failed:
            text += (f"; {' and '.join(f'{k} {n}' for k, n in self.status.items() if k in FAILED)} of "
                     f"{len(self.rows)} (reasons in summary.csv)")
        return (f"{text}; reference calls {self.n_reference_calls} / {self.n_evaluations} "
                f"evaluations; outputs in {self.out}")


#: statuses whose final structure is not a relaxed candidate (a guard ended it blown up): left
#: out of clustering, ranking and the landscape figure (their rows stay in summary.csv)
NOT_RANKED = ("exploded",)


def ranked_rows(rows) -> list:
    """The rows that take part in clustering and ranking: with an energy, not :data:`NOT_RANKED`."""
    return [r for r in rows if r.get("energy_per_atom_eV") not in (None, "") and r["status"] not in NOT_RANKED]


def _per_atom(row, key):
    v = row.get(key)
    return float(v) / int(row["natoms"]) if v not in (None, "") else None


def one_surface(finished) -> tuple:
    """The finished rows with ``energy_per_atom_eV`` on ONE energy surface -> ``(rows, surface)``.

    A candidate's own energy is the reference's where its final structure was computed by the
    reference, else the committee's: ranking those together mixes two surfaces (offsets of eV
    per atom).  ``surface``: ``"reference"`` when every row has a reference energy at its final
    structure, else ``"committee"`` (the committee energy of every row); ``"as relaxed"`` for
    rows of an earlier version without the committee energy column.  The rows are copies
    (eV per atom)."""
    for surface, key in (("reference", "reference_energy_eV"), ("committee", "committee_energy_eV")):
        values = [_per_atom(r, key) for r in finished]
        if all(v is not None for v in values):
            return [dict(r, energy_per_atom_eV=v) for r, v in zip(finished, values)], surface
    return [dict(r) for r in finished], "as relaxed"


def cluster_pool(out_dir, finished, committee=None, eps=0.5, descriptor="auto") -> tuple:
    """Cluster the finished candidates of a pool folder -> ``(labels (n,), ranked table)``;
    writes ``clusters.csv``.  ``eps`` in standardised descriptor units.  The ranking is on one
    energy surface (:func:`one_surface`: column ``energy_surface``); every row also carries the
    reference energy per atom (empty where not known) and ``verified``."""
    out = Path(out_dir)
    structures = [final_frame(out, r["id"]) for r in finished]  # ids are strings, also "1"
    labels = cluster_structures(structures, committee=committee, eps=eps, descriptor=descriptor)
    rows, surface = one_surface(finished)
    table = ranked_table(rows, labels)
    by_id = {r["id"]: r for r in finished}
    for t in table:
        r = by_id[t["id"]]
        ref = _per_atom(r, "reference_energy_eV")
        t.update(energy_surface=surface, reference_energy_per_atom_eV="" if ref is None else ref,
                 verified=r.get("verified") or "not verified")
    write_clusters_csv(out / "clusters.csv", table)
    return labels, table


def plot_pool(rows, path, clusters=None) -> str:
    """The pool's landscape figure from its summary rows: energy per atom [meV/atom] relative to
    the lowest vs density, ±σ bars, cluster colours, unconverged candidates hollow."""
    e = np.array([float(r["energy_per_atom_eV"]) for r in rows])
    natoms = np.array([int(r["natoms"]) for r in rows])
    sigma = np.array([float(r.get("energy_std_eV") or "nan") for r in rows]) / natoms
    return plot_landscape([float(r["density_gcm3"]) for r in rows], 1e3 * e, path,
                          sigma=1e3 * sigma, unit_label="meV/atom", clusters=clusters,
                          converged=[r["status"] == "converged" for r in rows],
                          title=f"{len(rows)} relaxed candidates")


def run_pool(relaxer, images, out_dir, ids=None, cluster=False, cluster_eps=0.5,
             descriptor="auto", progress=True, batch=True, atom_budget=None) -> PoolRun:
    """Relax every unfinished candidate (resumable), cluster and plot the pool.

    relaxer: a configured :class:`~committee_calc.relax.gated.GatedRelaxer`; its gate's
        committee also provides the clustering descriptors (``descriptor="auto"``).
    ids: candidate ids (default :func:`~committee_calc.relax.pool.candidate_ids`).
    batch, atom_budget: in-flight batched relaxation (default) or one candidate after another,
        atoms per batched committee call (None: from timings); see
        :class:`~committee_calc.relax.pool.RelaxPool`.
    cluster_eps: DBSCAN eps (> 0), checked before anything is relaxed or written.
    Raises ConfigError for a folder of a different pool or a bad ``cluster_eps``; see
    :meth:`RelaxPool.run`.  The landscape figure uses the energies of :func:`one_surface`.
    """
    if cluster:
        check_positive("--cluster-eps", cluster_eps)
    images = list(images)
    ids = [str(i) for i in ids] if ids is not None else candidate_ids(images)
    out = Path(out_dir)
    pool = RelaxPool(relaxer, out, progress=progress, batch=batch, atom_budget=atom_budget)
    rows = pool.run(images, ids)
    finished = ranked_rows(rows)
    labels = table = None
    if cluster and finished:
        labels, table = cluster_pool(out, finished, committee=relaxer.gate.committee,
                                     eps=cluster_eps, descriptor=descriptor)
    if finished:
        plot_pool(one_surface(finished)[0], out / "landscape.png", labels)
    run = PoolRun(out=out, rows=rows, finished=finished, status=_tally(r["status"] for r in rows),
                  n_reference_calls=sum(int(r.get("reference_calls") or 0) for r in rows),
                  n_evaluations=sum(int(r.get("steps") or 0) + 1 for r in rows), clusters=table,
                  verified=_tally(r.get("verified") or "not verified" for r in rows
                                  if r["status"] in ("converged", "unverified")),
                  batching=pool.batched.describe() if pool.batched is not None else "")
    write_pool_summary_md(run, relaxer.gate.committee)
    return run


#: statuses that need the user's attention in ``summary.md``
_ATTENTION = {"reference_failed": "the reference calculation failed", "hard_cap": "stopped at a hard cap",
              "committee_failed": "a committee member raised on it (reason in summary.csv)",
              "exploded": "ended by a guard (blown-up structure)", "max_steps": "not converged within --max-steps",
              "stalled": "stalled before converging", "uncertain": "stopped: spread above U_max (stop policy)"}


def write_pool_summary_md(run: PoolRun, committee=None, top: int = 5, extra_warnings=()) -> str:
    """Write ``<run.out>/summary.md`` for a pool relaxation: candidates per status, the ``top``
    lowest energies per atom [eV/atom, relative meV/atom, ±1σ meV/atom] on one energy surface
    (:func:`one_surface`), reference calls and labels, the clusters, warnings (statuses that need
    attention, ``extra_warnings``, the committee's domain/trust warnings of a committee-only run) and
    the files.
    Used by the in-process and the distributed pool (:mod:`committee_calc.scale.pool`).  Returns its path."""
    numbers = [("candidates", str(len(run.rows)))]
    numbers += [(f"status {k}", str(n)) for k, n in sorted(run.status.items())]
    rows, surface = one_surface(run.finished) if run.finished else ([], "")
    rows = sorted(rows, key=lambda r: float(r["energy_per_atom_eV"]))
    for k, r in enumerate(rows[:top]):
        e = float(r["energy_per_atom_eV"])
        sigma = _per_atom(r, "energy_std_eV")
        sig = f" ± {1e3 * sigma:.1f} meV/atom (±1σ)" if sigma is not None and np.isfinite(sigma) else ""
        numbers.append((f"#{k + 1} lowest energy ({surface} surface)",
                        f"{r['id']}: {e:.4f} eV/atom (+{1e3 * (e - float(rows[0]['energy_per_atom_eV'])):.1f} "
                        f"meV/atom){sig}, {r['status']}"))
    labels = sum(int(r.get("labels") or 0) for r in run.rows)
    numbers += [("reference calls / evaluated geometries", f"{run.n_reference_calls} / {run.n_evaluations}"),
                ("reference labels", str(labels))]
    if run.clusters is not None:
        numbers.append(("distinct minima (clusters)", str(len(run.clusters))))
    warns = [f"{run.status[k]} candidate(s): {what} (see summary.csv)" for k, what in _ATTENTION.items()
             if run.status.get(k)]
    warns += list(extra_warnings)
    if committee is not None:
        warns += domain_warnings(committee)
    files = present_files(run.out, (
        ("relaxed.extxyz", "final structures of the finished candidates"),
        ("summary.csv", "one row per finished candidate: status, energies [eV], spreads, reference calls"),
        ("trajectories/", "one extxyz trajectory per candidate"), ("pool.json", "the pool and its settings"),
        ("clusters.csv", "ranked distinct minima (DBSCAN)"), ("landscape.png", "energy per atom vs density")))
    ran = (f"committee-relax relaxed a pool of {len(run.rows)} candidates; {len(run.finished)} are ranked "
           f"(an energy, not exploded)."
           + (f" {run.batching}." if run.batching else ""))
    return write_summary_md(run.out, "committee-relax summary", ran, numbers, warns, files)


def _tally(values) -> dict:
    out = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


__all__ = ["PoolRun", "cluster_pool", "one_surface", "run_pool", "write_pool_summary_md"]
