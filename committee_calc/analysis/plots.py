"""The CSP landscape figure: relative energy vs density, one definition for every area.

Used by relaxation pools (``committee-relax``: clusters, unconverged candidates) and by
re-ranking (``committee-rerank``: reference-computed and experimental structures).
"""
from __future__ import annotations

import numpy as np

from ..plotting import pyplot, save_figure


def plot_landscape(density_gcm3, energy, path, sigma=None, unit_label="meV/atom", clusters=None,
                   reference=None, reference_label="reference", experimental=None, converged=None,
                   title=None, label=None, reference_energy=None,
                   sigma_label="±1σ committee spread") -> str:
    """Energy relative to the lowest point vs density, written as PNG.

    density_gcm3: (n,) [g/cm³]; energy: (n,) in ``unit_label`` (e.g. meV/atom or kJ/mol per
    molecule; plotted relative to its minimum); sigma: (n,) committee spread in the same unit
    (error bars, NaN/inf drawn without a bar); clusters: (n,) int cluster labels (distinct colours,
    one legend entry each, -1 = noise); reference: (n,) bool, energies computed by the reference
    (circled); experimental: (n,) bool (starred); converged: (n,) bool (unconverged drawn hollow);
    label: legend entry of the points when they are not coloured by cluster;
    reference_energy: (n,) reference energies in the unit of ``energy`` (NaN where unknown), drawn
    as crosses on the same relative scale (E_min of the committee) joined to their committee point;
    sigma_label: legend entry of the error bars (the figure states the ±σ convention).
    Returns the path.
    """
    plt = pyplot()
    x = np.asarray(density_gcm3, float)
    e = np.asarray(energy, float)
    n = len(e)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if n:
        y = e - np.nanmin(e)
        if sigma is not None:
            s = np.asarray(sigma, float)
            ax.errorbar(x, y, yerr=np.where(np.isfinite(s), s, 0.0), fmt="none", ecolor="0.6",
                        capsize=2, lw=0.7, zorder=1, label=sigma_label)
        conv = np.ones(n, bool) if converged is None else np.asarray(converged, bool)
        groups = [(label, np.ones(n, bool))]
        if clusters is not None:
            c = np.asarray(clusters)
            groups = [(k, c == k) for k in sorted(set(c.tolist()))]
        tab20 = plt.get_cmap("tab20").colors
        palette = tab20[0::2] + tab20[1::2]  # the ten strong colours first, then their light pairs
        markers = "osD^vP*X"
        hollow_named = False
        real = [k for k, _ in groups if k != -1]
        for k, m in groups:
            i = real.index(k) if k != -1 else 0  # colours by cluster, noise grey, never shifting them
            color = "0.5" if k == -1 else palette[i % len(palette)]
            marker = markers[(i // len(palette)) % len(markers)]  # distinct beyond 20 clusters
            name = k if clusters is None else ("noise" if k == -1 else f"cluster {k}")
            ax.scatter(x[m & conv], y[m & conv], s=26, color=color, marker=marker, zorder=3, label=name)
            if np.any(m & ~conv):
                ax.scatter(x[m & ~conv], y[m & ~conv], s=26, facecolors="none", edgecolors=color,
                           marker=marker, zorder=3, label=None if hollow_named else "not converged (hollow)")
                hollow_named = True
        if reference is not None and np.any(reference):
            r = np.asarray(reference, bool)
            ax.scatter(x[r], y[r], s=70, facecolors="none", edgecolors="k", lw=1.2, zorder=4,
                       label=reference_label)
        if reference_energy is not None:
            yr = np.asarray(reference_energy, float) - np.nanmin(e)
            known = np.isfinite(yr)
            if known.any():
                ax.vlines(x[known], y[known], yr[known], colors="k", lw=0.6, alpha=0.6, zorder=2)
                ax.scatter(x[known], yr[known], marker="x", s=36, color="k", lw=1.2, zorder=4,
                           label="reference energy")
        if experimental is not None and np.any(experimental):
            ex = np.asarray(experimental, bool)
            ax.scatter(x[ex], y[ex], marker="*", s=160, color="gold", edgecolors="k", zorder=5,
                       label="experimental")
        handles = ax.get_legend_handles_labels()[0]
        if handles:  # beside the axes: never over the points
            ax.legend(fontsize=7 if len(handles) > 6 else 8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      ncol=1 + len(handles) // 18)
    ax.set_xlabel("density (g/cm³)")
    ax.set_ylabel(f"E − E_min ({unit_label})")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


__all__ = ["plot_landscape"]
