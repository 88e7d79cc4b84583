"""Figure of a re-ranking: relative energy per unit vs density (``landscape.png``)."""
from __future__ import annotations

import io

import numpy as np

from .. import keys as K
from ..fileio import atomic_write_bytes
from .rerank_io import display


def plot_reranked(ls, r, path, capped=False) -> None:
    """Final energy relative to the minimum (kJ/mol per molecule or meV/atom) vs density
    [g/cm³] with ±σ bars; reference-computed structures circled (``capped``: they were above
    the σ cap), experimental ones starred.  ``r``: a rerank result; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fac, lab = display(ls.unit)
    y = (r["final"] - np.nanmin(r["final"])) * fac
    x = ls.densities()
    s = np.where(np.isfinite(r["sigma"]), r["sigma"], 0.0) * fac
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.errorbar(x, y, yerr=s, fmt="o", ms=3, lw=0.6, color="C0", alpha=0.7, label="committee (±σ)")
    ref = r["source"] == K.REFERENCE
    if ref.any():
        ax.scatter(x[ref], y[ref], s=40, facecolors="none", edgecolors="C3",
                   label="σ above cap: reference" if capped else "reference")
    if r["experimental"].any():
        e = r["experimental"]
        ax.scatter(x[e], y[e], marker="*", s=160, color="gold", edgecolors="k", label="experimental", zorder=5)
    ax.set_xlabel("density (g/cm³)")
    ax.set_ylabel(f"relative energy ({lab})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
