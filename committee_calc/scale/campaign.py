"""A campaign round's labels as parallel reference tasks (``committee-campaign --workers N``).

The campaign's label stage (:func:`committee_calc.campaign.stages.label_stage`) labels its
candidates one after the other (each label is checked, converged ones may be polished with
reference steps).  With the reference on an executor
(:class:`~committee_calc.scale.labelling.ExecutorReference`), :func:`prefetch_labels` first sends
the stage's first labels, every one the stage is about to ask for, to the workers at once
(:func:`~committee_calc.scale.labelling.label_on_workers`: one task each, appended by this process
in candidate order, with exactly the committee results and provenance the stage gives them).  The
stage then finds each label in the store (no reference call) and goes on as in-process; polish
steps (sequential by nature) stay tasks one at a time.  The prefetched tasks are counted in the
reference's tally (``reference tasks: N done`` at the end of the run counts every one).  The label
budget is respected: no more new labels are sent than the budget leaves.  A label that failed on
the workers is asked again by the stage (and its failure recorded there, as in-process).
"""
from __future__ import annotations

from ase import Atoms

from ..io import read_uncertainties
from ..structures import read_structures
from .labelling import LabelRun, label_on_workers

#: row outcomes the stage does not label
NOT_LABELLED = ("continue", "exploded")


def stage_jobs(state, labeller, slot) -> tuple:
    """(geometries, committee results, provenances) of the labels the round's stage will ask for
    first, in its order, within the label budget.  slot: ``stages.slot`` (the provenance key)."""
    rec, r = state.round_record(), state.round
    budget = state.data["settings"]["label_budget"]
    room = None if budget is None else budget - len(labeller.store)
    geoms, coms, provs = [], [], []
    for cid in rec["active"]:
        row = rec["results"][cid]
        if cid in rec["labelled"] or row["outcome"] in NOT_LABELLED:
            continue
        frame = read_structures(state.round_dir() / "relaxed" / f"{cid}.extxyz")[0]
        geometry = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        i = labeller.store.find(geometry)
        if i is not None and labeller.store.reference_results(i, labeller.reference.hash) is not None:
            continue  # stored: the stage finds it, it uses no budget
        if room is not None and len(geoms) >= room:
            break
        geoms.append(geometry)
        coms.append(read_uncertainties(frame) or None)
        provs.append({"round": r, "candidate": cid, "reason": "verify" if row["outcome"] == "converged" else "stop",
                      "slot": slot(r, cid), "step": int(state.candidates[cid]["steps"]) + row["steps"]})
    return geoms, coms, provs


def prefetch_labels(state, labeller, slot, progress: bool = False) -> LabelRun | None:
    """Label the stage's first labels on the executor of ``labeller.reference`` (an
    ExecutorReference; otherwise nothing is done, None) -> the :class:`~.labelling.LabelRun`."""
    ref = labeller.reference
    if not hasattr(ref, "executor") or not hasattr(ref, "inner"):
        return None
    geoms, coms, provs = stage_jobs(state, labeller, slot)
    if not geoms:
        return None
    before = ref.tally.done + ref.tally.failed
    run = label_on_workers(ref.executor, labeller, geoms, committee_results=coms, provenance=provs,
                           retries=ref.retries, progress=progress, tally=ref.tally)
    ref.n_calls += ref.tally.done + ref.tally.failed - before  # the run's tally counts every reference task
    return run


__all__ = ["NOT_LABELLED", "prefetch_labels", "stage_jobs"]
