"""Labels computed by a worker, appended by the one writer through the one labelling path.

A worker's gate labels into a private copy of the label store (so that its labeller
de-duplicates against the labels the driver had when the task was sent); the new frames travel
back as plain records (:class:`RecordingStore`), and the driver appends them with
:meth:`Labeller.label <committee_calc.labeller.Labeller.label>` fed by a :class:`ReplayReference`
that returns the worker's values under the real reference's name and hash.  The labeller's
de-duplication (same structure, same reference) then drops a label that a retried or re-run task
computed again: no label is stored twice.
"""
from __future__ import annotations

import os
import socket

import numpy as np
from ase import Atoms

from ..labeller import Labeller
from ..labels import LabelStore
from ..reference import Reference


class ReplayReference(Reference):
    """A :class:`~committee_calc.reference.Reference` that returns given results (worker labels)
    under the name and hash of ``reference`` (the one the worker ran).  ``queue(results)`` sets
    what the next :meth:`compute` returns."""

    def __init__(self, reference: Reference):
        self.spec, self.calc, self.timeout_s, self.isolation = None, None, None, "inline"
        self.workdir = self.failed_dir = self.last_failure_dir = None
        self.keep_workdirs, self.n_calls, self.n_failures = False, 0, 0
        self._name, self._hash, self._next = reference.name, reference.hash, None

    @property
    def name(self) -> str:
        return self._name

    @property
    def hash(self) -> str:
        return self._hash

    def queue(self, results: dict) -> None:
        self._next = results

    def compute(self, atoms, properties=("energy", "forces")) -> dict:
        results, self._next = self._next, None
        if results is None:  # pragma: no cover - only the replay calls compute
            raise RuntimeError("ReplayReference.compute without queued results")
        return dict(results)


class RecordingStore(LabelStore):
    """A worker's private label store that also keeps, in ``records``, what each new label was made
    of (plain picklable dicts: numbers, positions [Å] and cell [Å] at full precision, pbc, reference
    results, committee results, baseline results, provenance and ``worker`` = host:pid), for
    :func:`append_records` in the driver."""

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        self.records = []

    def format_frame(self, atoms, reference_results: dict, committee_results=None, provenance=None,
                     baseline_results=None) -> tuple:
        out = super().format_frame(atoms, reference_results, committee_results, provenance, baseline_results)
        prov = dict(provenance or {}, worker=f"{socket.gethostname()}:{os.getpid()}")
        self.records.append({"numbers": np.array(atoms.numbers), "positions": np.array(atoms.positions, float),
                             "cell": np.array(atoms.cell[:], float), "pbc": np.array(atoms.pbc),
                             "results": dict(reference_results), "committee": committee_results,
                             "baseline": baseline_results, "provenance": prov})
        return out


def append_records(labeller: Labeller, records) -> tuple:
    """Append worker label ``records`` to ``labeller``'s store through ``labeller.label`` (the
    driver's labeller: its store, provenance and reference) -> (new labels, duplicates dropped)."""
    if labeller is None or labeller.store is None or not records:
        return 0, 0
    replay = Labeller(ReplayReference(labeller.reference), labeller.store, provenance=labeller.provenance)
    for r in records:
        atoms = Atoms(numbers=r["numbers"], positions=r["positions"], cell=r["cell"], pbc=r["pbc"])
        replay.reference.queue(r["results"])
        replay.label(atoms, committee_results=r["committee"], provenance=r["provenance"],
                     stress="stress" in r["results"], baseline_results=r["baseline"])
    return replay.n_labels, replay.n_duplicates


__all__ = ["RecordingStore", "ReplayReference", "append_records"]
