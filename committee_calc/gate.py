"""The uncertainty gate: the one evaluator of committees for science code and drivers.

::

    gate = Gate(committee)                              # committee only: always trusted
    gate = Gate(committee, reference, thresholds={"forces_std_max_eVA": 0.3},
                hard_cap={"forces_std_max_eVA": 3.0}, logic="any",
                label_store="labels.extxyz", provenance={"driver": "relax"})
    res = gate.evaluate(atoms, step=None, info=None)    # -> GateResult
    many = gate.evaluate_many(images)                   # one batched committee call
    coms = gate.predict_committee(images)               # batched committee output, not decided
    res = gate.evaluate(atoms, committee_results=coms[0])  # ... decided per structure
    atoms.calc = gate                                   # or drive any ASE optimiser/MD

Limits (``thresholds``, ``hard_cap``) are parsed by
:func:`committee_calc.measures.parse_limits` (``<measure>_<unit>`` keywords or
``<measure>: value`` in internal units / with a unit string); the decision is
:func:`committee_calc.measures.decide`.

Decision per structure
    1. The committee is evaluated on a private copy (the caller's atoms are
       never modified).  Non-finite output (every member NaN/inf, or
       ``n_nonfinite > 0``, or NaN in the means) is untrusted, caps aside.
    2. A measure above its hard cap raises :class:`~committee_calc.errors.GateStop`;
       nothing is labelled.
    3. Above the thresholds (``logic`` any/all) the structure is untrusted.
    4. Untrusted: the :class:`~committee_calc.labeller.Labeller` computes it with
       the reference and appends the label (when a store is given); without a
       reference, :class:`~committee_calc.errors.NonFiniteOutputError` is raised
       (only non-finite output can be untrusted without thresholds).
    5. Every ``retrain_every`` new labels, ``retrain(label_file)`` returns the
       committee that replaces ``gate.committee`` (a failure warns and keeps the
       old one; ``retrain_errors="raise"`` re-raises).

``gate.results`` after an ASE call holds the result used (energy, free_energy,
forces, stress) plus ``gate_decision``, ``gate_reason``, ``gate_measures`` and
the committee's uncertainty keys.  Counters: ``n_calls``, ``n_committee_calls``,
``n_trusted``, ``n_reference_calls``, ``n_labels``, ``n_retrains``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from . import keys as K
from .domain import check_results
from .errors import CommitteeWarning, ConfigError, GateStop, NonFiniteOutputError
from .labeller import Labeller
from .measures import check_energy_offsets, check_limits, check_molecules, compute_measures, decide, parse_limits
from .molecules import count_molecules
from .structures import is_bulk, structure_hash


@dataclass(frozen=True)
class GateResult:
    """Outcome of one gate evaluation.

    decision: ``"committee"`` | ``"reference"``; reason: why, as text;
    measures: {measure: value} in internal units (empty if the committee failed);
    results: the result used (energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³], …);
    committee_results: the committee's schema dict, or None if it failed;
    label_index: index of the label in the store, or None.
    """

    decision: str
    reason: str
    measures: dict
    results: dict
    committee_results: dict | None
    label_index: int | None = None

    @property
    def energy(self) -> float:
        """Energy used [eV]."""
        return float(self.results[K.ENERGY])


def require_gate(obj, what: str):
    """``obj`` if it is a :class:`Gate`, else ConfigError: science code takes exactly one evaluator."""
    if not isinstance(obj, Gate):
        raise ConfigError(f"{what} evaluates through a Gate, got {type(obj).__name__}; wrap a "
                          "committee or calculator: Gate(committee) (committee only) or "
                          "Gate(committee, reference, thresholds=…)")
    return obj


#: "no committee results given" (None means: the committee's output was not finite)
_UNSET = object()


def _finite(res) -> bool:
    if res is None or res.get(K.N_NONFINITE, 0):
        return False
    return all(np.all(np.isfinite(res[k])) for k in (K.ENERGY, K.FORCES, K.STRESS) if k in res)


class Gate(Calculator):
    """Committee when trusted, reference otherwise (module docstring).

    Parameters
    ----------
    committee: a CommitteeCalculator-like calculator (``calculate``/``results``; ``predict`` batches).
    reference: ASE calculator, ReferenceSpec, reference YAML or Reference; None = committee only.
    thresholds, hard_cap: limits for :func:`~committee_calc.measures.parse_limits`.
    logic: ``"any"`` or ``"all"`` thresholds must be exceeded to fall back.
    label_store: LabelStore or path; labels of reference results go there.
    provenance: dict stored with every label.
    molecules: molecule count (int or ``"auto"``) for per-molecule measures.
    stress: ``"auto"`` (bulk structures), True or False.
    retrain, retrain_every, retrain_errors: on-the-fly retraining (module docstring).
    """

    implemented_properties = ((K.ENERGY, K.FREE_ENERGY, K.FORCES, K.STRESS, K.GATE_DECISION,
                               K.GATE_REASON, K.GATE_MEASURES) + K.COMMITTEE_KEYS)
    default_parameters: dict = {}

    def __init__(self, committee, reference=None, thresholds=None, logic="any", hard_cap=None,
                 label_store=None, provenance=None, retrain=None, retrain_every=None,
                 molecules=None, stress="auto", retrain_errors="warn", **kwargs):
        super().__init__(**kwargs)
        if not hasattr(committee, "calculate") or not hasattr(committee, "results"):
            raise ConfigError(f"committee must be a CommitteeCalculator-like calculator, got {committee!r}")
        self.committee = committee
        self.thresholds = parse_limits(thresholds, what="threshold")
        self.hard_cap = parse_limits(hard_cap, what="hard cap")
        self.logic = logic
        self.molecules = check_molecules(molecules)
        check_limits(self.thresholds, self.hard_cap, logic,
                     self.molecules if self.molecules is not None
                     else getattr(committee, "molecules", None))
        check_energy_offsets(committee, self.thresholds, self.hard_cap)  # mixed frameworks: warn
        if self.thresholds and reference is None:
            raise ConfigError("thresholds need a reference calculator to fall back to; pass "
                              "reference= (an ASE calculator, ReferenceSpec or YAML path)")
        if label_store is not None and reference is None:
            raise ConfigError("a label store needs a reference calculator to compute labels")
        if stress not in ("auto", True, False):
            raise ConfigError(f"stress must be 'auto', True or False, got {stress!r}")
        self.stress_mode = stress
        self.labeller = (None if reference is None
                         else Labeller(reference, label_store, provenance=provenance))
        self._check_retrain(retrain, retrain_every, retrain_errors)
        self.step = None
        self.n_calls = self.n_committee_calls = self.n_trusted = 0
        self.n_retrains = 0
        self._labels_at_retrain = 0
        self._nmol_cache = (None, None)
        self.last = None

    def _check_retrain(self, retrain, every, errors):
        if (retrain is None) != (every is None):
            raise ConfigError("give both retrain (a callable) and retrain_every (labels), or neither")
        if retrain is not None:
            if not callable(retrain):
                raise ConfigError("retrain must be callable(label_file) -> committee")
            if self.label_store is None:
                raise ConfigError("retraining needs a label_store to train on")
            if isinstance(every, bool) or int(every) != every or every < 1:
                raise ConfigError(f"retrain_every must be a positive int, got {every!r}")
        if errors not in ("warn", "raise"):
            raise ConfigError("retrain_errors must be 'warn' or 'raise'")
        self.retrain, self.retrain_every, self.retrain_errors = retrain, every, errors

    # ------------------------------------------------------------------ views
    @property
    def reference(self):
        """The :class:`~committee_calc.reference.Reference`, or None (committee only)."""
        return None if self.labeller is None else self.labeller.reference

    @property
    def label_store(self):
        return None if self.labeller is None else self.labeller.store

    @property
    def provenance(self) -> dict:
        return {} if self.labeller is None else self.labeller.provenance

    @property
    def n_reference_calls(self) -> int:
        return 0 if self.labeller is None else self.labeller.n_reference_calls

    @property
    def n_labels(self) -> int:
        return 0 if self.labeller is None else self.labeller.n_labels

    @property
    def labels_since_retrain(self) -> int:
        """New labels since the last retraining (what ``retrain_every`` counts)."""
        return int(self.n_labels - self._labels_at_retrain)

    def restore_retrain_state(self, labels_since_retrain: int) -> None:
        """Resume the retraining schedule of an earlier run (``labels_since_retrain`` saved by it)."""
        self._labels_at_retrain = self.n_labels - int(labels_since_retrain)

    def committee_only(self) -> Gate:
        """A gate on the same committee with the same hard caps, molecules and stress mode but no
        reference, thresholds or retraining (e.g. to record a trajectory and label afterwards)."""
        return Gate(self.committee, hard_cap=self.hard_cap or None, logic=self.logic,
                    molecules=self.molecules, stress=self.stress_mode)

    def n_molecules(self, atoms):
        """Molecule count of ``atoms`` (None if not configured)."""
        mol = self.molecules if self.molecules is not None else getattr(self.committee, "molecules", None)
        if mol != "auto":
            return mol
        key = structure_hash(atoms, decimals=2)  # connectivity can change with the geometry
        if self._nmol_cache[0] != key:
            self._nmol_cache = (key, count_molecules(atoms))
        return self._nmol_cache[1]

    def want_stress(self, atoms, properties=()) -> bool:
        if K.STRESS in properties:
            return True
        if self.stress_mode is True or (self.stress_mode == "auto" and is_bulk(atoms)):
            return K.STRESS in getattr(self.committee, "implemented_properties", ())
        return False

    # ------------------------------------------------------------------ evaluation
    def _run_committee(self, atoms, stress, count=True):
        copy = atoms.copy()
        copy.calc = None
        self.n_committee_calls += bool(count)
        try:
            self.committee.calculate(copy, [K.ENERGY, K.FORCES] + ([K.STRESS] if stress else []),
                                     all_changes)
        except NonFiniteOutputError:
            return None
        return dict(self.committee.results)

    def evaluate(self, atoms, step=None, info=None, properties=(K.ENERGY, K.FORCES),
                 baseline=None, threshold_scale=1.0, committee_results=_UNSET) -> GateResult:
        """Gate one structure (``atoms`` is not modified); see the module docstring.

        baseline: Δ-learning baseline values stored with a label (default: from the committee).
        threshold_scale: multiplies the thresholds for this call (hysteresis: a re-entry factor
            < 1 while the caller is on the reference surface); caps are not scaled.
        committee_results: the committee's output for exactly this ``atoms`` and ``properties``,
            computed beforehand by :meth:`committee_output` or :meth:`predict_committee` (None:
            not finite); the call counts as one committee call, as if made here.
        """
        stress = self.want_stress(atoms, properties)
        if committee_results is _UNSET:
            com = self._run_committee(atoms, stress)
        else:
            self.n_committee_calls += 1
            com = None if committee_results is None else dict(committee_results)
        return self._decide(atoms, com, stress, step, info, baseline, threshold_scale)

    def committee_output(self, atoms, properties=(K.ENERGY, K.FORCES)):
        """The committee's output for ``atoms`` as :meth:`evaluate` computes it (schema dict, None
        when not finite), not yet decided on or counted: pass it to ``evaluate(...,
        committee_results=)``.  Lets a caller look at the committee's answer (e.g. a force
        blow-up) before the gate may call the reference."""
        return self._run_committee(atoms, self.want_stress(atoms, properties), count=False)

    def predict_committee(self, images, properties=(K.ENERGY, K.FORCES)) -> list:
        """:meth:`committee_output` of many structures in one batched committee call
        (``committee.predict`` with all structures in one batch; a committee without ``predict``
        is looped).  Returns one schema dict (None: not finite) per structure, equal to what
        :meth:`evaluate` would compute for it alone (up to the round-off of batching; the molecule
        count of per-molecule measures is the gate's, :meth:`n_molecules`)."""
        images = list(images)
        stress = [self.want_stress(a, properties) for a in images]
        predict = getattr(self.committee, "predict", None)
        if predict is None:
            return [self._run_committee(a, s, count=False) for a, s in zip(images, stress)]
        out = [None] * len(images)
        for flag in (False, True):  # as _run_committee: stress asked only where it is wanted
            idx = [i for i, s in enumerate(stress) if s is flag]
            if not idx:
                continue
            props = [K.ENERGY, K.FORCES] + ([K.STRESS] if flag else [])
            coms = predict([images[i] for i in idx], batch_size=len(idx), properties=props)
            for i, c in zip(idx, coms):
                out[i] = c if c.get(K.FORCES) is not None else None
        return out

    def evaluate_many(self, images, infos=None, properties=(K.ENERGY, K.FORCES), batch_size=None,
                      progress=False, nonfinite="raise", baselines=None) -> list:
        """Gate many structures with one batched committee call (``committee.predict``).

        Stress is computed only when ``properties`` asks for it (or the gate was built with
        ``stress=True``).  ``nonfinite="none"``: a structure whose committee output is not finite
        and that the gate cannot send to a reference gets None in the list instead of raising
        :class:`~committee_calc.errors.NonFiniteOutputError`.  ``baselines``: per-structure
        Δ-learning baseline values stored with labels (list of dicts or None).  Returns a list of
        GateResult.
        """
        if nonfinite not in ("raise", "none"):
            raise ConfigError(f"nonfinite must be 'raise' or 'none', got {nonfinite!r}")
        images = list(images)
        infos = list(infos) if infos is not None else [None] * len(images)
        baselines = list(baselines) if baselines is not None else [None] * len(images)
        stress = [self.want_stress(a, properties) if (K.STRESS in properties or self.stress_mode is True)
                  else False for a in images]
        predict = getattr(self.committee, "predict", None)
        if predict is None:
            coms = [self._run_committee(a, s) for a, s in zip(images, stress)]
        else:
            props = list(properties) + ([K.STRESS] if all(stress) and K.STRESS not in properties else [])
            coms = predict(images, batch_size=batch_size, properties=props, progress=progress)
            coms = [c if c.get(K.FORCES) is not None else None for c in coms]
            self.n_committee_calls += len(images)
        out = []
        for a, c, s, i, b in zip(images, coms, stress, infos, baselines):
            try:
                out.append(self._decide(a, c, s, None, i, b))
            except NonFiniteOutputError:
                if nonfinite == "raise":
                    raise
                out.append(None)
        return out

    def _decide(self, atoms, com, stress, step, info, baseline=None, threshold_scale=1.0) -> GateResult:
        self.n_calls += 1
        finite = _finite(com)
        nmol = None
        if com is not None:  # the committee's own count when it has one, else the gate's
            nmol = com[K.N_MOLECULES] if K.N_MOLECULES in com else self.n_molecules(atoms)
        measures = compute_measures(com, len(atoms), nmol) if com else {}
        if com is not None and nmol:
            com.setdefault(K.N_MOLECULES, nmol)
            if K.ENERGY_STD_PER_MOLECULE in measures:
                com.setdefault(K.ENERGY_STD_PER_MOLECULE, measures[K.ENERGY_STD_PER_MOLECULE])
        if self.labeller is None and measures:  # committee only: the recorded trust thresholds warn
            check_results(self.committee, atoms, measures)
        d = decide(measures, self.thresholds, self.hard_cap, self.logic, finite=finite,
                   threshold_scale=threshold_scale)
        if d.stop:
            raise GateStop(d.reason + "; the structure is too far from the training data to "
                           "label. Stop here, or raise the hard cap")
        label_index = None
        if d.trusted:
            self.n_trusted += 1
            decision, results = K.COMMITTEE, dict(com)
        else:
            if self.labeller is None:
                raise NonFiniteOutputError(f"{d.reason}, and the gate has no reference to fall "
                                           "back to; give it a reference calculator")
            # the label records the thresholds in force and why (adaptive thresholds change)
            label = self._label(atoms, com, step, {**d.provenance, **(info or {})}, stress, baseline)
            decision, label_index = K.REFERENCE, label.index
            results = {k: v for k, v in (com or {}).items() if k in K.COMMITTEE_KEYS}
            results.update(label.results)
        results.update({K.GATE_DECISION: decision, K.GATE_REASON: d.reason,
                        K.GATE_MEASURES: dict(measures)})
        out = GateResult(decision, d.reason, dict(measures), results, com, label_index)
        self.last = out
        return out

    def _label(self, atoms, com, step, info, stress, baseline=None):
        prov = {"step": step if step is not None else (self.step if self.step is not None
                                                       else self.n_calls - 1)}
        prov.update(info or {})
        label = self.labeller.label(atoms, committee_results=com, provenance=prov, stress=stress,
                                    baseline_results=baseline)
        if label.index is not None and not label.duplicate:
            self._maybe_retrain()
        return label

    def label(self, atoms, committee_results=None, info=None):
        """Label ``atoms`` with the reference now (e.g. a relaxation stopped on U) ->
        :class:`~committee_calc.labeller.Label`.  Needs a reference."""
        if self.labeller is None:
            raise ConfigError("labelling needs a gate with a reference calculator")
        return self._label(atoms, committee_results, None, info, None)

    def _maybe_retrain(self):
        if self.retrain is None or self.n_labels - self._labels_at_retrain < self.retrain_every:
            return
        self._labels_at_retrain = self.n_labels
        try:
            new = self.retrain(str(self.label_store.path))
            if not hasattr(new, "calculate") or not hasattr(new, "results"):
                raise ConfigError(f"retrain callback returned {new!r}, not a committee calculator")
        except Exception as exc:  # noqa: BLE001
            if self.retrain_errors == "raise":
                raise
            warnings.warn(f"retraining failed ({type(exc).__name__}: {exc}); keeping the "
                          "current committee", CommitteeWarning, stacklevel=3)
            return
        self.committee = new
        self.n_retrains += 1

    # ------------------------------------------------------------------ ASE interface
    def calculate(self, atoms=None, properties=(K.ENERGY,), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = dict(self.evaluate(self.atoms, step=self.step, properties=properties).results)

    def __repr__(self):
        return (f"Gate({self.committee!r}, reference={self.reference!r}, thresholds="
                f"{self.thresholds}, logic={self.logic!r})")


__all__ = ["Gate", "GateResult", "require_gate"]
