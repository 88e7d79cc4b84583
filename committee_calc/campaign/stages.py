"""The per-candidate stages of a campaign round: relax on the committee, label with the reference.

Relax (:func:`relax_stage`)
    Every active candidate relaxes from where it stopped (its last relaxed structure, fresh
    optimiser memory: the surface changed) with ``GatedRelaxer(Gate(committee), policy="stop",
    u_max=U_max, stop_thresholds=thresholds)`` — committee only (Hessmann et al.: stop when
    U = max‖σ_F‖/max‖F̄‖ > U_max, status ``uncertain``; a measure above a ``--threshold-…``
    also stops it, status ``threshold``; both stop *at* the structure that exceeded).  A
    candidate that stopped at a structure labelled in an earlier round (in the training set of
    this round's committee, or held out) relaxes on without these stops (``free``: the
    retrained committee is still unsure there; the reference check at its end decides); so
    does, at once, one that stops again right where a trained-on label is (:func:`_go_on`).
    The candidates relax in flight together, one batched committee call per round
    (:mod:`committee_calc.relax.batched`; the same trajectories as one after another).
    Each finished candidate's final frame is written to ``round_NNN/relaxed/<id>.extxyz``
    and its result to the state at once; a killed round
    relaxes the unfinished candidates again from the round's start (committee calls only, the
    same path as an uninterrupted run), never a reference call.
Label (:func:`label_stage`)
    Stopped candidates: their stop structure is labelled (reason ``stop``); candidates
    converged on the committee surface: a reference single point (reason ``verify``), which
    is also a label; the candidate is ``converged`` when the reference force (and, with
    ``cell``, stress) meets the target.  Labels go through the one
    :class:`~committee_calc.labeller.Labeller` with provenance round/candidate/step/reason; a
    resumed stage asks again and gets the stored label (no reference call).
Outcome of a relaxation: ``converged`` (status converged, or stopped on U with the force
below fmax: U = σ/|F| grows without bound at a minimum), ``continue`` (max_steps: no label,
relaxes on), ``exploded`` (a geometry guard fired: the candidate ends with that status and its
reason, nothing is labelled), ``hard_cap`` (a ``--cap-…`` hard cap: the candidate ends
``unfinished``, nothing is labelled), ``stop`` (any other status: uncertain, threshold, stalled,
non-finite output).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from ase import Atoms

from ..config import load_committee
from ..errors import CommitteeCalculationError, NonFiniteOutputError, ReferenceCalculationError
from ..fileio import append_frame, read_frames_repair, write_structures_atomic
from ..gate import Gate
from ..io import read_uncertainties
from ..relax.batched import BatchedRelaxation
from ..relax.budget import pool_budget
from ..relax.criteria import max_force, stress_residual_GPa
from ..relax.gated import GatedRelaxer
from ..scale.campaign import prefetch_labels
from ..structures import read_structures, structure_hash
from .polish import polish
from .state import CONVERGED, REFERENCE_FAILED, UNFINISHED

#: status of a relaxation ended by a geometry guard (:mod:`committee_calc.relax.guards`)
EXPLODED = "exploded"
#: status of a relaxation ended by a hard cap (``--cap-…``): too far from the data to label
HARD_CAP = "hard_cap"
#: U_max of a relaxation without the uncertainty stops (``free`` candidates)
NO_U_STOP = 1e300
#: relaxation statuses of an uncertainty stop (U_max, a stop threshold): labelled, then lifted
UNCERTAINTY_STOPS = ("uncertain", "threshold")


def slot(r, cid) -> str:
    """The provenance key of candidate ``cid``'s label in round ``r`` (``r = -1``: the probe)."""
    return f"round{r}:{cid}" if r >= 0 else f"probe:{cid}"


def slot_candidate(value) -> str | None:
    """The candidate id of a provenance ``slot`` (None for a label of another origin)."""
    return str(value).split(":", 1)[1] if isinstance(value, str) and ":" in value else None


