"""Files of a re-ranking (:func:`committee_calc.active.rerank.rerank`).

* ``reranked.csv`` — one row per structure sorted by the final energy:
  rank_after, rank_before, index, name, density_gcm3, baseline / predicted /
  final energies relative to the lowest final energy and σ (kJ/mol per
  molecule or meV/atom; column suffix ``kjmol`` / ``meV_atom``), the final
  energy in eV per unit, source, experimental;
* ``reranked.extxyz`` — the structures in that order with ``rank_after``,
  ``rank_before``, ``final_energy_per_unit``, ``committee_energy_per_unit``,
  ``committee_sigma_per_unit`` [eV per unit] and ``energy_source`` in ``info``;
* ``reference_calls.csv`` — index, name, energy_eV, energy_per_unit_eV of every
  structure whose energy came from the reference (the labels themselves are in
  the label store).

All written atomically.
"""
from __future__ import annotations

import csv
import io

import numpy as np

from ..fileio import atomic_write_text, write_structures_atomic
from ..units import EV_TO_KJMOL, energy_factor

REFERENCE_COLUMNS = ["index", "name", "energy_eV", "energy_per_unit_eV"]


def display(unit) -> tuple:
    """(factor from eV per unit, label) for relative energies per ``unit`` (molecule: kJ/mol, atom: meV)."""
    return (EV_TO_KJMOL, "kJ/mol per molecule") if unit == "molecule" else (1.0 / energy_factor("meV"), "meV/atom")


def _csv(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_reranked(ls, r, out) -> None:
    """``reranked.csv`` and ``reranked.extxyz`` in folder ``out`` from a rerank result ``r``."""
    fac, _ = display(ls.unit)
    emin = np.nanmin(r["final"])
    base = ls.baseline_per_unit() if ls.baseline_energy is not None else None
    dens = ls.densities()
    order = np.argsort(r["final"], kind="stable")
    tag = "kjmol" if ls.unit == "molecule" else "meV_atom"
    rows = [["rank_after", "rank_before", "index", "name", "density_gcm3", f"baseline_rel_{tag}",
             f"predicted_rel_{tag}", f"sigma_{tag}", f"final_rel_{tag}", "final_eV_per_" + ls.unit,
             "source", "experimental"]]
    frames = []
    for i in order:
        b = "" if base is None else repr(float((base[i] - base.min()) * fac))
        rb = "" if r["rank_before"] is None else str(int(r["rank_before"][i]))
        rows.append([str(int(r["rank_after"][i])), rb, str(int(i)), ls.names[i], f"{dens[i]:.6f}", b,
                     repr(float((r["predicted"][i] - emin) * fac)), repr(float(r["sigma"][i] * fac)),
                     repr(float((r["final"][i] - emin) * fac)), repr(float(r["final"][i])), r["source"][i],
                     str(bool(r["experimental"][i]))])
        a = ls.structures[i].copy()
        a.info.update({"rank_after": int(r["rank_after"][i]), "final_energy_per_unit": float(r["final"][i]),
                       "committee_energy_per_unit": float(r["predicted"][i]),
                       "committee_sigma_per_unit": float(r["sigma"][i]), "energy_source": r["source"][i]})
        if r["rank_before"] is not None:
            a.info["rank_before"] = int(r["rank_before"][i])
        frames.append(a)
    atomic_write_text(out / "reranked.csv", _csv(rows))
    write_structures_atomic(out / "reranked.extxyz", frames)


def write_reference_calls(ls, energies, out) -> None:
    """``reference_calls.csv`` from ``energies`` {structure index: reference energy [eV per cell]}."""
    rows = [REFERENCE_COLUMNS]
    for i, e in sorted(energies.items()):
        rows.append([str(int(i)), ls.names[i], repr(float(e)), repr(float(e / ls.n_units[i]))])
    atomic_write_text(out / "reference_calls.csv", _csv(rows))
