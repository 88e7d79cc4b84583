"""The calibration suite on labelled frames: fit on one split, report on a held-out split.

::

    report, fitted = run_suite(raw_results, refs, n_atoms, n_members, SuiteSettings(coverage=0.95))
    write_report("report/", report, samples, plots=True)

The frames are split once (seeded) into a *fitting* split and a *held-out* split (never the
same frame in both; force and stress components of one frame stay together).  For every
quantity (energy per atom, force components, stress components) and method (``alpha``,
``conformal``, ``isotonic``: :mod:`committee_calc.calibration`) a calibrator is fitted on the
fitting split and judged on the held-out split against the raw spread (``raw``, before) and the
committee's stored calibration (``current``) by :func:`committee_calc.calibration_metrics.summary`:
NLL, miscalibration area, 68 %/95 % coverage, RMSE and RMS σ.

Files (:func:`write_report`): ``calibration_report.json`` (everything, the fitted calibrators
too), ``calibration_report.csv`` (one row per quantity and method), ``calibration_report.md``
(the table), ``calibration.yaml`` (the fitted ``calibration:`` block of every method) and per
quantity ``parity_<quantity>.png`` (|Δ| vs σ, raw and calibrated) and
``calibration_curve_<quantity>.png`` (observed vs expected proportion).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import yaml

from . import keys as K
from .calibration import SUITE_QUANTITIES, fit_calibrator, suite_samples
from .calibration_maps import METHODS, Calibrator, check_coverage
from .calibration_metrics import Z95, calibration_curve, summary
from .errors import CalibrationError, ConfigError
from .fileio import atomic_write_text, save_json_atomic
from .plotting import pyplot, save_figure

UNITS = {K.ENERGY: "eV/atom", K.FORCES: "eV/Å", K.STRESS: "eV/Å³"}
METRICS = ("nll", "miscalibration_area", "coverage_68", "coverage_95", "rmse", "rms_sigma")


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    """methods (subset of alpha, conformal, isotonic); coverage of the conformal method in (0, 1);
    fit_fraction: share of frames in the fitting split, in (0, 1); seed of the split;
    quantities (subset of energy, forces, stress).  ConfigError/CalibrationError when invalid."""

    methods: tuple = METHODS
    coverage: float = 0.95
    fit_fraction: float = 0.5
    seed: int = 0
    quantities: tuple = SUITE_QUANTITIES

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "quantities", tuple(self.quantities))
        bad = [m for m in self.methods if m not in METHODS] + [q for q in self.quantities
                                                                if q not in SUITE_QUANTITIES]
        if bad or not self.methods or not self.quantities:
            raise ConfigError(f"calibration methods must be among {METHODS} and quantities among "
                              f"{SUITE_QUANTITIES} (at least one each), got {bad or 'none'}")
        check_coverage(self.coverage)
        if not 0.0 < float(self.fit_fraction) < 1.0:
            raise ConfigError(f"fit_fraction (--fit-fraction) must be > 0 and < 1, got {self.fit_fraction!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")


def split_frames(n_frames: int, fit_fraction: float, seed: int = 0) -> tuple:
    """(fitting frame indices, held-out frame indices), disjoint, both non-empty, seeded."""
    if n_frames < 2:
        raise CalibrationError(f"the calibration suite needs at least 2 labelled frames (one to fit, "
                               f"one to judge), got {n_frames}")
    perm = np.random.default_rng(seed).permutation(n_frames)
    n_fit = int(np.clip(round(fit_fraction * n_frames), 1, n_frames - 1))
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])


def _calibrated(cal: Calibrator | None, sigma, natoms, per_atom: bool):
    """σ' of raw σ (per atom for the energy: the map sees the total σ and N)."""
    if cal is None:
        return sigma
    if per_atom:
        return np.array([cal(s * n, n) / n for s, n in zip(sigma, natoms)])
    return cal(sigma)


