"""Reference labels as tasks: each reference (DFT) call a task on any executor, one writer.

::

    labeller = Labeller("dft.yaml", "labels.extxyz", provenance={"driver": "learn"})
    with open_executor(ExecutorSpec("local", workers=4)) as ex:
        out = label_on_workers(ex, labeller, structures, provenance=[{"frame": i} for i in ...])
    out.labels[k]            # Label (results, index, duplicate) or None when the call failed
    out.failed               # {k: reason}

Structures the store already holds (same geometry, same reference) are not sent: their stored
label is returned (``duplicate=True``), as :meth:`Labeller.label` does.  Each remaining structure
is one task: the worker computes it through a store-less ``Labeller.label`` (the one labelling
path, with the reference's fresh instance, timeout and failure capture), and the calling process
appends the results in input order (a result that arrives early waits for the ones before it, so
the store reads as after an in-process run), through ``labeller.label`` fed by a
:class:`~.replay.ReplayReference`: a retried or repeated task never stores a label twice.  A
reference failure (:class:`~committee_calc.errors.ReferenceCalculationError`, the structure saved
under ``failed/`` by the worker) is not retried; a lost worker or other error is, ``retries``
times.  A failed structure leaves ``None`` and its reason; the others go on.

:class:`ExecutorReference` sends the calls of a sequential run (one MC chain, one MD trajectory,
a calibration set) to the executor one at a time: the driver still waits for each label, but the
reference runs where the cluster is (another node, a batch job) and a lost worker is retried.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ase import Atoms

from ..errors import ReferenceCalculationError
from ..labeller import Label, Labeller
from ..reference import Reference
from .replay import ReplayReference
from .tasks import TaskTally, map_tasks, task_key


def reference_task(reference, atoms: Atoms, stress) -> dict:
    """One reference calculation in this process (no store) -> results (energy [eV], forces
    (N,3) [eV/Å], stress (6,) [eV/Å³]); raises ReferenceCalculationError on failure."""
    return Labeller(reference, None).label(atoms, stress=stress).results


@dataclass
class LabelRun:
    """Per structure (input order) its :class:`~committee_calc.labeller.Label` or None (failed);
    ``failed``: {index: reason}; ``tally``: the task counts."""

    labels: list
    failed: dict = field(default_factory=dict)
    tally: TaskTally = field(default_factory=TaskTally)


def label_on_workers(executor, labeller: Labeller, structures, committee_results=None, provenance=None,
                     stress=None, retries: int = 2, progress: bool = True, baselines=None,
                     tally: TaskTally | None = None) -> LabelRun:
    """Label ``structures`` with ``labeller``'s reference, one task per structure on ``executor``
    (any ``concurrent.futures.Executor``), appending to its store in this process, in input order
    (module docstring).

    committee_results, provenance, baselines: per structure (lists, or None), stored with each
    label (``baselines``: Δ-learning baseline results, as ``Labeller.label``'s
    ``baseline_results``).  stress: compute stress (None: for bulk structures).  tally: a
    :class:`TaskTally` to count into (e.g. an :class:`ExecutorReference`'s; default a new one)."""
    structures = list(structures)
    n = len(structures)
    com = list(committee_results) if committee_results is not None else [None] * n
    prov = list(provenance) if provenance is not None else [None] * n
    base = list(baselines) if baselines is not None else [None] * n
    labels, tasks, index = [None] * n, {}, {}
    store, ref = labeller.store, labeller.reference
    send = getattr(ref, "inner", ref)  # an ExecutorReference's own reference: workers compute directly
    for k, atoms in enumerate(structures):
        stored = None
        if store is not None and labeller.deduplicate:
            i = store.find(atoms)
            stored = None if i is None else store.reference_results(i, ref.hash)
            if stored is not None:
                labels[k] = Label(stored, i, True)
                labeller.n_duplicates += 1
                continue
        key = task_key(f"label-{k:05d}", atoms.numbers, atoms.positions, atoms.cell[:], ref.hash)
        clean = atoms.copy()
        clean.calc = None
        tasks[key], index[key] = (send, clean, stress), k
    run = LabelRun(labels, tally=tally if tally is not None else TaskTally())
    replay = Labeller(ReplayReference(ref), store, provenance=labeller.provenance,
                      deduplicate=labeller.deduplicate)
    order, ready, nxt = sorted(index.values()), {}, 0
    for outcome in map_tasks(executor, reference_task, tasks, retries=retries, desc="reference",
                             progress=progress, tally=run.tally, final=(ReferenceCalculationError,)):
        k = index[outcome.key]
        if not outcome.ok:
            run.failed[k] = outcome.error
        ready[k] = outcome.result
        while nxt < len(order) and order[nxt] in ready:  # the one writer appends in input order
            k, nxt = order[nxt], nxt + 1
            result = ready.pop(k)
            if k in run.failed:
                continue
            replay.reference.queue(result)
            labels[k] = replay.label(structures[k], committee_results=com[k], provenance=prov[k], stress=stress,
                                     baseline_results=base[k])
            labeller.n_reference_calls += 1
    labeller.n_labels += replay.n_labels
    labeller.n_duplicates += replay.n_duplicates
    return run


def label_pending(executor, labeller: Labeller, landscape, indices, iteration: int, retries: int = 2,
                  progress: bool = True) -> LabelRun:
    """Active learning's labelling step on ``executor``: landscape structures ``indices`` labelled as
    :meth:`ActiveLearner._label <committee_calc.active.learner.ActiveLearner>` labels them (no
    stress, the landscape's baseline, provenance iteration/pool_index/name), one task each, in
    order.  A structure that failed is left to the learner (it labels it in-process)."""
    idx = [int(i) for i in indices]
    return label_on_workers(executor, labeller, [landscape.structures[i] for i in idx], stress=False,
                            baselines=[landscape.baseline(i) for i in idx], retries=retries, progress=progress,
                            provenance=[{"iteration": iteration, "pool_index": i, "name": landscape.names[i]}
                                        for i in idx])


class ExecutorReference(Reference):
    """A :class:`~committee_calc.reference.Reference` whose every :meth:`compute` is one task on
    an executor (module docstring): ``reference`` runs there, retried ``retries`` times when its
    worker is lost; a reference failure raises ReferenceCalculationError here, as in-process.

    executor: a ``concurrent.futures.Executor``, or a callable returning one (opened at the first
    call: a run that never labels starts no cluster).  ``tally``: the :class:`TaskTally`."""

    def __init__(self, reference: Reference, executor, retries: int = 2):
        self.inner, self._executor, self.retries, self.tally = reference, executor, int(retries), TaskTally()
        self.spec, self.calc, self.timeout_s, self.isolation = reference.spec, None, reference.timeout_s, "inline"
        self.workdir, self.keep_workdirs, self.last_failure_dir = reference.workdir, reference.keep_workdirs, None
        self.n_calls = self.n_failures = 0

    @property
    def failed_dir(self):
        return self.inner.failed_dir

    @failed_dir.setter
    def failed_dir(self, value):  # as_reference sets it (the label store's failed/ folder)
        self.inner.failed_dir = value

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def hash(self) -> str:
        return self.inner.hash

    @property
    def executor(self):
        """The executor (opened now if it was given as a callable)."""
        if not hasattr(self._executor, "submit"):
            self._executor = self._executor()
        return self._executor

    def compute(self, atoms, properties=("energy", "forces")) -> dict:
        clean = atoms.copy()
        clean.calc = None
        key = task_key("reference", clean.numbers, clean.positions, clean.cell[:], self.hash)
        self.n_calls += 1
        for outcome in map_tasks(self.executor, reference_task, {key: (self.inner, clean, "stress" in properties)},
                                 retries=self.retries, progress=False, tally=self.tally,
                                 final=(ReferenceCalculationError,)):
            if outcome.ok:
                return outcome.result
            self.n_failures += 1
            raise ReferenceCalculationError(f"the reference failed on the workers: {outcome.error}")
        raise ReferenceCalculationError("the reference task returned nothing")  # pragma: no cover

    def __repr__(self):
        return f"ExecutorReference({self.inner!r})"


__all__ = ["ExecutorReference", "LabelRun", "label_on_workers", "label_pending", "reference_task"]
