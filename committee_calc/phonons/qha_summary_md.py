"""``summary.md`` of a committee-qha run: the numbers a user reads first.

:func:`write_qha_summary_md` takes the :class:`~committee_calc.phonons.qha_run.QHARun` (or its
parts) and writes ``<out>/summary.md``: volumes computed, V0 and B0 at the lowest temperature and
at 300 K (mean potential, and the members' ±σ), the warnings of the run (``qha_summary.json``'s
and the committee's domain warnings) and the output files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..summary_md import domain_warnings, present_files, write_summary_md
from ..units import ev_per_a3_to_gpa


def _at(series, temperatures, t):
    i = int(np.argmin(np.abs(np.asarray(temperatures) - t)))
    return float(np.asarray(series)[i]), float(np.asarray(temperatures)[i])


def _pm(stats, key, temperatures, t, scale=1.0) -> str:
    s = stats.get(key)
    if not s:
        return ""
    mean, std = scale * _at(s["mean"], temperatures, t)[0], scale * _at(s["std"], temperatures, t)[0]
    return f" (members {mean:.4g} ± {std:.2g}, ±1σ)"


def write_qha_summary_md(run, committee=None) -> str:
    """Write ``summary.md`` into ``run.out`` for a :class:`~committee_calc.phonons.qha_run.QHARun`;
    ``committee``: the committee of the run (its domain warnings are listed).  Returns the path."""
    res, summary, out = run.result, dict(run.summary), Path(run.out)
    mp, temps = res.mean_potential, res.temperatures_K
    numbers = [("volumes", f"{len(run.points)} ({len(run.computed)} computed now)")]
    for t in sorted({float(mp.temperatures_K[0]), 300.0}):
        if t > float(mp.temperatures_K[-1]) + 1e-9:
            continue
        v, tt = _at(mp.volume_A3, mp.temperatures_K, t)
        b, _ = _at(mp.bulk_modulus_eV_A3, mp.temperatures_K, t)
        numbers.append((f"V at {tt:.0f} K (mean potential)",
                        f"{v:.4f} Å³ per primitive cell{_pm(res.stats, 'volume_A3', temps, t)}"))
        numbers.append((f"B_T at {tt:.0f} K (mean potential)", f"{ev_per_a3_to_gpa(b):.1f} GPa"
                        f"{_pm(res.stats, 'bulk_modulus_eV_A3', temps, t, ev_per_a3_to_gpa(1.0))}"))
    numbers.append(("reference calls (this run)", str(summary.get("n_reference_calls_this_run", 0))))
    warns = []
    vols = np.asarray(summary.get("volumes_A3") or mp.volumes_A3, float)
    out_of = np.flatnonzero((mp.volume_A3 < vols.min()) | (mp.volume_A3 > vols.max()))
    if out_of.size:
        warns.append(f"V(T) leaves the sampled volumes {vols.min():.4g}–{vols.max():.4g} Å³ from "
                     f"T = {mp.temperatures_K[out_of[0]]:.0f} K on: EOS extrapolation there (shaded in qha.png)")
    if summary.get("volumes_with_imaginary_modes"):
        warns.append(f"imaginary modes at volume(s) {summary['volumes_with_imaginary_modes']} "
                     "(imaginary_modes.csv)")
    if summary.get("supercell_warning"):
        warns.append(str(summary["supercell_warning"]))
    warns += domain_warnings(committee)
    files = present_files(out, (
        ("qha.csv", "T, V, G, B_T, β, C_P: mean potential and member mean ± σ"),
        ("qha.png", "2×3 panels, extrapolated temperatures shaded"),
        ("bands.png", "phonon bands with the committee ±σ band"), ("dos.png", "phonon DOS ±σ (clipped at 0)"),
        ("qha_summary.json", "volumes, warnings, settings"), ("imaginary_modes.csv", "imaginary modes per volume")))
    ran = "committee-qha computed phonons at each volume and the quasi-harmonic free energy G(T)."
    return write_summary_md(out, "committee-qha summary", ran, numbers, warns, files)


__all__ = ["write_qha_summary_md"]