def _num(x):
    """A JSON-safe float (None for NaN/inf/None)."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def start_structure(state, cid, inputs) -> Atoms:
    """Where candidate ``cid`` goes on from: its last relaxed structure (plain geometry, the
    input's constraints), or its input structure."""
    template = inputs[cid]
    rel = state.candidates[cid]["structure"]
    src = template if rel is None else read_structures(state.abs(rel))[0]
    atoms = Atoms(numbers=src.numbers, positions=src.positions, cell=src.cell, pbc=src.pbc)
    if template.constraints:
        atoms.set_constraint([c.copy() for c in template.constraints])
    atoms.info["candidate"] = cid
    return atoms


def make_relaxers(committee, settings) -> tuple:
    """(relaxer with the uncertainty stops: U_max and the stop thresholds, relaxer without them)
    on ``Gate(committee, hard_cap=caps)`` (committee only; the caps hold for both)."""
    gate = Gate(committee, hard_cap=settings.get("caps") or None, molecules=settings.get("molecules"))
    kw = {k: settings[k] for k in ("optimizer", "fmax", "max_steps", "cell", "pressure_GPa",
                                    "fix_symmetry")}
    kw["stress_tol_GPa"] = settings["verify_stress_GPa"]
    return (GatedRelaxer(gate, policy="stop", u_max=settings["u_max"],
                         stop_thresholds=settings["thresholds"] or None, **kw),
            GatedRelaxer(gate, policy="stop", u_max=NO_U_STOP, **kw))


def outcome(status: str, fmax_seen, fmax: float) -> str:
    """``converged`` | ``continue`` | ``exploded`` | ``hard_cap`` | ``stop`` (module docstring)."""
    if status in (EXPLODED, HARD_CAP):  # a geometry guard or a hard cap: final, never labelled
        return status
    if status == "converged" or (status == "uncertain" and fmax_seen is not None and fmax_seen < fmax):
        return "converged"
    return "continue" if status == "max_steps" else "stop"


def _frames_to(traj):
    """The frame writer of a candidate's trajectory (``append_frame`` looked up per call)."""
    return lambda f: append_frame(traj, f)


def _go_on(relaxers, res, atoms, cid, traj, trained, progress, r):
    """A relaxation that stopped on U or a stop threshold (:data:`UNCERTAINTY_STOPS`) at a
    structure the committee was trained on (``trained``: structure hashes of labels of earlier
    rounds) goes on at once without these stops: its label is in the training set, so the
    retrained committee's spread there is what it is, and waiting a round would only repeat the
    stop.  -> (result, True), or None when it does not apply."""
    if res.status not in UNCERTAINTY_STOPS or res.atoms is None or not trained:
        return None
    if structure_hash(res.atoms) not in trained:  # the hash reads the geometry only
        return None
    on = "U" if res.status == "uncertain" else "a stop threshold"
    progress(f"round {r}: {cid} stopped on {on} at a structure labelled in an earlier round: "
             "relaxing on without the uncertainty stops")
    again = atoms.copy()
    again.set_cell(res.atoms.cell, scale_atoms=False)
    again.positions = res.atoms.positions
    more = relaxers[True].relax(again, info={"candidate": cid}, on_frame=_frames_to(traj))
    return replace(more, steps=res.steps + more.steps,
                   n_committee_calls=res.n_committee_calls + more.n_committee_calls), True


def relax_stage(state, committee, inputs, progress, trained=frozenset(), atom_budget=None) -> None:
    """Relax the round's unfinished candidates (see the module docstring); saves the state
    after each.  trained: structure hashes of the labels the round's committee was trained on.

    The candidates relax in flight together (:class:`~committee_calc.relax.batched.
    BatchedRelaxation`: one batched committee call per round over the active candidates under
    an :class:`~committee_calc.relax.budget.AtomBudget`, ``atom_budget`` atoms or grown from
    timings), each on its own optimiser: the same trajectories and results as one after
    another.  A candidate that goes on without the uncertainty stops (:func:`_go_on`) does so alone.
    Results are recorded as candidates finish and put in the order of the round's candidates
    at the end."""
    rec, r, rdir = state.round_record(), state.round, state.round_dir()
    settings = state.data["settings"]
    relaxers = make_relaxers(committee, settings)
    (rdir / "trajectories").mkdir(parents=True, exist_ok=True)
    todo = [cid for cid in rec["active"] if cid not in rec["results"]]
    starts, frees, trajs = {}, {}, {}

    def start(cid):
        frees[cid] = bool(state.candidates[cid]["free"])
        trajs[cid] = rdir / "trajectories" / f"{cid}.extxyz"
        trajs[cid].unlink(missing_ok=True)  # a candidate killed half-way relaxes again from the start
        return relaxers[frees[cid]].start(starts[cid], info={"candidate": cid},
                                          on_frame=_frames_to(trajs[cid]))

    def finish(cid, task, exc):
        atoms, free, traj = starts[cid], frees[cid], trajs[cid]
        if exc is None:
            res = task.result
            more = None if free else _go_on(relaxers, res, atoms, cid, traj, trained, progress, r)
            if more is not None:
                res, free = more
            final, status, reason = res.atoms, res.status, res.reason
        else:
            failed = isinstance(exc, CommitteeCalculationError)  # a member raised on it
            res, status = None, "committee_failed" if failed else "nonfinite"
            reason = str(exc) if failed else f"non-finite committee output: {exc}"
            final = None
        if final is None:  # stopped at its first evaluation, or by non-finite output
            frames = read_frames_repair(traj)
            final = frames[-1] if frames else atoms
        write_structures_atomic(rdir / "relaxed" / f"{cid}.extxyz", [final])
        fmax_seen = _num(res.fmax) if res is not None else None
        row = {"status": status, "reason": reason, "free": free,
               "outcome": outcome(status, fmax_seen, settings["fmax"]),
               "steps": int(res.steps) if res is not None else 0, "fmax_eVA": fmax_seen,
               "energy_eV": _num(res.energy) if res is not None else None,
               "energy_std_eV": _num(res.energy_std) if res is not None else None,
               "force_uncertainty_relative": _num(res.force_uncertainty_relative) if res else None,
               "committee_calls": int(res.n_committee_calls) if res is not None else 0}
        rec["results"][cid] = row
        state.save()
        progress(f"round {r}: {cid} {status} after {row['steps']} steps"
                 + (" (no uncertainty stop)" if free else "") + f": {reason} -> {row['outcome']}")

    for cid in todo:
        starts[cid] = start_structure(state, cid, inputs)
    budget = pool_budget(todo, [starts[cid] for cid in todo], atom_budget)
    BatchedRelaxation(relaxers[False], budget, errors=(NonFiniteOutputError,)).run(
        [(cid, len(starts[cid])) for cid in todo], start, finish)
    order = [cid for cid in rec["active"] if cid in rec["results"]]
    order += [cid for cid in rec["results"] if cid not in order]
    if list(rec["results"]) != order:
        rec["results"] = {cid: rec["results"][cid] for cid in order}
        state.save()


def reference_check(results, settings, atoms=None) -> dict:
    """Reference energy [eV], largest atomic force [eV/Å] (the constraints of ``atoms``
    applied) and, with ``cell``, residual stress [GPa] (:mod:`committee_calc.relax.criteria`)
    of a label, and whether they meet the verification targets (``verified``)."""
    f = np.array(results["forces"], float).reshape(-1, 3)
    for c in getattr(atoms, "constraints", None) or ():
        c.adjust_forces(atoms, f)
    out = {"energy_eV": float(results["energy"]), "fmax_eVA": max_force(f), "stress_max_GPa": None}
    ok = out["fmax_eVA"] <= settings["verify_fmax"]
    if settings["cell"] and results.get("stress") is not None:
        out["stress_max_GPa"] = stress_residual_GPa(results["stress"], settings["pressure_GPa"])
        ok = ok and out["stress_max_GPa"] <= settings["verify_stress_GPa"]
    out["verified"] = bool(ok)
    return out


def _label_one(state, labeller, cid, row, r, inputs):
    frame = read_structures(state.round_dir() / "relaxed" / f"{cid}.extxyz")[0]
    com = read_uncertainties(frame) or None
    geometry = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    reason = "verify" if row["outcome"] == "converged" else "stop"
    prov = {"round": r, "candidate": cid, "reason": reason, "slot": slot(r, cid),
            "step": int(state.candidates[cid]["steps"]) + row["steps"]}
    try:
        lab = labeller.label(geometry, committee_results=com, provenance=prov)
    except ReferenceCalculationError as exc:
        return {"action": REFERENCE_FAILED, "reason": str(exc).splitlines()[0]}
    # labelled in an earlier round, so trained on (unless held out) by this round's committee
    info = labeller.store.read(lab.index)[0].info
    seen = info.get("prov_slot") != slot(r, cid) and int(info.get("prov_round", r)) < r and r > 0
    start = start_structure(state, cid, inputs)  # the labelled geometry with the input's constraints
    start.set_cell(frame.cell, scale_atoms=False)
    start.positions = frame.positions
    settings = state.data["settings"]
    entry = {"action": row["outcome"], "index": int(lab.index), "seen_before": bool(seen),
             "reference": reference_check(lab.results, settings, start)}
    if row["outcome"] == "converged" and not entry["reference"]["verified"] and settings.get("polish"):
        committee = load_committee(state.committee)
        try:
            done = polish(start, labeller, committee, settings, settings["polish"], prov,
                          lambda res, at: reference_check(res, settings, at))
        except ReferenceCalculationError as exc:
            return {"action": REFERENCE_FAILED, "reason": str(exc).splitlines()[0]}
        polished = state.round_dir() / "polished" / f"{cid}.extxyz"
        write_structures_atomic(polished, [done["atoms"]])
        entry.update(polished=state.rel(polished), polish_steps=done["steps"], index=int(done["index"]),
                     reference=done["reference"], committee=_committee_at(committee, done["atoms"]))
    return entry


def _committee_at(committee, atoms) -> dict:
    """The committee's energy [eV], spread [eV], largest force [eV/Å] and U at ``atoms``."""
    res = Gate(committee).evaluate_many([atoms])[0].committee_results or {}
    f = res.get("forces")
    return {"energy_eV": _num(res.get("energy")), "energy_std_eV": _num(res.get("energy_std")),
            "fmax_eVA": None if f is None else max_force(np.asarray(f).reshape(-1, 3)),
            "force_uncertainty_relative": _num(res.get("force_uncertainty_relative"))}


def label_stage(state, labeller, inputs, progress) -> None:
    """Label the round's stopped candidates and verify its converged ones; saves the state
    after each (see the module docstring)."""
    rec, r = state.round_record(), state.round
    for cid in rec["active"]:  # above a hard cap: final, never labelled (nor prefetched below)
        if cid not in rec["labelled"] and rec["results"][cid]["outcome"] == HARD_CAP:
            rec["labelled"][cid] = {"action": HARD_CAP}
    prefetch_labels(state, labeller, slot)  # reference on workers (scale-out): the labels as parallel tasks first
    budget = state.data["settings"]["label_budget"]
    for cid in rec["active"]:
        if cid in rec["labelled"]:
            continue
        row = rec["results"][cid]
        if row["outcome"] in ("continue", EXPLODED, HARD_CAP):
            entry = {"action": row["outcome"]}
        elif budget is not None and len(labeller.store) >= budget:
            entry = {"action": "budget"}
        else:
            entry = _label_one(state, labeller, cid, row, r, inputs)
        rec["labelled"][cid] = entry
        state.save()
        ref = entry.get("reference")
        if ref is not None:
            progress(f"round {r}: {cid} labelled ({'verify' if entry['action'] == 'converged' else 'stop'}"
                     f"{', labelled before' if entry['seen_before'] else ''}): reference "
                     f"E = {ref['energy_eV']:.5f} eV, fmax = {ref['fmax_eVA']:.4f} eV/Å"
                     + (f" after {entry['polish_steps']} reference polish steps" if entry.get("polished") else "")
                     + (" -> converged" if entry["action"] == "converged" and ref["verified"] else ""))
        elif entry["action"] in ("budget", REFERENCE_FAILED):
            progress(f"round {r}: {cid} not labelled: {entry.get('reason', 'label budget spent')}")


def close_round(state, store_frames) -> int:
    """Apply the round's relaxations and labels to the candidates; returns the number of new
    labels of the round (labels in the store with this round in their provenance)."""
    rec, r, rdir = state.round_record(), state.round, state.round_dir()
    target = state.data["settings"]["verify_fmax"]
    for cid in rec["active"]:
        c, row, e = state.candidates[cid], rec["results"][cid], rec["labelled"][cid]
        c["rounds"] += 1
        c["steps"] += row["steps"]
        c["structure"] = e.get("polished") or state.rel(rdir / "relaxed" / f"{cid}.extxyz")
        c["committee"] = {k: row[k] for k in ("status", "energy_eV", "energy_std_eV", "fmax_eVA",
                                              "force_uncertainty_relative")}
        c["committee"].update(e.get("committee") or {})  # at the polished structure
        c["free"] = False
        c["reason"] = row["reason"]
        c["last_round"] = r
        ref, action = e.get("reference"), e["action"]
        if ref is not None:
            c["reference"] = dict(ref, round=r)
        polished = f" after {e['polish_steps']} reference polish steps" if e.get("polished") else ""
        if action == "converged" and ref["verified"]:
            c.update(status=CONVERGED, reason=f"reference fmax {ref['fmax_eVA']:.4f} ≤ {target:g} eV/Å"
                     + (f", |stress| {ref['stress_max_GPa']:.3f} GPa" if ref["stress_max_GPa"] is not None else "")
                     + polished)
        elif action == "converged" and e["seen_before"]:
            c.update(status=UNFINISHED, reason=f"the committee converges again to a labelled structure "
                     f"the reference rejects (fmax {ref['fmax_eVA']:.4f} eV/Å): the committee cannot "
                     "resolve this minimum (the label may be held out)")
        elif action == "converged":
            c["reason"] = f"reference fmax {ref['fmax_eVA']:.4f} > {target:g} eV/Å{polished}: labelled, relaxes on"
        elif action == "stop":
            c["free"] = e["seen_before"]
        elif action == EXPLODED:
            c.update(status=EXPLODED, reason=row["reason"])
        elif action == HARD_CAP:
            c.update(status=UNFINISHED, reason=row["reason"])
        elif action == "budget":
            c.update(status=UNFINISHED, reason="label budget spent before its label", budget=True)
        elif action == REFERENCE_FAILED:
            c.update(status=REFERENCE_FAILED, reason=e["reason"])
    rec["n_new_labels"] = sum(1 for f in store_frames if f.info.get("prov_round") == r)
    rec["n_reference_failures"] = sum(1 for e in rec["labelled"].values() if e["action"] == REFERENCE_FAILED)
    return rec["n_new_labels"]


__all__ = ["relax_stage", "label_stage", "close_round", "start_structure", "make_relaxers",
           "outcome", "reference_check", "slot", "slot_candidate", "NO_U_STOP", "UNCERTAINTY_STOPS",
           "EXPLODED", "HARD_CAP"]
