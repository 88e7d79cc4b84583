"""Figures of one threshold-MC chain (matplotlib, Agg), read back from its steps.csv.

* ``energy.png``: current energy, lid and trial energies relative to E0 [eV] over MC
  steps, steps the gate sent to the reference marked (black crosses);
* ``uncertainty.png``: committee σ_E per molecule [kJ/mol] (log scale), labelled steps marked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import keys as K
from ..plotting import pyplot, save_figure
from .io import ChainFiles


def plot_chain(folder) -> None:
    """Write energy.png and uncertainty.png into the chain ``folder`` (nothing without rows)."""
    plt = pyplot()
    folder = Path(folder)
    rows = ChainFiles(folder).rows()
    if not rows:
        return

    def col(k):
        return np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])

    step, e, lid, trial = col("step"), col("energy_eV"), col("lid_eV"), col("trial_energy_eV")
    unc = col("energy_std_per_molecule_kjmol")
    lab = np.array([r["gate_decision"] == K.REFERENCE for r in rows])
    e0 = e[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step, trial - e0, ".", ms=2, color="0.7", label="trial")
    ax.step(step, e - e0, where="post", label="current")
    if np.isfinite(lid).any():
        ax.step(step, lid - e0, where="post", color="r", label="lid")
    ax.plot(step[lab], (trial - e0)[lab], "kx", label="labelled (reference)")
    _save(fig, ax, "E - E0 (eV)", folder / "energy.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(step, unc, ".", ms=3, label="committee σ_E")
    ax.semilogy(step[lab], unc[lab], "kx", label="labelled")
    _save(fig, ax, "σ_E per molecule (kJ/mol)", folder / "uncertainty.png")


def _save(fig, ax, ylabel, path) -> None:
    ax.set_xlabel("MC step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    save_figure(fig, path)


__all__ = ["plot_chain"]
