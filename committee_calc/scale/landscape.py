"""Landscape evaluation and re-ranking on workers: the batched committee calls as chunk tasks.

::

    with open_executor(ExecutorSpec("local", workers=2)) as ex:
        committee = RemoteCommittee(committee, ex, source="committee.yaml")
        result = rerank(landscape, committee, "rerank/", reference=ref, sigma_cap_eV=...)

:class:`RemoteCommittee` stands in for a committee wherever the code calls its batched
``predict`` (:meth:`Gate.evaluate_many <committee_calc.gate.Gate.evaluate_many>`, hence
:func:`~committee_calc.active.rerank.rerank` and
:func:`~committee_calc.active.rerank.evaluate_landscape`): the structures are cut into chunks of
whole ``batch_size`` batches, each chunk a task (:func:`predict_task`: the worker rebuilds the
committee from its YAML, cached per worker process, or unpickles the committee itself, and runs the
same batched ``committee.predict``), and the results come back in input order.  The batches are
those of an in-process call, so the numbers are the same.  A :class:`RemoteCommittee` is a
committee (layer 2 of :mod:`committee_calc.layers`, below the gate that evaluates it).  Everything
else (the gate's decisions, reference labels, files) stays in the driver process: the one writer.
A chunk that fails after its retries is computed in the driver (the run goes on, with the same
results).  Any other attribute is the wrapped committee's.
"""
from __future__ import annotations

import logging
import math
import os

from ..config import load_committee
from .tasks import TaskTally, map_tasks, task_key

log = logging.getLogger("committee_calc.scale")

_COMMITTEES: dict = {}  # worker-process cache: (YAML path, mtime) -> committee

#: a task's share of a predict call: about this many tasks per call (at least one batch each)
TASKS_PER_CALL = 16


def committee_of(source):
    """The committee of ``source`` in this process: a YAML path (loaded once per worker process
    and YAML version) or the committee itself."""
    if not isinstance(source, str):
        return source
    key = (source, os.path.getmtime(source))
    if key not in _COMMITTEES:
        _COMMITTEES.clear()
        _COMMITTEES[key] = load_committee(source)
    return _COMMITTEES[key]


def predict_task(source, structures: list, batch_size: int, properties) -> list:
    """``committee.predict(structures, batch_size, properties)`` in this process (a worker) ->
    the committee's schema dicts (energy [eV], forces (N,3) [eV/Å], spreads ...), input order."""
    committee = committee_of(source)
    return committee.predict(structures, batch_size=batch_size, properties=properties, progress=False)


class RemoteCommittee:
    """A committee whose :meth:`predict` runs as chunk tasks on ``executor`` (module docstring).

    committee: the committee in this process (its attributes, ``calculate`` for single
    structures, and the fallback of a failed chunk).  source: what workers rebuild it from: the
    committee YAML path (str) or None (the committee is pickled to them).  chunk_size: structures
    per task (rounded up to whole batches; default about :data:`TASKS_PER_CALL` tasks per call).
    retries: resubmissions of a failed chunk.  ``tally``: the :class:`~.tasks.TaskTally` of all calls.
    """

    def __init__(self, committee, executor, source=None, chunk_size=None, retries: int = 2):
        self.__dict__.update(_committee=committee, _executor=executor, retries=int(retries),
                             _source=os.path.abspath(source) if source is not None else committee,
                             chunk_size=chunk_size, tally=TaskTally())

    def __getattr__(self, name):
        return getattr(self.__dict__["_committee"], name)

    def __setattr__(self, name, value):
        setattr(self._committee, name, value)

    def predict(self, structures, batch_size=None, properties=None, progress=False, desc="predict") -> list:
        """As the committee's ``predict`` (same results, input order), the chunks as tasks."""
        structures = list(structures)
        bsize = 16 if batch_size is None else int(batch_size)
        if bsize < 1 or not structures:
            return self._committee.predict(structures, batch_size=batch_size, properties=properties,
                                           progress=progress, desc=desc)
        batches = math.ceil(len(structures) / bsize)
        per = max(1, math.ceil((self.chunk_size or 0) / bsize)) if self.chunk_size else \
            max(1, math.ceil(batches / TASKS_PER_CALL))
        size = per * bsize
        props = None if properties is None else list(properties)
        tasks, starts = {}, {}
        for start in range(0, len(structures), size):
            chunk = [_clean(a) for a in structures[start:start + size]]
            key = task_key(f"{desc}-{start:06d}", [(a.numbers, a.positions, a.cell[:]) for a in chunk], props, bsize)
            tasks[key], starts[key] = (self._source, chunk, bsize, props), start
        out = [None] * len(structures)
        for outcome in map_tasks(self._executor, predict_task, tasks, retries=self.retries,
                                 desc=desc, progress=progress, tally=self.tally):
            start = starts[outcome.key]
            chunk = tasks[outcome.key][1]
            if outcome.ok:
                results = outcome.result
            else:
                log.warning("committee chunk %s failed on the workers (%s); computing it here",
                            outcome.key, outcome.error)
                results = self._committee.predict(chunk, batch_size=bsize, properties=props)
            out[start:start + len(chunk)] = results
        return out

    def __repr__(self):
        return f"RemoteCommittee({self._committee!r})"


def _clean(atoms):
    a = atoms.copy()
    a.calc = None
    return a


__all__ = ["RemoteCommittee", "TASKS_PER_CALL", "committee_of", "predict_task"]
