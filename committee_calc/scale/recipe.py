"""The gate of a driver as plain data, rebuilt inside a worker process (no live model travels).

::

    recipe = GateRecipe.from_gate(gate, "committee.yaml")       # in the driver
    gate = recipe.build_gate(private_store(recipe, tmpdir))     # in the worker (committee cached)

The committee is rebuilt from its YAML (cached per worker process by path, modification time and
molecules); the reference travels as its :class:`~committee_calc.reference.Reference` (a spec or a
picklable calculator); the label store a worker writes to is a private copy of the driver's
(:func:`private_store`: de-duplication against the labels already there), whose new labels travel
back as records (:class:`~.replay.RecordingStore`).  What lives in one process only (on-the-fly
retraining, adaptive thresholds) is refused with a ConfigError.  A committee-only gate whose
committee is watched (:func:`committee_calc.domain.watch`) is watched in the worker too; the
warnings given there travel back (:func:`domain_state`) and the driver adds them to its own watch
(:func:`merge_domain`: summary.md lists them, as in-process).
"""
from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_committee
from ..domain import unwatch, watch
from ..errors import ConfigError
from ..gate import Gate
from ..measures import check_molecules
from .replay import RecordingStore

_COMMITTEES: dict = {}  # worker-process cache: (path, mtime, molecules) -> committee

SCALE_OPTIONS = "--workers/--scheduler/--cluster-config"


@dataclass(frozen=True)
class GateRecipe:
    """Everything a worker needs to rebuild the driver's gate (plain, picklable data).

    committee: committee YAML path; molecules: as ``load_committee``.  reference: a
    :class:`~committee_calc.reference.Reference` or None.  label_store: the driver's label store
    path (copied by workers for de-duplication, never written by them) or None.  thresholds,
    hard_cap: internal units; logic, provenance as :class:`~committee_calc.gate.Gate`.
    watch_domain: the driver's committee is watched (domain/trust warnings of a committee-only run).
    """

    committee: str
    molecules: object = None
    reference: object = None
    label_store: str | None = None
    thresholds: dict = field(default_factory=dict)
    hard_cap: dict = field(default_factory=dict)
    logic: str = "any"
    provenance: dict = field(default_factory=dict)
    watch_domain: bool = False

    @classmethod
    def from_gate(cls, gate: Gate, committee_yaml, molecules=None) -> GateRecipe:
        """The recipe of ``gate`` whose committee was loaded from ``committee_yaml``.  ConfigError
        for what cannot run in several processes (retraining, adaptive thresholds, no YAML)."""
        if gate.retrain is not None:
            raise ConfigError(f"on-the-fly retraining (--retrain-every) changes the committee in one "
                              f"process; run it without {SCALE_OPTIONS}")
        adaptive = [k for k, v in gate.thresholds.items() if not isinstance(v, int | float)]
        if adaptive:
            raise ConfigError(f"adaptive thresholds ({', '.join(adaptive)}) follow the running values of one "
                              f"process; give fixed thresholds with {SCALE_OPTIONS}")
        if not committee_yaml or not Path(committee_yaml).is_file():
            raise ConfigError(f"workers rebuild the committee from its YAML file; {committee_yaml!r} is not one")
        ref = None
        if gate.reference is not None:
            ref = copy.copy(gate.reference)
            ref.n_calls = ref.n_failures = 0
        return cls(committee=str(Path(committee_yaml).absolute()), molecules=molecules, reference=ref,
                   label_store=str(gate.label_store.path) if gate.label_store is not None else None,
                   thresholds=dict(gate.thresholds), hard_cap=dict(gate.hard_cap), logic=gate.logic,
                   provenance=dict(gate.provenance), watch_domain=_watch_of(gate.committee) is not None)

    def committee_object(self):
        """The committee in this process (loaded once per process and YAML version)."""
        mol = check_molecules(self.molecules)
        key = (self.committee, os.path.getmtime(self.committee), repr(mol))
        if key not in _COMMITTEES:
            _COMMITTEES.clear()
            _COMMITTEES[key] = load_committee(self.committee, **({"molecules": mol} if mol is not None else {}))
        return _COMMITTEES[key]

    def build_gate(self, label_store=None) -> Gate:
        """The gate in this process; ``label_store``: where its labels go (a worker's private copy).
        A watched committee gets a fresh watch (warnings of this task only)."""
        committee = self.committee_object()
        if self.watch_domain:
            watch(committee)
        elif _watch_of(committee) is not None:  # cached from a watched run in this worker
            unwatch(committee)
        return Gate(committee, self.reference, thresholds=self.thresholds or None,
                    logic=self.logic, hard_cap=self.hard_cap or None, label_store=label_store,
                    provenance=self.provenance, molecules=check_molecules(self.molecules))


def _watch_of(committee):
    inner = getattr(committee, "committee", None)
    inner = inner if inner is not None and hasattr(inner, "members") else committee
    return getattr(inner, "domain_watch", None)


def domain_state(gate: Gate) -> tuple:
    """(warned (structure, measure) pairs, messages) of ``gate``'s committee watch (empty when
    not watched): what a worker sends back."""
    w = _watch_of(gate.committee)
    return (sorted(w.warned), list(w.messages)) if w is not None else ([], [])


def merge_domain(committee, state) -> None:
    """Add a worker's :func:`domain_state` to ``committee``'s watch in the driver (each
    (structure, measure) once; its warning was re-emitted with the task's result)."""
    w = _watch_of(committee)
    if w is None or not state:
        return
    warned, messages = state
    new = [tuple(k) for k in warned if tuple(k) not in w.warned]
    w.warned.update(new)
    w.messages.extend(m for m in messages if m not in w.messages)


def private_store(recipe: GateRecipe, folder) -> RecordingStore | None:
    """A worker's :class:`~.replay.RecordingStore` in ``folder``: a copy of the driver's label
    store (None when the recipe has none)."""
    if recipe.label_store is None:
        return None
    store = RecordingStore(Path(folder) / "labels.extxyz")
    if os.path.isfile(recipe.label_store):
        shutil.copyfile(recipe.label_store, store.path)
    return store


__all__ = ["GateRecipe", "SCALE_OPTIONS", "domain_state", "merge_domain", "private_store"]
