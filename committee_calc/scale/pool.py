"""Pool relaxation across workers: chunks of candidates as tasks, one writer in the driver.

::

    recipe = RelaxRecipe.from_relaxer(relaxer, "committee.yaml")   # plain data, no live model
    with open_executor(ExecutorSpec("local", workers=2)) as ex:
        run = run_pool_scaled(recipe, images, "runs/relax", executor=ex, relaxer=relaxer)

A task (:func:`relax_chunk`) gets the recipe (committee YAML path, reference, thresholds, relaxer
settings), a chunk of candidates and their saved trajectories; in its worker process it builds the
committee once (cached by YAML path and modification time), relaxes the chunk with
:class:`~committee_calc.relax.pool.RelaxPool` (batched, as in-process) in a private folder, and
returns rows, trajectories and new labels as plain data.  The driver alone writes: labels first
(through :func:`~committee_calc.scale.replay.append_records`: the one labelling path, which drops a
label a retried task computed again), then each candidate's trajectory, then its ``summary.csv``
row.  The output folder is the one :func:`~committee_calc.relax.runner.run_pool` writes, so a run
resumes either way: finished candidates (a row) are skipped, unfinished ones continue from their
last saved frame.  A task that fails after its retries leaves its candidates without a row (a
rerun retries them) and is reported in ``PoolRun.failed_tasks``.

Not distributed (ConfigError, :class:`~.recipe.GateRecipe`): on-the-fly retraining and adaptive
thresholds, whose state lives in one process.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..fileio import CsvLog, atomic_write_text, load_json, save_json_atomic
from ..relax.gated import GatedRelaxer
from ..relax.pool import RelaxPool, candidate_ids, check_candidates, settings_change
from ..relax.runner import (
    PoolRun,
    cluster_pool,
    one_surface,
    plot_pool,
    ranked_rows,
    run_pool,
    write_pool_summary_md,
)
from ..relax.summary import SUMMARY_COLUMNS, log_row, reopen_summary, summary_in_order, upgrade_summary
from ..units import check_positive
from .executors import open_executor
from .recipe import GateRecipe, domain_state, merge_domain, private_store
from .replay import append_records
from .shard import SHARD_FILE, shard_folder, shard_indices
from .tasks import TaskTally, map_tasks, task_key

log = logging.getLogger("committee_calc.scale")

#: GatedRelaxer attributes that are its constructor's keywords (recipe <- live relaxer)
RELAXER_FIELDS = ("policy", "u_max", "fmax", "max_steps", "cell", "pressure_GPa", "fix_symmetry", "symprec",
                  "optimizer_kwargs", "constant_volume", "stress_tol_GPa", "reentry_factor", "restart_on_switch",
                  "max_reentries", "stall_steps", "stall_tol", "verify", "polish", "guards")


@dataclass(frozen=True)
class RelaxRecipe:
    """The driver's relaxer as plain data: its gate (:class:`~.recipe.GateRecipe`), the
    :class:`GatedRelaxer` keywords, and ``batch``/``atom_budget`` as :class:`RelaxPool`."""

    gate: GateRecipe
    relaxer: dict = field(default_factory=dict)
    batch: bool = True
    atom_budget: int | None = None

    @classmethod
    def from_relaxer(cls, relaxer: GatedRelaxer, committee_yaml, molecules=None, batch=True,
                     atom_budget=None) -> RelaxRecipe:
        """The recipe of a configured relaxer whose committee was loaded from ``committee_yaml``
        (ConfigError as :meth:`GateRecipe.from_gate`)."""
        kwargs = {k: getattr(relaxer, k) for k in RELAXER_FIELDS}
        kwargs["optimizer"] = relaxer.optimizer_name
        return cls(GateRecipe.from_gate(relaxer.gate, committee_yaml, molecules), kwargs, bool(batch),
                   atom_budget)

    def build(self, label_store=None) -> GatedRelaxer:
        """The relaxer in this process; ``label_store``: where its labels go."""
        return GatedRelaxer(self.gate.build_gate(label_store), **self.relaxer)


@dataclass(frozen=True)
class ChunkResult:
    """What a task returns: summary rows, ``{id: trajectory extxyz text}``, new label records,
    the worker's pid and its domain/trust warnings (:func:`~.recipe.domain_state`)."""

    rows: list
    trajectories: dict
    labels: list
    pid: int
    domain: tuple = ((), ())


