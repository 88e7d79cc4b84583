"""QHA figures with committee spread (±σ bands, one standard deviation): V(T), β(T), G(T), B_T(T),
C_P(T) and the relative spread on a 2×3 grid; a(p)."""
from __future__ import annotations

import numpy as np

from ..plotting import pyplot, save_figure
from ..units import PHONOPY_EV_A3_TO_GPA, PHONOPY_EV_TO_JMOL

_PANELS = [
    ("volume_A3", 1.0, "V (Å³ per primitive cell)"),
    ("thermal_expansion_per_K", 1e5, "β_V (10⁻⁵ K⁻¹)"),
    ("gibbs_eV", 1.0, "G (eV per primitive cell)"),
    ("bulk_modulus_eV_A3", PHONOPY_EV_A3_TO_GPA, "B_T (GPa)"),
    ("heat_capacity_P_eV_per_K", PHONOPY_EV_TO_JMOL, "C_P (J K⁻¹ per mole of primitive cells)"),
]
#: series of the sixth panel: relative committee spread σ/|mean| [%]
_RELATIVE = (("volume_A3", "V"), ("bulk_modulus_eV_A3", "B_T"), ("heat_capacity_P_eV_per_K", "C_P"))


def extrapolated_from_K(result, volumes_A3) -> float | None:
    """The lowest temperature [K] at which the mean potential's V(T) leaves the sampled volume
    range (results above it are EOS extrapolations), or None."""
    if volumes_A3 is None:
        return None
    v = np.asarray(volumes_A3, float)
    mp = result.mean_potential
    vol = np.asarray(mp.volume_A3, float)
    out = (vol < v.min()) | (vol > v.max())
    return float(np.asarray(mp.temperatures_K)[np.argmax(out)]) if np.any(out) else None


def plot_qha(result, path, volumes_A3=None, atoms_per_cell=None) -> None:
    """One figure, 2×3 panels (about 1450×850 px): V, β_V, G, B_T, C_P against T for the mean
    potential (black line) with the committee band (member mean ± σ, one standard deviation, the
    convention of every figure), and the relative spread σ/|mean| [%] of V, B_T and C_P.
    volumes_A3: the sampled volumes per primitive cell; temperatures where V(T) leaves their range
    are shaded grey (extrapolated).  atoms_per_cell: C_P is then shown per mole of atoms."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.6))
    axes = axes.ravel()
    t = result.temperatures_K
    mp = result.mean_potential
    sel = np.isin(mp.temperatures_K, t)
    t_extra = extrapolated_from_K(result, volumes_A3)
    panels = list(_PANELS)
    if atoms_per_cell:
        panels[4] = (panels[4][0], PHONOPY_EV_TO_JMOL / atoms_per_cell, "C_P (J K⁻¹ per mole of atoms)")
    for ax, (attr, f, label) in zip(axes, panels):
        if result.members:
            m, s = result.stats[attr]["mean"] * f, result.stats[attr]["std"] * f
            ax.fill_between(t, m - s, m + s, color="C0", alpha=0.3, lw=0,
                            label=f"committee: member mean ± σ (ddof={result.ddof})")
            ax.plot(t, m, color="C0", lw=0.8, ls="--")
        ax.plot(t, np.asarray(getattr(mp, attr))[sel] * f, color="k", lw=1.2, label="mean potential")
        ax.set_ylabel(label)
    ax = axes[5]
    if result.members:
        for k, (attr, name) in enumerate(_RELATIVE):
            m, s = result.stats[attr]["mean"], result.stats[attr]["std"]
            small = np.abs(m) < 0.02 * np.max(np.abs(m))  # C_P -> 0 at low T: ratio meaningless
            with np.errstate(divide="ignore", invalid="ignore"):
                ax.plot(t, np.where(small, np.nan, 100 * s / np.abs(m)), color=f"C{k}", lw=1.2,
                        label=f"σ/|mean| of {name}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "single potential: no committee spread", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_ylabel("relative committee spread (%)")
    for ax in axes:
        ax.set_xlabel("T (K)")
        ax.grid(alpha=0.3)
        if t_extra is not None:
            ax.axvspan(t_extra, float(np.max(t)), color="0.6", alpha=0.25, lw=0,
                       label=f"extrapolated (V outside the sampled range, T ≥ {t_extra:g} K)")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("quasi-harmonic properties with committee spread (band: ±σ)")
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
    a1.errorbar(p, v, yerr=vs, marker="o", capsize=3, label="member mean ± σ")
    a1.legend(fontsize=7)
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
