"""The uncertainty-trace figure of a committee MD run (matplotlib, Agg).

Two panels over simulation time [ps]: the committee energy uncertainty
(σ_E per atom, meV/atom) and the force uncertainty (max_i ‖σ_F,i‖, eV/Å),
with frames selected for labelling marked (red circles), steps the gate sent
to the reference marked (black crosses), and the thermostat target temperature
[K] (and the instantaneous temperature, faint) on a second y axis.
"""
from __future__ import annotations

import numpy as np

from .. import keys as K
from ..errors import ConfigError
from ..plotting import pyplot, save_figure
from .io import read_log


def plot_uncertainty_trace(log_path, png_path, selected_steps=(), title=None, dpi=120) -> str:
    """Write the figure for the CSV at ``log_path`` to ``png_path`` (atomically); return the path."""
    plt = pyplot()
    log = read_log(log_path)
    if not log or len(log.get("step", [])) == 0:
        raise ConfigError(f"{log_path} has no MD steps to plot")
    t_ps = log["time_fs"] / 1000.0
    steps = log["step"].astype(int)
    index = {s: i for i, s in enumerate(steps)}
    sel = np.array([index[s] for s in selected_steps if s in index], dtype=int)
    decisions = log.get("gate_decision", [])
    ref = np.array([i for i, d in enumerate(decisions) if d == K.REFERENCE], dtype=int)
    panels = (("energy_std_per_atom_eV", 1000.0, "σ$_E$ (meV/atom)", "tab:blue"),
              ("forces_std_max_eVA", 1.0, "max σ$_F$ (eV/Å)", "tab:green"))
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(7.5, 5.5))
    for ax, (col, factor, label, colour) in zip(axes, panels):
        y = log.get(col, np.full(len(steps), np.nan)) * factor
        ax.plot(t_ps, y, color=colour, lw=1.0, label=label)
        if sel.size:
            ax.plot(t_ps[sel], y[sel], "o", mfc="none", mec="red", ms=6, label="selected for labelling")
        if ref.size:
            ax.plot(t_ps[ref], y[ref], "x", color="black", ms=5, label="reference (gate)")
        ax.set_ylabel(label, color=colour)
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        if "temperature_K" in log:
            twin.plot(t_ps, log["temperature_K"], color="tab:orange", lw=0.6, alpha=0.35,
                      label="T (instantaneous)")
        twin.plot(t_ps, log["temperature_target_K"], color="tab:red", lw=1.5, ls="--",
                  label="T thermostat target")
        twin.set_ylabel("temperature (K)", color="tab:red")
        lines = ax.get_legend_handles_labels()
        lines2 = twin.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    axes[-1].set_xlabel("time (ps)")
    axes[0].set_title(title or "committee uncertainty along the MD trajectory")
    return save_figure(fig, png_path, dpi=dpi)


#: (log column, factor, axis label) of the thermo figure, top to bottom
THERMO_PANELS = (("energy_eV", 1.0, "E$_{pot}$ (eV per cell)"), ("temperature_K", 1.0, "T (K)"),
                 ("pressure_GPa", 1.0, "P (GPa)"), ("volume_A3", 1.0, "V (Å³ per cell)"),
                 ("energy_std_per_atom_eV", 1000.0, "σ$_E$ (meV/atom)"), ("forces_std_max_eVA", 1.0,
                                                                          "max$_i$ ‖σ$_{F,i}$‖ (eV/Å)"))


def plot_thermo(log_path, png_path, dpi=110) -> str:
    """The thermodynamic trace of an MD run: potential energy, temperature (with the thermostat
    target dashed), pressure, volume and the committee spreads σ_E and max σ_F (one standard
    deviation) against time [ps], one panel each (columns the log lacks are left out).  Steps the
    gate sent to the reference are marked with black crosses.  Returns the path."""
    plt = pyplot()
    log = read_log(log_path)
    if not log or len(log.get("step", [])) == 0:
        raise ConfigError(f"{log_path} has no MD steps to plot")
    t_ps = log["time_fs"] / 1000.0
    panels = [p for p in THERMO_PANELS if p[0] in log and np.any(np.isfinite(log[p[0]]))]
    ref = np.array([i for i, d in enumerate(log.get("gate_decision", [])) if d == K.REFERENCE], dtype=int)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 1.6 * len(panels) + 0.8))
    axes = np.atleast_1d(axes)
    unb = {"energy_eV": "energy_unbiased_eV", "pressure_GPa": "pressure_unbiased_GPa"}
    for k, (ax, (col, f, label)) in enumerate(zip(axes, panels)):
        y = log[col] * f
        ax.plot(t_ps, y, color=f"C{k}", lw=0.9, label="biased surface" if unb.get(col) in log else None)
        if unb.get(col) in log:  # a biased run: the unbiased observable beside it
            ax.plot(t_ps, log[unb[col]] * f, color="0.35", lw=0.8, ls="--", label="unbiased")
            ax.legend(fontsize=7, loc="best")
        if col == "temperature_K" and "temperature_target_K" in log:
            ax.plot(t_ps, log["temperature_target_K"], color="k", lw=1.0, ls="--", label="thermostat target")
            ax.legend(fontsize=7, loc="upper left")
        if ref.size:
            ax.plot(t_ps[ref], y[ref], "x", color="black", ms=4, label="reference (gate)" if k == 0 else None)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (ps)")
    biased = "\nbiased run: E and P solid on the biased surface, dashed unbiased" \
        if "energy_unbiased_eV" in log else ""
    axes[0].set_title("MD thermodynamic trace (committee mean; σ: committee standard deviation)" + biased,
                      fontsize=10 if biased else None)
    return save_figure(fig, png_path, dpi=dpi)