def relax_chunk(recipe: RelaxRecipe, chunk: list, saved: dict) -> ChunkResult:
    """Relax ``chunk`` = [(id, Atoms)] in this process from the ``saved`` trajectories
    ({id: extxyz text}); idempotent (a private folder per call; nothing shared is written)."""
    tmp = Path(tempfile.mkdtemp(prefix="committee_scale_"))
    try:
        store = private_store(recipe.gate, tmp)  # a copy: de-duplicates against the driver's labels
        relaxer = recipe.build(store)
        traj = tmp / "out" / "trajectories"
        traj.mkdir(parents=True)
        for cid, text in saved.items():
            (traj / f"{cid}.extxyz").write_text(text)
        ids = [cid for cid, _ in chunk]
        rows = RelaxPool(relaxer, tmp / "out", progress=False, batch=recipe.batch,
                         atom_budget=recipe.atom_budget).run([a for _, a in chunk], ids)
        trajs = {cid: (traj / f"{cid}.extxyz").read_text() for cid in ids if (traj / f"{cid}.extxyz").exists()}
        labels = store.records if store is not None else []
        return ChunkResult(rows, trajs, labels, os.getpid(), domain_state(relaxer.gate))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def chunks(items: list, chunk_size: int) -> list:
    """``items`` in consecutive chunks of at most ``chunk_size``."""
    return [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]


def _prepare(out: Path, ids, images, settings, max_steps) -> set:
    """What :meth:`RelaxPool.run` does before relaxing: folder, ``pool.json`` check, reopened rows
    -> the ids already finished."""
    meta = load_json(out / "pool.json")
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectories").mkdir(exist_ok=True)
    natoms = [len(a) for a in images]
    if meta is None:
        save_json_atomic(out / "pool.json", {"ids": ids, "natoms": natoms, "settings": settings})
    elif meta.get("ids") != ids or meta.get("natoms") != natoms:
        raise ConfigError(f"{out} holds a different candidate pool ({len(meta.get('ids', []))} candidates); "
                          f"use a new --out folder for these {len(ids)} candidates")
    elif meta.get("settings") != settings:  # as RelaxPool in-process
        log.warning("settings differ from the first run in %s: %s; unfinished candidates continue with the new "
                    "ones", out, settings_change(meta.get("settings") or {}, settings))
    upgrade_summary(out / "summary.csv")
    reopen_summary(out / "summary.csv", max_steps)
    return {r["id"] for r in CsvLog(out / "summary.csv", SUMMARY_COLUMNS).rows()}


