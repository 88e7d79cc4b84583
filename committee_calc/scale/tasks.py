"""Idempotent tasks on any ``concurrent.futures.Executor``, results back to one writer.

::

    for out in map_tasks(executor, relax_chunk, {key: (recipe, chunk) for ...}, retries=2):
        if out.ok:
            write(out.result)            # the calling process alone writes files and labels
        else:
            print(out.key, out.error)    # failed after its retries: reported, the run goes on

Each task has a key (:func:`task_key`: what it works on plus a hash of its input), so a task that
is resubmitted (a worker died, the driver was rerun) is recognisably the same work; the caller
skips keys whose results it already wrote.  A failed task (an exception in the task, or
``KilledWorker``: its worker died; clusters started by :func:`~.executors.open_executor` report
that at once) is resubmitted up to ``retries`` times, then reported with the reason.  Progress: one
line per finished task (:class:`~committee_calc.progress.Progress`: a bar in a terminal, plain
``progress:`` lines in a file).
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import pickle
from dataclasses import dataclass

from ..errors import CommitteeError
from ..progress import Progress

log = logging.getLogger("committee_calc.scale")


def input_hash(*parts) -> str:
    """A short hex digest of the pickled ``parts`` (structures, settings): the input of a task."""
    h = hashlib.sha256()
    for p in parts:
        h.update(pickle.dumps(p, protocol=4))
    return h.hexdigest()[:16]


def task_key(name: str, *parts) -> str:
    """``<name>-<input hash>``: the key of the task working on ``name`` with input ``parts``."""
    return f"{name}-{input_hash(*parts)}"


@dataclass
class TaskOutcome:
    """One finished task: ``result`` when ``ok``, else ``error`` (one line); ``attempts`` ≥ 1."""

    key: str
    result: object = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TaskTally:
    """Counts over one :func:`map_tasks` run: done, retried (resubmissions), failed (keys)."""

    done: int = 0
    retried: int = 0
    failed: int = 0

    def describe(self) -> str:
        return f"tasks: {self.done} done, {self.retried} retried, {self.failed} failed"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def map_tasks(executor, fn, tasks: dict, retries: int = 2, desc: str = "tasks", progress: bool = True,
              tally: TaskTally | None = None, fatal=(CommitteeError,), final=()):
    """Run ``fn(*args)`` for every ``key: args`` of ``tasks`` on ``executor``; yield a
    :class:`TaskOutcome` per key as tasks finish (completion order).

    retries: resubmissions of a failing task (≥ 0).  tally: a :class:`TaskTally` filled as the run
    goes.  fatal: exception types re-raised at once (a ConfigError is the same on every worker,
    retrying it cannot help): the remaining futures are cancelled.  final: exception types reported
    as failed at once, without retries (checked before ``fatal``)."""
    tally = tally if tally is not None else TaskTally()
    pending, attempts = {}, {}
    for key, args in tasks.items():
        pending[executor.submit(fn, *args)] = key
        attempts[key] = 1
    bar = Progress(len(tasks), desc, unit="tasks", enabled=progress, every=1e-9)
    try:
        while pending:
            done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                key = pending.pop(fut)
                exc = fut.exception()
                if exc is None:
                    tally.done += 1
                    bar.update(1, postfix=key)
                    yield TaskOutcome(key, fut.result(), None, attempts[key])
                    continue
                if isinstance(exc, fatal) and not isinstance(exc, final):
                    raise exc
                if attempts[key] <= retries and not isinstance(exc, final):
                    log.warning("task %s failed (%s); resubmitting (attempt %d of %d)", key, _reason(exc),
                                attempts[key] + 1, retries + 1)
                    attempts[key] += 1
                    tally.retried += 1
                    pending[executor.submit(fn, *tasks[key])] = key
                    continue
                tally.failed += 1
                bar.update(1, postfix=f"{key} failed")
                log.warning("task %s failed after %d attempt(s): %s", key, attempts[key], _reason(exc))
                yield TaskOutcome(key, None, _reason(exc), attempts[key])
    finally:
        for fut in pending:
            fut.cancel()
        bar.close()


__all__ = ["TaskOutcome", "TaskTally", "input_hash", "map_tasks", "task_key"]
