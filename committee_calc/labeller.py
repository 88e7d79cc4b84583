"""The one labelling path: reference → finite check → de-duplicate → append with provenance.

::

    labeller = Labeller(reference, "labels.extxyz", provenance={"driver": "md"})
    label = labeller.label(atoms, committee_results=res, provenance={"step": 120})
    label.results["energy"], label.index, label.duplicate

Every part of the package that turns a structure into a training label (the
gate's fallback, MD frame selection, active learning, re-ranking, relaxation
policies) calls :meth:`Labeller.label`; it is the only caller of
:meth:`committee_calc.labels.LabelStore.append` for reference labels.

* **reference**: a fresh calculator per call with optional timeout; a failure
  saves the structure under ``failed/`` beside the label store and raises
  :class:`~committee_calc.errors.ReferenceCalculationError` — nothing is
  appended (:mod:`committee_calc.reference`).
* **finite check**: missing or non-finite energy/forces/stress is a failure.
* **de-duplication**: a structure already in the store (same
  :func:`~committee_calc.structures.structure_hash`) and labelled by the same
  reference (same settings hash) is not computed again;
  its stored label is returned with ``duplicate=True``.  A resumed run
  therefore never pays for a label twice.
* **provenance**: the labeller's own dict, the reference name and hash, and
  the call's dict are stored with the label.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import keys as K
from .errors import ConfigError
from .labels import LabelStore
from .reference import as_reference
from .structures import is_bulk


@dataclass(frozen=True)
class Label:
    """One labelled structure.

    results: reference values — energy, free_energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³].
    index: index in the label store (None without a store).
    duplicate: the structure was already labelled; no reference call was made.
    """

    results: dict
    index: int | None
    duplicate: bool = False


def _baseline(committee_results):
    """Δ-learning baseline values carried by committee results, or None."""
    if not committee_results or K.BASELINE_ENERGY not in committee_results:
        return None
    return {K.ENERGY: committee_results[K.BASELINE_ENERGY],
            K.FORCES: committee_results.get(K.BASELINE_FORCES),
            K.STRESS: committee_results.get(K.BASELINE_STRESS)}


class Labeller:
    """Reference + label store (see module docstring).

    reference: ASE calculator, :class:`~committee_calc.reference.ReferenceSpec`,
        reference YAML path or :class:`~committee_calc.reference.Reference`.
    store: :class:`~committee_calc.labels.LabelStore`, a path, or None (compute only).
    provenance: dict stored with every label (e.g. ``{"driver": "relax"}``).
    deduplicate: reuse a stored label of the same geometry instead of computing it.

    Counters: ``n_reference_calls``, ``n_labels`` (new labels appended), ``n_duplicates``.
    """

    def __init__(self, reference, store=None, provenance=None, deduplicate=True):
        if reference is None:
            raise ConfigError("labelling needs a reference calculator (an ASE calculator, a "
                              "reference YAML or a ReferenceSpec)")
        if store is not None and not isinstance(store, LabelStore):
            store = LabelStore(store)
        self.store = store
        failed = store.path.parent / "failed" if store is not None else None
        self.reference = as_reference(reference, failed_dir=failed)
        self.provenance = dict(provenance or {})
        self.deduplicate = bool(deduplicate)
        self.n_reference_calls = self.n_labels = self.n_duplicates = 0

    def properties(self, atoms, stress=None) -> list:
        """energy, forces, and stress for bulk structures (``stress=None``) or when asked."""
        stress = is_bulk(atoms) if stress is None else bool(stress)
        return [K.ENERGY, K.FORCES] + ([K.STRESS] if stress else [])

    def label(self, atoms, committee_results=None, provenance=None, stress=None,
              baseline_results=None) -> Label:
        """Reference values of ``atoms`` (not modified), appended to the store once.

        committee_results: the committee's prediction and uncertainty, stored with the label.
        provenance: dict merged over the labeller's provenance.
        stress: compute stress (None: for bulk structures).
        baseline_results: Δ-learning baseline values (default: from committee_results).
        Raises :class:`~committee_calc.errors.ReferenceCalculationError` on failure.
        """
        if self.store is not None and self.deduplicate:
            index = self.store.find(atoms)
            stored = (None if index is None
                      else self.store.reference_results(index, self.reference.hash))
            if stored is not None:
                self.n_duplicates += 1
                return Label(stored, index, True)
        results = self.reference.compute(atoms, self.properties(atoms, stress))
        self.n_reference_calls += 1
        if self.store is None:
            return Label(results, None)
        prov = dict(self.provenance, reference=self.reference.name,
                    reference_hash=self.reference.hash)
        prov.update(provenance or {})
        base = baseline_results if baseline_results is not None else _baseline(committee_results)
        index = self.store.append(atoms, results, committee_results=committee_results,
                                  provenance=prov, baseline_results=base)
        duplicate = self.store.last_was_duplicate
        self.n_labels += not duplicate
        self.n_duplicates += duplicate
        return Label(results, index, duplicate)

    def __repr__(self):
        return f"Labeller({self.reference!r}, store={self.store!r})"


__all__ = ["Labeller", "Label"]