def run_pool_scaled(recipe: RelaxRecipe, images, out_dir, executor=None, relaxer=None, ids=None,
                    chunk_size=None, retries=2, cluster=False, cluster_eps=0.5, descriptor="auto",
                    progress=True) -> PoolRun:
    """:func:`~committee_calc.relax.runner.run_pool` with the relaxations as tasks on ``executor``
    (any ``concurrent.futures.Executor``; None: in this process, exactly ``run_pool``).

    recipe: :class:`RelaxRecipe`; relaxer: the driver's relaxer (its gate's labeller appends the
    workers' labels, its committee gives the cluster descriptors; default ``recipe.build``).
    chunk_size: candidates per task (default: the pool in ~16 tasks).  retries: resubmissions of a
    failed task.  Returns the :class:`PoolRun` of the folder, with ``tasks`` (a
    :class:`~.tasks.TaskTally`) and ``failed_tasks`` ({task key: reason}) set as attributes.
    Raises ConfigError (a different pool in ``out_dir``, bad ``cluster_eps``/``chunk_size``) before
    anything is written."""
    relaxer = relaxer or recipe.build(recipe.gate.label_store)
    images = list(images)
    ids = [str(i) for i in ids] if ids is not None else candidate_ids(images)
    if executor is None:
        return run_pool(relaxer, images, out_dir, ids=ids, cluster=cluster, cluster_eps=cluster_eps,
                        descriptor=descriptor, progress=progress, batch=recipe.batch, atom_budget=recipe.atom_budget)
    if cluster:
        check_positive("--cluster-eps", cluster_eps)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ConfigError(f"chunk_size must be a whole number >= 1, got {chunk_size!r}")
    if len(ids) != len(images) or len(set(ids)) != len(ids):
        raise ConfigError("candidate ids must be unique, one per structure")
    check_candidates(relaxer.gate.committee, images, ids, atom_budget=recipe.atom_budget)  # before the workers
    out = Path(out_dir)
    done = _prepare(out, ids, images, relaxer.settings(), relaxer.max_steps)
    todo = [(i, a) for i, a in zip(ids, images) if i not in done]
    if done:
        log.info("%d of %d candidates in %s are finished (skipped); %d to relax on the workers",
                 len(done & set(ids)), len(ids), out, len(todo))
    size = int(chunk_size or max(1, math.ceil(len(todo) / 16)))
    tasks = {}
    for chunk in chunks(todo, size):
        saved = {cid: (out / "trajectories" / f"{cid}.extxyz").read_text() for cid, _ in chunk
                 if (out / "trajectories" / f"{cid}.extxyz").exists()}
        name = chunk[0][0] if len(chunk) == 1 else f"{chunk[0][0]}..{chunk[-1][0]}"
        key = task_key(name, [(c, a.numbers, a.positions, a.cell[:]) for c, a in chunk],
                       saved, recipe.relaxer, recipe.gate.thresholds)
        tasks[key] = (recipe, chunk, saved)
    tally, failed, new_labels = TaskTally(), {}, [0, 0]
    summary = CsvLog(out / "summary.csv", SUMMARY_COLUMNS)
    for outcome in map_tasks(executor, relax_chunk, tasks, retries=retries, desc="relax",
                             progress=progress, tally=tally):
        if not outcome.ok:
            failed[outcome.key] = outcome.error
            continue
        _write_chunk(out, summary, relaxer, outcome.result, new_labels)
    summary_in_order(out / "summary.csv", ids)
    RelaxPool(relaxer, out).write_relaxed(ids, summary)
    if relaxer.gate.labeller is not None and relaxer.gate.label_store is not None:
        log.info("labels from the workers: %d appended, %d already stored", *new_labels)
    for key, reason in failed.items():
        log.error("task %s failed: %s (its candidates have no row; rerun to retry them)", key, reason)
    run = pool_run(out, ids, summary, relaxer, cluster, cluster_eps, descriptor)
    object.__setattr__(run, "tasks", tally)
    object.__setattr__(run, "failed_tasks", failed)
    write_pool_summary_md(run, relaxer.gate.committee, extra_warnings=[  # as the in-process run's
        f"task {key} failed: {reason} (its candidates have no row; rerun to retry them)"
        for key, reason in failed.items()])
    return run


def _write_chunk(out: Path, summary: CsvLog, relaxer, result: ChunkResult, counts) -> None:
    """The one writer: labels, then trajectories, then summary rows (a kill in between is resumed:
    a rerun recomputes the chunk and the labeller drops the labels it has already)."""
    n, dup = append_records(relaxer.gate.labeller, result.labels)
    counts[0] += n
    counts[1] += dup
    merge_domain(relaxer.gate.committee, result.domain)
    for cid, text in result.trajectories.items():
        atomic_write_text(out / "trajectories" / f"{cid}.extxyz", text)
    for row in result.rows:
        summary.append(row)
        log_row(row)


