"""Re-rank a whole landscape with a trained committee, σ-capped by the reference.

::

    result = rerank(landscape, committee, out_dir="rerank", reference=ref,
                    sigma_cap_eV=kjmol_to_ev(6.0), delta=True)

1. batch-predict every structure (committee mean, ``energy_std``); with
   ``delta=True`` the committee predicts reference − baseline and the
   baseline is added back;
2. every structure whose σ per unit (molecule or atom) exceeds
   ``sigma_cap_eV`` is computed directly with the reference (results logged
   to ``reference_calls.csv`` as they arrive, so a rerun never repeats one);
3. writes ``reranked.csv`` and ``reranked.extxyz`` (sorted by the final
   energy, ranks before/after, σ, source) and ``landscape.png`` (relative
   energy vs density, σ error bars, reference-computed (high-σ) structures
   circled, experimental matches starred).

Returned dict (arrays over the n landscape structures, original order):
``final`` (n,) eV per unit, ``predicted`` (n,), ``sigma`` (n,) eV per unit,
``source`` (n,) "committee"|"reference", ``rank_before`` (n,) int or None
(needs baseline), ``rank_after`` (n,) int (0 = global minimum),
``n_reference`` int, ``unit`` str.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import CsvLog, atomic_write_text, write_structures_atomic
from ..analysis.landscape import Landscape
from ..units import KJMOL

_REF_COLUMNS = ["index", "name", "energy_eV", "energy_per_unit_eV"]


def _ranks(values):
    r = np.empty(len(values), int)
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r


def _display(unit):
    """Plot/CSV display factor and label for relative energies per unit."""
    return (1.0 / KJMOL, "kJ/mol per molecule") if unit == "molecule" else (1e3, "meV/atom")


def rerank(landscape: Landscape, committee, out_dir, reference=None, sigma_cap_eV=None,
           delta=False, experimental=(), progress=False, plot=True) -> dict:
    ls = landscape
    if delta and ls.baseline_energy is None:
        raise ConfigError("delta=True needs baseline energies in the landscape (the committee predicts a correction)")
    if sigma_cap_eV is not None:
        from ..units import check_positive

        sigma_cap_eV = check_positive("sigma cap", sigma_cap_eV)
        if reference is None:
            raise ConfigError("a σ cap needs a reference calculator to compute the capped structures")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = committee.predict(ls.structures, progress=progress)
    E = np.array([r.get("energy", np.nan) for r in res], float)
    S = np.array([r.get("energy_std", np.inf) for r in res], float)
    if delta:
        E = E + ls.baseline_energy
    n = ls.n_units
    pred, sigma = E / n, np.where(np.isfinite(S), S, np.inf) / n
    final, source = pred.copy(), np.array(["committee"] * len(ls), dtype=object)
    if not np.all(np.isfinite(pred)) and sigma_cap_eV is None:
        raise ConfigError("the committee gave non-finite energies; give a reference and a σ cap")
    n_ref = 0
    if sigma_cap_eV is not None:
        from ..progress import progress_iter
        from ..reference import as_reference

        ref = as_reference(reference, failed_dir=out / "failed")
        log = CsvLog(out / "reference_calls.csv", _REF_COLUMNS)
        done = {int(r["index"]): float(r["energy_eV"]) for r in log.rows()}
        capped = np.flatnonzero(~(sigma <= sigma_cap_eV))
        for i in progress_iter(capped.tolist(), enabled=progress, desc="reference"):
            if i not in done:
                e = float(ref.compute(ls.structures[i], ("energy",))["energy"])
                log.append({"index": i, "name": ls.names[i], "energy_eV": e, "energy_per_unit_eV": e / n[i]})
                done[i] = e
                n_ref += 1
            final[i], source[i] = done[i] / n[i], "reference"
    exp = {str(x) for x in experimental}
    is_exp = np.array([ls.names[i] in exp or bool(ls.structures[i].info.get("experimental", False))
                       for i in range(len(ls))])
    rank_before = _ranks(ls.baseline_per_unit()) if ls.baseline_energy is not None else None
    rank_after = _ranks(final)
    result = {"final": final, "predicted": pred, "sigma": sigma, "source": source,
              "rank_before": rank_before, "rank_after": rank_after, "n_reference": n_ref,
              "n_capped": int(np.sum(source == "reference")), "unit": ls.unit, "experimental": is_exp}
    _write(ls, result, out)
    if plot:
        plot_landscape(ls, result, out / "landscape.png", sigma_cap_eV=sigma_cap_eV)
    return result


def _write(ls, r, out):
    fac, lab = _display(ls.unit)
    emin = np.nanmin(r["final"])
    base = ls.baseline_per_unit() if ls.baseline_energy is not None else None
    dens = ls.densities()
    order = np.argsort(r["final"], kind="stable")
    tag = "kjmol" if ls.unit == "molecule" else "meV_atom"
    head = ["rank_after", "rank_before", "index", "name", "density_gcm3", f"baseline_rel_{tag}",
            f"predicted_rel_{tag}", f"sigma_{tag}", f"final_rel_{tag}", "final_eV_per_" + ls.unit,
            "source", "experimental"]
    lines = [",".join(head)]
    frames = []
    for i in order:
        b = "" if base is None else repr(float((base[i] - base.min()) * fac))
        rb = "" if r["rank_before"] is None else str(int(r["rank_before"][i]))
        lines.append(",".join([str(int(r["rank_after"][i])), rb, str(int(i)), ls.names[i],
                               f"{dens[i]:.6f}", b, repr(float((r["predicted"][i] - emin) * fac)),
                               repr(float(r["sigma"][i] * fac)), repr(float((r["final"][i] - emin) * fac)),
                               repr(float(r["final"][i])), r["source"][i], str(bool(r["experimental"][i]))]))
        a = ls.structures[i].copy()
        a.info.update({"rank_after": int(r["rank_after"][i]), "final_energy_per_unit": float(r["final"][i]),
                       "committee_energy_per_unit": float(r["predicted"][i]),
                       "committee_sigma_per_unit": float(r["sigma"][i]), "energy_source": r["source"][i]})
        if r["rank_before"] is not None:
            a.info["rank_before"] = int(r["rank_before"][i])
        frames.append(a)
    atomic_write_text(out / "reranked.csv", "\n".join(lines) + "\n")
    write_structures_atomic(out / "reranked.extxyz", frames)


def plot_landscape(ls, r, path, sigma_cap_eV=None):
    """Energy (relative, per unit) vs density with σ bars; capped/experimental marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fac, lab = _display(ls.unit)
    y = (r["final"] - np.nanmin(r["final"])) * fac
    x = ls.densities()
    s = np.where(np.isfinite(r["sigma"]), r["sigma"], 0.0) * fac
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.errorbar(x, y, yerr=s, fmt="o", ms=3, lw=0.6, color="C0", alpha=0.7, label="committee (±σ)")
    ref = r["source"] == "reference"
    if ref.any():
        ax.scatter(x[ref], y[ref], s=40, facecolors="none", edgecolors="C3",
                   label="σ above cap: reference" if sigma_cap_eV else "reference")
    if r["experimental"].any():
        e = r["experimental"]
        ax.scatter(x[e], y[e], marker="*", s=160, color="gold", edgecolors="k", label="experimental", zorder=5)
    ax.set_xlabel("density (g/cm³)")
    ax.set_ylabel(f"relative energy ({lab})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
