"""File names and small file I/O of a committee MD run folder.

* :data:`TRAJECTORY`, :data:`LOG`, :data:`STATE`, :data:`UNPHYSICAL`: written by
  :class:`committee_calc.md.dynamics.CommitteeMD`;
* :data:`SELECTION` (``md_selection.json``, record mode): ``params`` of the
  selection (method, measure, n_max, lower, upper, seed, n_frames),
  ``selected_steps`` (list of MD steps) and ``labelled`` ({step: label-store
  index}, steps as strings); a rerun with the same params reuses the steps;
* :data:`PLOT` (``uncertainty_trace.png``): :mod:`committee_calc.md.plots`;
* ``summary.md``: :func:`write_md_summary`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..bias import bias_from_dict
from ..fileio import load_json, save_json_atomic
from ..summary_md import domain_warnings, present_files, write_summary_md

TRAJECTORY = "md_trajectory.extxyz"
LOG = "md_log.csv"
STATE = "md_state.json"
UNPHYSICAL = "md_unphysical.extxyz"
SELECTION = "md_selection.json"
PLOT = "uncertainty_trace.png"
#: the thermodynamic trace (E, T, P, V, σ against time): :func:`committee_calc.md.plots.plot_thermo`
THERMO_PLOT = "md_thermo.png"


def read_log(path, columns=None) -> dict:
    """The per-step MD CSV as ``{column: array}``; numeric columns as float arrays (NaN
    for blanks), text columns as lists of str."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    out = {}
    for col in cols:
        vals = [r.get(col, "") or "" for r in rows]
        try:
            out[col] = np.array([float(v) if v != "" else np.nan for v in vals])
        except ValueError:
            out[col] = vals
    return out


def log_has_steps(path) -> bool:
    """True when the MD CSV at ``path`` holds at least one step row (a run stopped by the
    gate at its first step has only the header)."""
    try:
        with open(path, newline="") as fh:
            return sum(1 for _ in zip(range(2), csv.reader(fh))) > 1
    except FileNotFoundError:
        return False


def load_selection(out_dir, params: dict) -> list | None:
    """The steps selected earlier in ``out_dir`` with the same ``params``, else None."""
    record = load_json(Path(out_dir) / SELECTION, default=None)
    if record and record.get("params") == params:
        return [int(s) for s in record["selected_steps"]]
    return None


def save_selection(out_dir, params: dict, steps, labelled=None) -> str:
    """Write ``md_selection.json`` atomically; ``labelled``: {step: label index}."""
    path = Path(out_dir) / SELECTION
    save_json_atomic(path, {"params": params, "selected_steps": [int(s) for s in steps],
                            "labelled": {str(k): int(v) for k, v in sorted((labelled or {}).items())}})
    return str(path)


__all__ = ["TRAJECTORY", "LOG", "STATE", "UNPHYSICAL", "SELECTION", "PLOT", "THERMO_PLOT", "thermo_line",
           "read_log", "log_has_steps", "load_selection", "save_selection"]


#: (column of the MD log, label, format) of the thermo log line, like ASE's ``MDLogger``
THERMO = (("time_fs", "t[ps]", lambda v: f"{v / 1000:.4f}"), ("energy_eV", "Epot[eV]", "{:.4f}".format),
          ("temperature_K", "T[K]", "{:.1f}".format), ("pressure_GPa", "P[GPa]", "{:.3f}".format),
          ("volume_A3", "V[Å³]", "{:.2f}".format), ("forces_std_max_eVA", "σF[eV/Å]", "{:.4f}".format),
          ("energy_std_per_atom_eV", "σE[meV/atom]", lambda v: f"{1000 * v:.2f}"))


def thermo_line(row: dict) -> str:
    """``t[ps]=… Epot[eV]=… T[K]=… P[GPa]=… V[Å³]=… σF[eV/Å]=… σE[meV/atom]=…`` of one MD log row
    (columns it lacks are left out): the thermo log of the progress lines."""
    return " ".join(f"{label}={fmt(float(row[col]))}" for col, label, fmt in THERMO
                    if row.get(col) not in (None, ""))


def write_md_summary(out_dir, run, gate, settings: dict | None = None) -> str:
    """``<out_dir>/summary.md`` of an MD run (``run``: :class:`~committee_calc.md.runner.MDRun`,
    ``gate``: its gate, ``settings``: ensemble, timestep_fs, ... as given): steps, mean T, P, V and
    the largest force spread of the log, labels, selected frames, domain warnings, files."""
    md, settings = run.md, settings or {}
    log = read_log(md.log) if log_has_steps(md.log) else {}

    def stat(col, label, unit, fn=np.nanmean, scale=1.0):
        v = np.asarray(log.get(col, []), float)
        return (label, f"{scale * fn(v):.4g} {unit}") if v.size and np.isfinite(v).any() else None

    numbers = [("steps", f"{md.start_step} → {md.last_step}"), ("frames written", str(md.n_frames)),
               ("ensemble", str(settings.get("ensemble", "default")))]
    biased = bias_from_dict(settings.get("bias"))
    surface = " (biased surface)" if biased else ""
    if biased:
        numbers.append(("bias", f"{biased.describe()}: the dynamics ran on E + B"))
    numbers += [x for x in (stat("temperature_K", "mean temperature", "K"),
                            stat("pressure_GPa", "mean pressure" + surface, "GPa"),
                            stat("pressure_unbiased_GPa", "mean pressure, unbiased", "GPa"),
                            stat("bias_energy_eV", "mean bias energy B", "eV"),
                            stat("volume_A3", "mean volume", "Å³"),
                            stat("forces_std_max_eVA", "largest force spread σF (max over atoms)", "eV/Å", np.nanmax),
                            stat("energy_std_per_atom_eV", "largest energy spread σE", "meV/atom", np.nanmax,
                                 1000.0)) if x]
    numbers += [("labels by the gate", str(md.n_labels)), ("reference calls", str(gate.n_reference_calls))]
    if run.selected_steps:
        numbers.append(("selected frames (record mode)", f"{len(run.selected_steps)}: steps {run.selected_steps}"))
    warns = list(domain_warnings(gate.committee))
    if md.stopped:
        warns.insert(0, f"stopped at step {md.last_step}: {md.stop_reason} (structure in {UNPHYSICAL})")
    if biased:
        warns.append(f"biased run ({biased.describe()}): E_pot and P of the log's energy_eV/pressure_GPa, "
                     f"of {THERMO_PLOT} and of the progress lines are of the biased surface; the "
                     f"unbiased values are the columns energy_unbiased_eV and pressure_unbiased_GPa")
    if gate.reference is None:
        warns.append("committee only: no reference checked any step (σ are the committee's own spreads)")
    files = [(TRAJECTORY, "frames every --write-interval steps"), (LOG, "per-step thermo log and spreads"),
             (STATE, "state to resume from")]
    files += present_files(out_dir, ((PLOT, "σ trace"), (THERMO_PLOT, "E, T, P, V and σ traces")))
    if run.label_store:
        files.append((run.label_store, "reference labels"))
    ran = (f"committee-md ({run.mode} mode) ran steps {md.start_step}–{md.last_step} "
           f"{'and stopped early' if md.stopped else 'to the end'}.")
    return write_summary_md(out_dir, "committee-md summary", ran, numbers, warns, files)