def run_suite(raw_results: list, refs: list, n_atoms, n_members: int, settings: SuiteSettings,
              current: dict | None = None) -> tuple:
    """Fit and judge every method (module docstring).

    raw_results: uncalibrated committee results per frame (offsets already applied); refs:
    :func:`~committee_calc.calibration.reference_labels` per frame; n_atoms: atoms per frame;
    current: the committee's stored {quantity: Calibrator} (judged as ``current``).
    Returns (report dict, {method: {quantity: Calibrator}}, samples for :func:`write_report`).
    """
    fit, test = split_frames(len(raw_results), settings.fit_fraction, settings.seed)
    natoms = np.asarray(n_atoms, int)
    report = {"settings": dataclasses.asdict(settings), "n_frames": len(raw_results),
              "fit_frames": fit.tolist(), "test_frames": test.tolist(), "n_members": int(n_members),
              "quantities": {}}
    fitted: dict = {m: {} for m in settings.methods}
    samples: dict = {}
    for q in settings.quantities:
        e, s, idx = suite_samples(raw_results, refs, q)
        f_mask, t_mask = np.isin(idx, fit), np.isin(idx, test)
        if f_mask.sum() < 2 or t_mask.sum() < 1 or not np.any(s[f_mask] > 0):
            report["quantities"][q] = {"skipped": f"too few labelled samples ({int(f_mask.sum())} to fit, "
                                                  f"{int(t_mask.sum())} held out) or no spread"}
            continue
        per_atom = q == K.ENERGY
        et, st, nt = e[t_mask], s[t_mask], natoms[idx[t_mask]]
        rows = {"raw": {"calibrator": None, **summary(et, st)}}
        sig = {"raw": st}
        if current and q in current:
            sig["current"] = _calibrated(current[q], st, nt, per_atom)
            rows["current"] = {"calibrator": current[q].as_spec(), **summary(et, sig["current"])}
        for m in settings.methods:
            cal = fit_calibrator(m, e[f_mask], s[f_mask], n_members, settings.coverage, q)
            fitted[m][q] = cal
            sig[m] = _calibrated(cal, st, nt, per_atom)
            rows[m] = {"calibrator": cal.as_spec(), **summary(et, sig[m])}
        report["quantities"][q] = {"unit": UNITS[q], "n_fit": int(f_mask.sum()), "n_test": int(t_mask.sum()),
                                   "methods": rows}
        samples[q] = (et, sig)
    if not samples:
        raise CalibrationError("no quantity could be calibrated: the frames need reference energies "
                               "(and forces/stress) and members that disagree")
    return report, fitted, samples


def report_rows(report: dict) -> list:
    """One row per quantity and method: quantity, unit, method, n_fit, n_test and the metrics."""
    out = []
    for q, d in report["quantities"].items():
        for m, r in d.get("methods", {}).items():
            out.append({"quantity": q, "unit": d["unit"], "method": m, "n_fit": d["n_fit"],
                        "n_test": d["n_test"], **{k: r[k] for k in METRICS}})
    return out


def markdown_table(report: dict) -> str:
    """The before (raw) / after table of the held-out split as Markdown."""
    lines = ["| quantity | method | NLL | miscal. area | 68 % cov. | 95 % cov. | RMSE | RMS σ |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report_rows(report):
        lines.append(f"| {r['quantity']} [{r['unit']}] | {r['method']} | {r['nll']:.3f} | "
                     f"{r['miscalibration_area']:.3f} | {100 * r['coverage_68']:.1f} % | "
                     f"{100 * r['coverage_95']:.1f} % | {r['rmse']:.3g} | {r['rms_sigma']:.3g} |")
    return "\n".join(lines) + "\n"


def _figures(out: Path, samples: dict) -> list:
    plt, files = pyplot(), []
    for q, (err, sig) in samples.items():
        unit = UNITS[q]
        fig, ax = plt.subplots(figsize=(5, 4.5))
        a = np.abs(err)
        for name, s in sig.items():
            ax.loglog(s, a, ".", ms=3, alpha=0.5, label=name)
        lo = max(min(float(np.min(v[v > 0])) for v in sig.values()), 1e-12)
        hi = max(float(np.max(v)) for v in sig.values())
        ax.loglog([lo, hi], [lo, hi], "k-", lw=1, label="|Δ| = σ")
        ax.loglog([lo, hi], [Z95 * lo, Z95 * hi], "k--", lw=1, label="|Δ| = 1.96 σ")
        ax.set_xlabel(f"spread σ [{unit}]")
        ax.set_ylabel(f"|error| [{unit}]")
        ax.set_title(f"{q}: σ vs error (held-out)")
        ax.legend(fontsize=7)
        files.append(save_figure(fig, out / f"parity_{q}.png"))
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, s in sig.items():
            p, obs = calibration_curve(err, s)
            ax.plot(p, obs, label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
        ax.set_xlabel("expected proportion in interval")
        ax.set_ylabel("observed proportion")
        ax.set_title(f"{q}: calibration curve (held-out)")
        ax.legend(fontsize=7)
        files.append(save_figure(fig, out / f"calibration_curve_{q}.png"))
    return files


def write_report(out, report: dict, samples: dict, fitted: dict, plots: bool = True) -> list:
    """Write the report files (module docstring) into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = report_rows(report)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["quantity"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(out / "calibration_report.csv", buf.getvalue())
    atomic_write_text(out / "calibration_report.md", markdown_table(report))
    atomic_write_text(out / "calibration.yaml", yaml.safe_dump(
        {m: {"calibration": {q: c.as_spec() for q, c in cals.items()}} for m, cals in fitted.items()},
        sort_keys=False))
    save_json_atomic(out / "calibration_report.json", report)
    files = [str(out / n) for n in ("calibration_report.csv", "calibration_report.md", "calibration.yaml",
                                    "calibration_report.json")]
    if plots:
        files += _figures(out, samples)
    return files


__all__ = ["SuiteSettings", "split_frames", "run_suite", "report_rows", "markdown_table", "write_report",
           "UNITS", "METRICS"]
