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
that at once) is resubmitted up to ``retries`` times (logged ``retrying task …``), then reported
with the reason.  Progress: one line per finished task (:class:`~committee_calc.progress.Progress`:
a bar in a terminal, plain ``progress:`` lines in a file).

Warnings: on an executor with ``capture_warnings = True`` (those of
:func:`~.executors.open_executor` with workers) each task runs in :func:`captured`, which records the
warnings its worker raises (nothing is printed there) and returns them with the result; the calling
process warns them again (:func:`reemit`, each distinct one once per run), under its own filters:
the drivers' quiet third-party filters count them, ``--verbose`` shows them, and committee_calc's own
warnings (DomainWarning, PhononWarning …) are shown as in-process.  A future cancelled by a lost Dask
scheduler raises :class:`LostSchedulerError` (a CommitteeError: the drivers exit 2, outputs kept).
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import pickle
import sys
import warnings
from dataclasses import dataclass, field

from ..errors import CommitteeError, LostSchedulerError
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


@dataclass
class Captured:
    """A task's result and the warnings its worker raised: ``(category, message, module, lineno)``."""

    result: object
    warnings: list = field(default_factory=list)


def _module_of(filename: str) -> str:
    """The dotted name of the loaded module whose file is ``filename`` ("" when none)."""
    for name, mod in list(sys.modules.items()):
        if getattr(mod, "__file__", None) == filename:
            return name
    return ""


def _picklable(category) -> type:
    try:
        pickle.dumps(category)
    except Exception:  # noqa: BLE001 - a warning class defined in a function: sent as UserWarning
        return UserWarning
    return category


def captured(fn, *args):
    """``fn(*args)`` with every warning it raises recorded (not shown) -> :class:`Captured`
    (each distinct warning once).  Runs inside a worker (one task per thread at a time)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    first = {}
    for w in caught:
        first.setdefault((w.category, str(w.message), w.filename), w.lineno)
    return Captured(result, [(_picklable(c), m, _module_of(f), n) for (c, m, f), n in first.items()])


class CapturingCall:
    """``fn`` run through :func:`captured` (picklable; Dask names its tasks after ``fn``)."""

    def __init__(self, fn):
        self.fn, self.__name__ = fn, getattr(fn, "__name__", "task")

    def __call__(self, *args):
        return captured(self.fn, *args)


def reemit(items, seen: set) -> None:
    """Warn the worker warnings ``items`` (:class:`Captured`) here, each distinct one (category,
    message) once per ``seen`` set, under this process's warning filters."""
    for category, message, module, lineno in items:
        if (category, message) in seen:
            continue
        seen.add((category, message))
        warnings.warn_explicit(message, category, f"<worker: {module or 'task'}>", lineno,
                               module=module or "committee_calc.scale.worker", registry={})


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
    call = CapturingCall(fn) if getattr(executor, "capture_warnings", False) else fn
    pending, attempts, warned = {}, {}, set()
    for key, args in tasks.items():
        pending[executor.submit(call, *args)] = key
        attempts[key] = 1
    bar = Progress(len(tasks), desc, unit="tasks", enabled=progress, every=1e-9)
    try:
        while pending:
            done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                key = pending.pop(fut)
                try:
                    exc = fut.exception()
                except cf.CancelledError:  # not cancelled here: the scheduler (connection) is gone
                    where = getattr(executor, "address", None) or "its address"
                    raise LostSchedulerError(f"lost the Dask scheduler at {where} ({len(pending) + 1} task(s) "
                                             "pending); outputs so far are kept - rerun to resume") from None
                if exc is None:
                    tally.done += 1
                    bar.update(1, postfix=key)
                    result = fut.result()
                    if isinstance(result, Captured):
                        reemit(result.warnings, warned)
                        result = result.result
                    yield TaskOutcome(key, result, None, attempts[key])
                    continue
                if isinstance(exc, fatal) and not isinstance(exc, final):
                    raise exc
                if attempts[key] <= retries and not isinstance(exc, final):
                    log.warning("retrying task %s (%s; attempt %d of %d)", key, _reason(exc),
                                attempts[key] + 1, retries + 1)
                    attempts[key] += 1
                    tally.retried += 1
                    pending[executor.submit(call, *tasks[key])] = key
                    continue
                tally.failed += 1
                bar.update(1, postfix=f"{key} failed")
                log.warning("task %s failed after %d attempt(s): %s", key, attempts[key], _reason(exc))
                yield TaskOutcome(key, None, _reason(exc), attempts[key])
    finally:
        for fut in pending:
            fut.cancel()
        bar.close()


__all__ = ["Captured", "CapturingCall", "LostSchedulerError", "TaskOutcome", "TaskTally", "captured", "input_hash",
           "map_tasks", "reemit", "task_key"]