def pool_run(out, ids, summary, relaxer=None, cluster=False, cluster_eps=0.5, descriptor="auto") -> PoolRun:
    """The :class:`PoolRun` of the folder ``out`` (as :func:`run_pool` makes it) from its
    ``summary`` (a CsvLog), in the order of ``ids``, with the clustering (``cluster``: needs
    ``relaxer``, whose committee gives the descriptors) and ``landscape.png``."""
    by_id = {r["id"]: r for r in summary.rows()}
    rows = [by_id[i] for i in ids if i in by_id]
    finished = ranked_rows(rows)
    labels = table = None
    if cluster and finished:
        labels, table = cluster_pool(out, finished, committee=relaxer.gate.committee, eps=cluster_eps,
                                     descriptor=descriptor)
    if finished:
        plot_pool(one_surface(finished)[0], out / "landscape.png", labels)
    return PoolRun(out=out, rows=rows, finished=finished, status=_tally(r["status"] for r in rows),
                   n_reference_calls=sum(int(r.get("reference_calls") or 0) for r in rows),
                   n_evaluations=sum(int(r.get("steps") or 0) + 1 for r in rows), clusters=table,
                   verified=_tally(r.get("verified") or "not verified" for r in rows
                                   if r["status"] in ("converged", "unverified")))


def _tally(values) -> dict:
    out = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _shard(shard, images, ids, out):
    """(images, ids, folder) of shard ``(k, N)``; writes its ``shard.json`` (ConfigError when the
    folder holds another pool's shard)."""
    k, n = shard
    idx = shard_indices(len(images), k, n)
    folder = shard_folder(out, k, n)
    meta = {"k": k, "n": n, "ids": ids, "natoms": [len(a) for a in images], "indices": idx}
    old = load_json(folder / SHARD_FILE)
    if old is not None and (old.get("ids") != ids or old.get("natoms") != meta["natoms"]):
        raise ConfigError(f"{folder} holds a shard of a different pool; use a new --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    save_json_atomic(folder / SHARD_FILE, meta)
    return [images[i] for i in idx], [ids[i] for i in idx], folder


def run_pool_with(spec, relaxer, images, out_dir, committee_yaml=None, molecules=None, shard=None,
                  cluster=False, cluster_eps=0.5, descriptor="auto", progress=True, batch=True,
                  atom_budget=None, chunk_size=None) -> PoolRun:
    """The pool relaxation of a driver: in-process (``spec`` None or ``inprocess``: exactly
    :func:`~committee_calc.relax.runner.run_pool`) or as tasks on the executor of ``spec``
    (:class:`~.executors.ExecutorSpec`; ``committee_yaml``/``molecules``: how workers rebuild the
    committee), for the whole pool or shard ``shard`` = (k, N) (:mod:`.shard`; into
    ``<out_dir>/shard-k-of-N``, not clustered: cluster after ``committee-merge``).  Prints the
    task tally of a distributed run.  Errors as :func:`run_pool_scaled`."""
    images = list(images)
    ids = candidate_ids(images)
    out = Path(out_dir)
    if shard is not None:
        images, ids, out = _shard(shard, images, ids, out)
        if cluster:
            log.info("shard %d/%d: clustering is left to the merged pool (committee-merge, then rerun "
                     "with --cluster)", *shard)
        cluster = False
    if spec is None or not spec.distributed:
        return run_pool(relaxer, images, out, ids=ids, cluster=cluster, cluster_eps=cluster_eps,
                        descriptor=descriptor, progress=progress, batch=batch, atom_budget=atom_budget)
    recipe = RelaxRecipe.from_relaxer(relaxer, committee_yaml, molecules, batch=batch, atom_budget=atom_budget)
    with open_executor(spec) as executor:
        run = run_pool_scaled(recipe, images, out, executor=executor, relaxer=relaxer, ids=ids,
                              chunk_size=chunk_size, retries=spec.retries, cluster=cluster,
                              cluster_eps=cluster_eps, descriptor=descriptor, progress=progress)
    print(f"{run.tasks.describe()} ({spec.describe()})", flush=True)
    for key, reason in run.failed_tasks.items():
        print(f"task {key} failed: {reason}", flush=True)
    return run


__all__ = ["ChunkResult", "RelaxRecipe", "chunks", "pool_run", "relax_chunk", "run_pool_scaled", "run_pool_with"]
