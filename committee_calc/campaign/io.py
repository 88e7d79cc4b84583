"""File output of a campaign beyond its state: ``summary.csv``, ``final.extxyz``, the probe.

``summary.csv`` (one row per candidate, rewritten atomically after every round), columns
:data:`SUMMARY_COLUMNS`: status (``converged`` = reference-verified, ``active``,
``unfinished``, ``reference_failed``), rounds relaxed, optimiser steps, reference calls and
labels of the candidate, the committee's energy [eV, eV/atom], spread [eV] and max force
[eV/Å] at its final structure, the reference energy [eV, eV/atom], max force [eV/Å] and
residual stress [GPa] when the final structure was computed by the reference, density, atoms
and the reason of its status.  ``final.extxyz``: the final structure of every candidate with
those values in ``info``.

The probe (:func:`probe_reference`) labels the first candidates' input structures with the
reference in a temporary folder before the campaign folder exists, so a reference that fails
on every call leaves nothing behind; its label store becomes the campaign's.
"""
from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import ReferenceCalculationError
from ..fileio import atomic_write_text, write_structures_atomic
from ..labeller import Labeller
from ..structures import density_gcm3, read_structures
from .stages import slot, slot_candidate

SUMMARY_COLUMNS = ("id", "status", "rounds", "steps", "reference_calls", "labels", "energy_eV",
                   "energy_per_atom_eV", "energy_std_eV", "fmax_eVA", "reference_energy_eV",
                   "reference_energy_per_atom_eV", "reference_fmax_eVA", "reference_stress_max_GPa",
                   "density_gcm3", "natoms", "reason")
#: input structures tried by the probe before the reference is declared broken
N_PROBE = 3


def _cell(v):
    return "" if v is None else (repr(float(v)) if isinstance(v, float) else v)


def candidate_rows(state, store_frames, inputs) -> tuple:
    """(summary rows, final structures) of every candidate, input order."""
    labels, failures = {}, {}
    for f in store_frames:
        cid = slot_candidate(f.info.get("prov_slot"))
        labels[cid] = labels.get(cid, 0) + 1
    for rec in state.rounds:
        for cid, e in rec.get("labelled", {}).items():
            failures[cid] = failures.get(cid, 0) + (e["action"] == "reference_failed")
    rows, finals = [], []
    for cid in state.ids:
        c = state.candidates[cid]
        atoms = read_structures(state.abs(c["structure"]))[0] if c["structure"] else inputs[cid].copy()
        n = len(atoms)
        com = c.get("committee") or {}
        ref = c.get("reference")
        ref = ref if ref and ref.get("round") == c.get("last_round") else None  # at the final structure
        e, re = com.get("energy_eV"), ref["energy_eV"] if ref else None
        row = {"id": cid, "status": c["status"], "rounds": c["rounds"], "steps": c["steps"],
               "reference_calls": labels.get(cid, 0) + failures.get(cid, 0),
               "labels": labels.get(cid, 0), "energy_eV": e,
               "energy_per_atom_eV": None if e is None else e / n,
               "energy_std_eV": com.get("energy_std_eV"), "fmax_eVA": com.get("fmax_eVA"),
               "reference_energy_eV": re, "reference_energy_per_atom_eV": None if re is None else re / n,
               "reference_fmax_eVA": ref["fmax_eVA"] if ref else None,
               "reference_stress_max_GPa": ref["stress_max_GPa"] if ref else None,
               "density_gcm3": density_gcm3(atoms) if atoms.cell.rank == 3 else None,
               "natoms": n, "reason": c["reason"]}
        rows.append(row)
        atoms.calc = None
        atoms.info = {"candidate": cid, "campaign_status": row["status"]}
        atoms.info.update({k: row[k] for k in ("energy_eV", "reference_energy_eV", "reference_fmax_eVA")
                           if row[k] is not None})
        finals.append(atoms)
    return rows, finals


def write_outputs(state, store_frames, inputs) -> list:
    """Rewrite ``summary.csv`` and ``final.extxyz`` (atomically); returns the summary rows."""
    rows, finals = candidate_rows(state, store_frames, inputs)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(SUMMARY_COLUMNS)
    for row in rows:
        w.writerow([_cell(row[k]) for k in SUMMARY_COLUMNS])
    atomic_write_text(state.out / "summary.csv", buf.getvalue())
    write_structures_atomic(state.out / "final.extxyz", finals)
    return rows


def as_stored(images) -> list:
    """``images`` as they read back from extxyz (positions to 1e-8 Å): the campaign works on
    these, so a geometry hashes the same whether it comes from memory or from its files."""
    from ase.io import read, write

    buf = io.StringIO()
    write(buf, [a.copy() for a in images], format="extxyz")
    buf.seek(0)
    return read(buf, index=":", format="extxyz")


def _without_folder(text: str, folder) -> str:
    """``text`` without the clause naming a path inside ``folder`` (the probe's temporary
    folder, deleted when the probe ends): the message must not point to files that are gone."""
    return re.sub(rf"; (structure saved to )?{re.escape(str(folder))}\S*?(?=\.(\s|$)|$)",
                  " (the failed structure was not kept)", text)


def probe_reference(reference, images, ids, dest, provenance=None) -> None:
    """Label one of the first :data:`N_PROBE` input structures with the reference in a temporary
    folder, then move that label store to ``dest`` (its folder is created only then).

    Raises :class:`~committee_calc.errors.ReferenceCalculationError` naming each failure when
    every try fails; nothing is left behind (the failed structures' folder goes with the
    temporary folder: the error text keeps the reasons)."""
    tmp = Path(tempfile.mkdtemp(prefix="committee_campaign_probe_"))
    try:
        labeller = Labeller(reference, tmp / "labels.extxyz", provenance=provenance)
        errors = []
        for cid, atoms in list(zip(ids, images))[:N_PROBE]:
            try:
                labeller.label(atoms, provenance={"round": -1, "candidate": cid, "step": 0,
                                                  "reason": "probe", "slot": slot(-1, cid)})
                break
            except ReferenceCalculationError as exc:
                errors.append(f"{cid}: {_without_folder(str(exc).splitlines()[0], tmp)}")
        else:
            raise ReferenceCalculationError(
                f"the reference failed on the first {len(errors)} candidate(s) before the campaign "
                "started (" + "; ".join(errors) + "); check the reference settings. Nothing was written")
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp / "labels.extxyz"), str(dest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["SUMMARY_COLUMNS", "candidate_rows", "write_outputs", "probe_reference", "as_stored"]
