"""Band-structure and DOS figures with committee spread bands (matplotlib, Agg)."""
from __future__ import annotations

import numpy as np

from ..plotting import pyplot, save_figure


def plot_band_structure(bands, path, title: str = "") -> None:
    """Mean-potential bands (lines) and the member min–max envelope (shaded)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    d = bands.distances
    if len(bands.members_THz):
        lo, hi = envelope(bands.members_THz)
        for b in range(lo.shape[1]):
            ax.fill_between(d, lo[:, b], hi[:, b], color="C0", alpha=0.25, lw=0,
                            label="committee min–max" if b == 0 else None)
    ax.plot(d, bands.frequencies_THz, color="k", lw=0.8)
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
    """Total DOS of the mean potential with the member mean ± std band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    f = dos.frequency_points_THz
    if len(dos.members) > 1:
        m, s = dos.members.mean(axis=0), dos.members.std(axis=0, ddof=1)
        ax.fill_between(f, m - s, m + s, color="C0", alpha=0.3, lw=0,
                        label="members mean ± std (ddof=1)")
    ax.plot(f, dos.dos, color="k", lw=0.8, label="mean potential")
    ax.set_xlabel("frequency (THz)")
    ax.set_ylabel("DOS (states/THz/primitive cell)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def envelope(values: np.ndarray) -> tuple:
    """(min, max) over the member axis 0."""
    return values.min(axis=0), values.max(axis=0)
