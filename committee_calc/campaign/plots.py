"""Figures of a campaign: the energy landscape with committee and reference energies.

:func:`plot_ranking_landscape` draws, per candidate of a :func:`~.report.ranking_report`, the
committee energy (open marker) and the reference energy at the same final structure (filled
marker where the reference verified the structure, a cross where it did not), joined by a line,
against the volume per atom; the reference-only minima (if given) as grey diamonds.
"""
from __future__ import annotations

from ..plotting import pyplot, save_figure


def plot_ranking_landscape(report: dict, path, title=None) -> str:
    """PNG of the report's landscape at ``path`` (energies meV/atom, volumes Å³/atom)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    labelled, labels = set(), []

    def once(name):
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for r in report["candidates"]:
        v = r["volume_A3_atom"]
        if v is None:
            continue
        ec, er, ro = r["committee_meV_atom"], r["reference_meV_atom"], r["reference_only_meV_atom"]
        if ec is not None and er is not None:
            ax.plot([v, v], [ec, er], color="0.6", lw=0.8, zorder=1)
        if ec is not None:
            ax.scatter([v], [ec], facecolors="none", edgecolors="C0", s=55, zorder=2,
                       label=once("committee (final structure)"))
        if er is not None:
            ok = r["status"] == "converged"
            ax.scatter([v], [er], marker="o" if ok else "x", color="C3" if ok else "C1", s=45, zorder=3,
                       label=once("reference, verified minimum" if ok else "reference, not verified"))
        if ro is not None:
            vo = r.get("reference_only_volume_A3_atom") or v
            ax.scatter([vo], [ro], marker="D", facecolors="none", edgecolors="0.35", s=70, zorder=2,
                       label=once("reference-only relaxation"))
        y = er if er is not None else ec
        if y is not None:
            labels.append((r["id"], v, y))
    _place_labels(ax, labels)
    ax.set_xlabel("volume per atom [Å³/atom]")
    ax.set_ylabel(f"energy relative to {report['zero']} [meV/atom]")
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _place_labels(ax, labels, step_pt: float = 11.0) -> None:
    """Candidate names beside their points; names whose points lie within ~4 % of the axes of an
    earlier (lower) one are stacked above it, one line each, with a thin leader line, so a cluster
    of near-identical minima stays readable."""
    if not labels:
        return
    xs, ys = [v for _, v, _ in labels], [y for _, _, y in labels]
    xr, yr = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list = []
    for name, v, y in sorted(labels, key=lambda t: t[2]):
        near = [p for p in placed if abs(p[0] - v) < 0.06 * xr and abs(p[1] - y) < 0.04 * yr]
        dy = 4.0 + step_pt * len(near)
        ax.annotate(name, (v, y), textcoords="offset points", xytext=(14 if near else 6, dy), fontsize=8,
                    va="center" if near else "baseline",
                    arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5) if near else None)
        placed.append((v, y))


__all__ = ["plot_ranking_landscape"]
