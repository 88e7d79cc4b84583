"""Band-structure and DOS figures with committee spread bands (matplotlib, Agg).

The spread is drawn as in every committee_calc figure: member mean ± σ (one standard deviation,
ddof=1), said in the legend; the DOS band is clipped at zero (a density of states is never negative)."""
from __future__ import annotations

import numpy as np

from ..plotting import pyplot, save_figure


def plot_band_structure(bands, path, title: str = "") -> None:
    """Mean-potential bands (black lines) and the member mean ± σ per band (shaded)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    d = bands.distances
    if len(bands.members_THz):
        m = bands.members_THz.mean(axis=0)
        s = bands.members_THz.std(axis=0, ddof=1) if len(bands.members_THz) > 1 else np.zeros_like(m)
        for b in range(m.shape[1]):
            ax.fill_between(d, m[:, b] - s[:, b], m[:, b] + s[:, b], color="C0", alpha=0.3, lw=0,
                            label="committee: member mean ± σ (ddof=1)" if b == 0 else None)
    ax.plot(d, bands.frequencies_THz, color="k", lw=0.8)
    ax.plot([], [], color="k", lw=0.8, label="mean potential")
    for x, _ in bands.labels:
        ax.axvline(x, color="0.7", lw=0.5)
    ax.set_xticks([x for x, _ in bands.labels])
    ax.set_xticklabels([lab.replace("GAMMA", "Γ").replace("$\\Gamma$", "Γ")
                        for _, lab in bands.labels])
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xlim(d[0], d[-1])
    ax.set_ylabel("frequency (THz)")
    ax.set_title(title)
    if len(bands.members_THz):
        ax.legend(loc="lower right", fontsize=7)
    save_figure(fig, path)


def plot_dos(dos, path, title: str = "") -> None:
    """Total DOS of the mean potential with the member mean ± σ band (clipped at 0)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    f = dos.frequency_points_THz
    if len(dos.members) > 1:
        m, s = dos.members.mean(axis=0), dos.members.std(axis=0, ddof=1)
        ax.fill_between(f, np.clip(m - s, 0, None), m + s, color="C0", alpha=0.3, lw=0,
                        label="committee: member mean ± σ (ddof=1), ≥ 0")
    ax.plot(f, dos.dos, color="k", lw=0.8, label="mean potential")
    ax.set_xlabel("frequency (THz)")
    ax.set_ylabel("DOS (states THz⁻¹ per primitive cell)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def envelope(values: np.ndarray) -> tuple:
    """(min, max) over the member axis 0."""
    return values.min(axis=0), values.max(axis=0)
