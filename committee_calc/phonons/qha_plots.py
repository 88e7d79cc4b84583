"""QHA figures with committee spread: V(T), β(T), G(T), B_T(T), C_P(T), a(p)."""
from __future__ import annotations

import numpy as np

from ..plotting import pyplot, save_figure
from ..units import PHONOPY_EV_A3_TO_GPA, PHONOPY_EV_TO_JMOL

_PANELS = [
    ("volume_A3", 1.0, "V (Å³/primitive cell)"),
    ("thermal_expansion_per_K", 1e5, "β_V (10⁻⁵ K⁻¹)"),
    ("gibbs_eV", 1.0, "G (eV/primitive cell)"),
    ("bulk_modulus_eV_A3", PHONOPY_EV_A3_TO_GPA, "B_T (GPa)"),
    ("heat_capacity_P_eV_per_K", PHONOPY_EV_TO_JMOL, "C_P (J/K/mol)"),
]


def plot_qha(result, path) -> None:
    """One figure, five panels: mean potential (line) and member mean ± std (band)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4 * len(_PANELS), 3.3))
    t = result.temperatures_K
    mp = result.mean_potential
    sel = np.isin(mp.temperatures_K, t)
    for ax, (attr, f, label) in zip(axes, _PANELS):
        if result.members:
            m, s = result.stats[attr]["mean"] * f, result.stats[attr]["std"] * f
            ax.fill_between(t, m - s, m + s, color="C0", alpha=0.3, lw=0,
                            label=f"members mean ± std (ddof={result.ddof})")
            ax.plot(t, m, color="C0", lw=0.8, ls="--")
        ax.plot(t, np.asarray(getattr(mp, attr))[sel] * f, color="k", lw=1, label="mean potential")
        ax.set_xlabel("T (K)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def plot_pressure_scan(pressures_GPa, rows, path, temperature_K) -> None:
    """Lattice parameters and volume vs pressure at one temperature.

    rows: list of dicts with 'volume_A3', 'volume_std_A3', 'lattice_A' (3,) or None,
    'lattice_std_A' (3,) or None, one per pressure.
    """
    plt = pyplot()
    p = np.asarray(pressures_GPa, float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.3))
    v = np.array([r["volume_A3"] for r in rows])
    vs = np.array([r["volume_std_A3"] for r in rows])
    a1.errorbar(p, v, yerr=vs, marker="o", capsize=3)
    a1.set_xlabel("p (GPa)")
    a1.set_ylabel("V (Å³/primitive cell)")
    if all(r.get("lattice_A") is not None for r in rows):
        lat = np.array([r["lattice_A"] for r in rows])
        ls = np.array([r["lattice_std_A"] for r in rows])
        for i, ax_name in enumerate("abc"):
            a2.errorbar(p, lat[:, i], yerr=ls[:, i], marker="o", capsize=3, label=ax_name)
        a2.legend(fontsize=7)
    a2.set_xlabel("p (GPa)")
    a2.set_ylabel("lattice parameter (Å)")
    fig.suptitle(f"T = {temperature_K:g} K")
    save_figure(fig, path, dpi=110)
