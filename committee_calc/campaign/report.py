"""The campaign's ranking report: energies relative to a zero candidate, ranking against a
reference-only relaxation (Kendall τ), reference calls against that relaxation.

::

    from committee_calc.campaign.report import ranking_report, write_report
    rep = ranking_report(res.candidates, finals, zero="diamond", ranked=KNOWN,
                         reference_only={"diamond": {"energy_per_atom_eV": -5.38, "reference_calls": 19}, ...})
    write_report("demo_output", rep)       # summary.json + summary.md

The workflow's energy of a candidate is the reference energy at its final structure when the
reference verified it (status ``converged``), otherwise the committee's.  Candidates are ranked
by that energy; ``ranked`` (e.g. the known polymorphs, relaxed with their symmetry kept) are
compared with the ranking of the same candidates relaxed by the reference alone by Kendall's τ
(:func:`scipy.stats.kendalltau`; τ = 1: the same order).  Energies in the report are meV/atom
relative to the reference energy of candidate ``zero`` (its committee energy if the reference
never saw its final structure); volumes Å³/atom; stresses GPa.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_write_text
from .state import CONVERGED

#: report keys (and summary.json field names) of one candidate
ROW_KEYS = ("id", "status", "rounds", "reference_calls", "committee_meV_atom", "reference_meV_atom",
            "workflow_meV_atom", "committee_minus_reference_meV_atom", "reference_fmax_eVA",
            "reference_stress_max_GPa", "volume_A3_atom", "rank_workflow", "reference_only_meV_atom",
            "reference_only_calls", "reference_only_volume_A3_atom", "rank_reference_only", "reason")


def _f(x):
    return None if x is None or x == "" or not math.isfinite(float(x)) else float(x)


def _ranks(values: dict) -> dict:
    """{id: 1-based rank} by ascending value (ids with None are not ranked)."""
    order = sorted((v, k) for k, v in values.items() if v is not None)
    return {k: i + 1 for i, (_, k) in enumerate(order)}


def ranking_report(rows, finals, zero, ranked=None, reference_only=None) -> dict:
    """The report as plain data (JSON-able).

    rows: the campaign's summary rows (``CampaignResult.candidates``); finals: the final
        structures (``final.extxyz``, same order).
    zero: id of the candidate whose energy is the zero (e.g. ``"diamond"``).
    ranked: ids whose workflow ranking is compared with the reference-only ranking (default all).
    reference_only: {id: {"energy_per_atom_eV": E [eV/atom], "reference_calls": n,
        "volume_A3_atom": V (optional)}} of the same candidates relaxed by the reference alone
        (None: no comparison).
    Returns {"zero", "candidates": [rows with :data:`ROW_KEYS`], "lowest", "ranked",
    "kendall_tau", "kendall_tau_committee", "reference_calls", "reference_only_calls",
    "reference_calls_ratio", "statuses"}.  Raises KeyError if ``zero`` is not a candidate.
    """
    from scipy.stats import kendalltau

    by_id = {r["id"]: r for r in rows}
    z = by_id[zero]
    e0 = _f(z.get("reference_energy_per_atom_eV"))
    e0 = _f(z.get("energy_per_atom_eV")) if e0 is None else e0
    ref_only = reference_only or {}
    r0 = _f((ref_only.get(zero) or {}).get("energy_per_atom_eV"))

    def rel(e, base=e0):
        """meV/atom of ``e`` [eV/atom] above ``base`` (None if either is unknown)."""
        return None if e is None or base is None else 1e3 * (e - base)

    out_rows = []
    for r, atoms in zip(rows, finals):
        com, ref = _f(r.get("energy_per_atom_eV")), _f(r.get("reference_energy_per_atom_eV"))
        work = ref if (r["status"] == CONVERGED and ref is not None) else com
        ro = _f((ref_only.get(r["id"]) or {}).get("energy_per_atom_eV"))
        out_rows.append({
            "id": r["id"], "status": r["status"], "rounds": int(r.get("rounds") or 0),
            "reference_calls": int(r.get("reference_calls") or 0),
            "committee_meV_atom": rel(com), "reference_meV_atom": rel(ref), "workflow_meV_atom": rel(work),
            "committee_minus_reference_meV_atom": None if com is None or ref is None else 1e3 * (com - ref),
            "reference_fmax_eVA": _f(r.get("reference_fmax_eVA")),
            "reference_stress_max_GPa": _f(r.get("reference_stress_max_GPa")),
            "volume_A3_atom": float(atoms.get_volume() / len(atoms)) if atoms.cell.rank == 3 else None,
            "reference_only_meV_atom": rel(ro, r0),
            "reference_only_calls": (ref_only.get(r["id"]) or {}).get("reference_calls"),
            "reference_only_volume_A3_atom": _f((ref_only.get(r["id"]) or {}).get("volume_A3_atom")),
            "reason": r.get("reason", "")})
    ranks = _ranks({r["id"]: r["workflow_meV_atom"] for r in out_rows})
    ranks_ro = _ranks({r["id"]: r["reference_only_meV_atom"] for r in out_rows})
    for r in out_rows:
        r["rank_workflow"], r["rank_reference_only"] = ranks.get(r["id"]), ranks_ro.get(r["id"])
    sub = [r for r in out_rows if ranked is None or r["id"] in set(ranked)]
    both = [r for r in sub if r["workflow_meV_atom"] is not None and r["reference_only_meV_atom"] is not None]
    tau = tau_c = None
    if len(both) >= 2:
        tau = float(kendalltau([r["workflow_meV_atom"] for r in both],
                               [r["reference_only_meV_atom"] for r in both]).statistic)
        com = [r for r in both if r["committee_meV_atom"] is not None]
        if len(com) >= 2:
            tau_c = float(kendalltau([r["committee_meV_atom"] for r in com],
                                     [r["reference_only_meV_atom"] for r in com]).statistic)
    n_calls = sum(r["reference_calls"] for r in out_rows)
    ro_calls = [r["reference_only_calls"] for r in out_rows]
    ro_total = sum(ro_calls) if ref_only and all(c is not None for c in ro_calls) else None
    statuses: dict = {}
    for r in out_rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    lowest = min((r for r in out_rows if r["workflow_meV_atom"] is not None),
                 key=lambda r: r["workflow_meV_atom"], default=None)
    return {"zero": zero, "candidates": out_rows, "lowest": lowest["id"] if lowest else None,
            "ranked": [r["id"] for r in sub], "kendall_tau": tau, "kendall_tau_committee": tau_c,
            "reference_calls": n_calls, "reference_only_calls": ro_total,
            "reference_calls_ratio": None if not ro_total else n_calls / ro_total, "statuses": statuses}


def _cell(v, fmt):
    return "–" if v is None else format(v, fmt)


def summary_markdown(report: dict, title: str, notes=(), figures=()) -> str:
    """Markdown summary of :func:`ranking_report` (a table per candidate, the conclusions first)."""
    rows = report["candidates"]
    tau = report["kendall_tau"]
    lines = [f"# {title}", ""]
    lines += [f"- lowest candidate: **{report['lowest']}**",
              "- statuses: " + ", ".join(f"{v} {k}" for k, v in sorted(report["statuses"].items()))]
    if tau is not None:
        lines.append(f"- ranking of {', '.join(report['ranked'])} against the reference-only relaxation: "
                     f"Kendall τ = {tau:.2f}"
                     + (f" (the committee's own energies: τ = {report['kendall_tau_committee']:.2f})"
                        if report["kendall_tau_committee"] is not None else ""))
    if report["reference_only_calls"]:
        lines.append(f"- reference calls: {report['reference_calls']} against {report['reference_only_calls']} "
                     f"for the reference-only relaxation of the same pool "
                     f"({100 * report['reference_calls_ratio']:.0f} %)")
    else:
        lines.append(f"- reference calls: {report['reference_calls']}")
    lines += list(notes) + ["", f"Energies in meV/atom relative to the reference energy of {report['zero']}; "
                            "*workflow* = reference energy where the reference verified the final structure, "
                            "else the committee's.", "",
                            "| id | status | rounds | ref. calls | committee | reference | workflow | rank | "
                            "ref-only | rank ref-only | ref. fmax eV/Å | ref. stress GPa | V Å³/atom |",
                            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['id']} | {r['status']} | {r['rounds']} | {r['reference_calls']} | "
            f"{_cell(r['committee_meV_atom'], '.1f')} | {_cell(r['reference_meV_atom'], '.1f')} | "
            f"{_cell(r['workflow_meV_atom'], '.1f')} | {_cell(r['rank_workflow'], 'd')} | "
            f"{_cell(r['reference_only_meV_atom'], '.1f')} | {_cell(r['rank_reference_only'], 'd')} | "
            f"{_cell(r['reference_fmax_eVA'], '.4f')} | {_cell(r['reference_stress_max_GPa'], '.3f')} | "
            f"{_cell(r['volume_A3_atom'], '.2f')} |")
    lines += ["", "Why each candidate ended as it did:", ""]
    lines += [f"- {r['id']}: {r['status']} — {r['reason']}" for r in rows]
    for caption, path in figures:
        lines += ["", f"![{caption}]({path})", "", caption]
    return "\n".join(lines) + "\n"


def write_report(out_dir, report: dict, title="Campaign summary", notes=(), figures=(), extra=None) -> tuple:
    """Write ``summary.json`` (the report + ``extra``) and ``summary.md`` to ``out_dir``
    atomically; returns their paths."""
    out = Path(out_dir)
    data = dict(report, **(extra or {}))
    js, md = out / "summary.json", out / "summary.md"
    atomic_write_text(js, json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(md, summary_markdown(report, title, notes, figures))
    return str(js), str(md)


__all__ = ["ranking_report", "summary_markdown", "write_report", "ROW_KEYS"]
