"""In-flight batched relaxation: many relaxations, one batched committee call per round.

::

    from committee_calc.relax.batched import BatchedRelaxation

    run = BatchedRelaxation(relaxer, budget=AtomBudget())
    results = run.relax(images)                 # list of RelaxResult, input order
    run.rounds, run.budget.atoms

    run.run(items, start, finish)               # the pool's form: lazy start, callbacks

The pattern of MatterSim's ``BatchRelaxer``: every candidate keeps its own ASE optimiser (a
:class:`~committee_calc.relax.flow.RelaxTask` of the relaxer: FIRE/BFGS/LBFGS, cell filter,
``FixSymmetry`` and user constraints, the whole gate policy).  Each round

1. candidates join from the queue while their atoms fit the atom budget
   (:class:`~.budget.AtomBudget`; at least one always runs);
2. the structures every active candidate waits for are evaluated by ONE batched committee
   call (:meth:`Gate.predict_committee <committee_calc.gate.Gate.predict_committee>`; members
   without batching are looped there);
3. each candidate takes its result and runs to its next evaluation: the gate decides for it
   alone (reference fallback and labels for uncertain structures, in candidate order), the
   optimiser steps; finished candidates leave (``finish``) and free their atoms.

A candidate's path depends only on its own results, and a result of the batched call is used
only for exactly the geometry it was computed for, so every trajectory, decision, label and
status equals the per-structure :meth:`GatedRelaxer.relax
<committee_calc.relax.gated.GatedRelaxer.relax>`, up to round-off: a batched committee call may
sum in another order (measured: identical trajectories for float64 MACE), and calculators that
keep state between calls (ASE's EMT keeps its neighbour list) differ in the last digits when
candidates are interleaved.  Geometry guards run
before a structure joins a batched call (:mod:`.guards`).
"""
from __future__ import annotations

import logging
import time
from collections import deque

from ..errors import CommitteeCalculationError, ReferenceCalculationError
from .budget import AtomBudget
from .surface import member_call

log = logging.getLogger("committee_calc.relax.batched")


class BatchedRelaxation:
    """Batched rounds of one relaxer's tasks (module docstring).

    relaxer: a :class:`~committee_calc.relax.gated.GatedRelaxer`; budget: an
    :class:`~.budget.AtomBudget` (default: grown from timings); errors: exceptions of one
    candidate that end only that candidate (passed to ``finish``), others abort the run.
    Counters: ``rounds`` (batched calls), ``evaluations`` (structures in them),
    ``committee_seconds`` (time in the batched calls).
    """

    def __init__(self, relaxer, budget=None, errors=(ReferenceCalculationError, CommitteeCalculationError),
                 on_round=None):
        self.relaxer = relaxer
        self.budget = budget if budget is not None else AtomBudget()
        self.errors = tuple(errors)
        self.on_round = on_round
        self.rounds = self.evaluations = 0
        self.committee_seconds = 0.0

    def relax(self, images, infos=None) -> list:
        """RelaxResults of every structure (input order); an error of ``errors`` is raised."""
        images = list(images)
        infos = list(infos) if infos is not None else [None] * len(images)
        out = [None] * len(images)

        def finish(k, task, exc):
            if exc is not None:
                raise exc
            out[k] = task.result

        self.run([(k, len(a)) for k, a in enumerate(images)],
                 lambda k: self.relaxer.start(images[k], infos[k]), finish)
        return out

    def run(self, items, start, finish) -> None:
        """Relax every item.  items: ``(key, n_atoms)`` in the order they join; start(key) ->
        :class:`~committee_calc.relax.flow.RelaxTask` (called when it joins; of this relaxer or
        of another one on the same gate, e.g. with other stop settings); finish(key, task,
        exception or None) when it ends (``task.result`` then holds its RelaxResult)."""
        queue, active, n_active = deque(items), [], 0
        gate = self.relaxer.gate
        while queue or active:
            while queue and (not active or n_active + queue[0][1] <= self.budget.atoms):
                key, n = queue.popleft()
                task = start(key)
                if self._advance(key, task, finish):
                    active.append((key, task))
                    n_active += task.natoms
            if not active:
                continue
            t0 = time.perf_counter()
            try:
                coms = member_call(lambda tasks=[t for _, t in active]: self._predict(gate, tasks))
            except CommitteeCalculationError:  # one candidate's: find it, end it, go on
                active, coms = self._isolate(gate, active, finish)
                n_active = sum(t.natoms for _, t in active)
                if not active:
                    continue
            dt = time.perf_counter() - t0
            self.rounds += 1
            self.evaluations += len(active)
            self.committee_seconds += dt
            self.budget.record(n_active, dt)
            log.debug("round %d: %d candidates, %d atoms, %.3g s", self.rounds, len(active),
                      n_active, dt)
            keep = []
            for (key, task), com in zip(active, coms):
                task.provide(com)
                if self._advance(key, task, finish):
                    keep.append((key, task))
                else:
                    n_active -= task.natoms
            active = keep
            if self.on_round is not None:
                self.on_round(self)

    @staticmethod
    def _predict(gate, tasks) -> list:
        """The committee output each task waits for: one batched call per set of properties
        (tasks of relaxers with and without ``cell`` may share a run)."""
        out = [None] * len(tasks)
        groups: dict = {}
        for k, t in enumerate(tasks):
            groups.setdefault(t.calc.properties(), []).append(k)
        for props, idx in groups.items():
            for k, c in zip(idx, gate.predict_committee([tasks[k].pending for k in idx], props)):
                out[k] = c
        return out

    def _isolate(self, gate, active, finish) -> tuple:
        """After a failed batched call: each task's call alone; those that fail end
        (``finish`` with the CommitteeCalculationError).  Returns (the others, their outputs)."""
        keep, coms = [], []
        for key, task in active:
            try:
                com = member_call(lambda t=task: self._predict(gate, [t]))[0]
            except CommitteeCalculationError as exc:
                log.warning("%s: %s", key, exc)
                finish(key, task, exc)
                continue
            keep.append((key, task))
            coms.append(com)
        return keep, coms

    def _advance(self, key, task, finish) -> bool:
        """Run ``task`` to its next evaluation (True) or its end (False: ``finish`` called)."""
        try:
            if task.advance():
                return True
        except self.errors as exc:
            finish(key, task, exc)
            return False
        finish(key, task, None)
        return False

    def describe(self) -> str:
        return (f"{self.evaluations} evaluations in {self.rounds} batched committee calls "
                f"({self.committee_seconds:.3g} s); {self.budget.describe()}")


__all__ = ["BatchedRelaxation"]
