"""``committee-calibrate`` as one call: labelled frames → calibration suite → report → committee YAML.

::

    run = run_calibration(frames, committee, "report/", SuiteSettings(coverage=0.95),
                          committee_file="committee.yaml", reference=None,
                          thresholds={"forces_std_max_eVA": 0.1}, apply="isotonic", offsets=False)
    run.report["quantities"]["forces"]["methods"]["conformal"]["coverage_95"]

Steps (every check before the first file is written):

1. frames the committee trained on are refused (:func:`~committee_calc.calibration.check_not_training`,
   structure hash against ``training.train_file``);
2. frames without a reference energy are labelled by ``reference`` through the one labelling path
   (:class:`~committee_calc.labeller.Labeller`, stored in ``<out>/labels.extxyz``, never paid twice);
   without a reference such frames are a CalibrationError;
3. the committee (no calibration, no offsets) predicts every frame once; the member values are
   cached in ``<out>/predictions.npz`` under ``<out>/state.json`` (key: members and frames), so a
   rerun with other methods or coverage does not evaluate the committee again;
4. energy offsets: ``offsets=True`` fits per-member, per-element offsets on all frames
   (:func:`~committee_calc.calibration_offsets.fit_offsets`); else the committee's own are used;
5. the suite (:mod:`committee_calc.calibration_report`) on a fitting and a held-out split; with
   ``thresholds`` the report adds, per method, the fraction of held-out frames each gate
   threshold would send to the reference (``labelled_fraction``), so thresholds can be re-chosen
   in calibrated units;
6. ``apply`` writes that method's calibrators, ``offsets`` the fitted offsets, into the YAML.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from . import keys as K
from .calibration import check_not_training, predict_raw, reference_labels, save_calibration, save_offsets
from .calibration_maps import METHODS
from .calibration_offsets import apply_offsets, fit_offsets
from .calibration_report import SuiteSettings, run_suite, write_report
from .calibration_thresholds import AdaptiveThreshold
from .config import read_yaml
from .errors import CalibrationError, CommitteeError, ConfigError
from .fileio import atomic_write_bytes, load_json, save_json_atomic
from .labeller import Labeller
from .measures import compute_measures, decide
from .progress import Progress
from .structures import structure_hash
from .summary_md import write_summary_md
from .uncertainty import reaggregate

STATE = "state.json"
CACHE = "predictions.npz"


@dataclasses.dataclass(frozen=True)
class CalibrationRun:
    """report (dict, also in ``calibration_report.json``), fitted {method: {quantity: Calibrator}},
    offsets (EnergyOffsets fitted now, or None), files written, reference calls made."""

    report: dict
    fitted: dict
    offsets: object
    files: tuple
    n_reference_calls: int = 0


def _key(committee_file, frames) -> str:
    spec = read_yaml(committee_file) if committee_file else {}
    members = json.dumps(spec.get("members"), sort_keys=True, default=str)
    h = hashlib.sha256(members.encode())
    for a in frames:
        h.update(structure_hash(a).encode())
    return h.hexdigest()[:16]


def _label_missing(frames, reference, out: Path, keys: dict, bar=None) -> tuple:
    """(frames with reference values, reference calls): frames lacking an energy are labelled
    (``bar``: a Progress advanced by one per labelled frame)."""
    missing = [i for i, a in enumerate(frames) if reference_labels(a, **keys)[0] is None]
    if not missing:
        return frames, 0
    if reference is None:
        raise CalibrationError(f"{len(missing)} of {len(frames)} frames (indices {missing[:10]}) have no "
                               f"reference energy ({keys['energy_key']} or a calculator result); give a "
                               "reference (--reference) to label them, or name the key (--energy-key)")
    labeller = Labeller(reference, out / "labels.extxyz", provenance={"driver": "calibrate"})
    frames = list(frames)
    for i in missing:
        res = labeller.label(frames[i], provenance={"frame": i}).results
        if bar is not None:
            bar.update(1, postfix=f"labelled frame {i} with the reference")
        a = frames[i].copy()
        a.info[keys["energy_key"]] = float(res[K.ENERGY])
        a.arrays[keys["forces_key"]] = np.asarray(res[K.FORCES], float)
        if res.get(K.STRESS) is not None:
            a.info[keys["stress_key"]] = np.asarray(res[K.STRESS], float)
        frames[i] = a
    return frames, labeller.n_reference_calls


def _predict(committee, frames, out: Path, key: str, state, bar=None) -> list:
    """Raw committee results (no calibration, no offsets) per frame, from the cache when its key matches."""
    cache = out / CACHE
    if state and state.get("key") == key and cache.is_file():
        with np.load(cache) as z:
            return [reaggregate({f"{q}_members": z[f"{q}_{i}"] for q in (K.ENERGY, K.FORCES, K.STRESS)
                                 if f"{q}_{i}" in z}) for i in range(len(frames))]
    results, step = [], max(1, len(frames) // 20)  # chunks: a progress line per 5 % of the frames
    for s in range(0, len(frames), step):
        try:
            results += predict_raw(committee, frames[s:s + step])
        except CalibrationError as exc:  # name the frames by their index in the whole input
            raise CalibrationError(f"{exc} (frame indices counted from {s})") from None
        if bar is not None:
            bar.update(len(frames[s:s + step]), postfix="committee predictions")
    arrays = {f"{q}_{i}": np.asarray(r[f"{q}_members"], float) for i, r in enumerate(results)
              for q in (K.ENERGY, K.FORCES, K.STRESS) if f"{q}_members" in r}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(cache, buf.getvalue())
    save_json_atomic(out / STATE, {"key": key, "n_frames": len(frames), "cache": CACHE})
    return results


def _offset_results(results, frames, offsets) -> list:
    if offsets is None:
        return results
    out = []
    for r, a in zip(results, frames):
        m = len(r[K.ENERGY_MEMBERS])
        preds = [{K.ENERGY: float(r[K.ENERGY_MEMBERS][k])} for k in range(m)]
        shifted = apply_offsets(preds, a.numbers, offsets)
        out.append(reaggregate({**{k: v for k, v in r.items() if k.endswith("_members")},
                                K.ENERGY_MEMBERS: np.array([p[K.ENERGY] for p in shifted])}))
    return out


def labelled_fraction(results, n_atoms, thresholds: dict, logic: str = "any") -> dict:
    """{measure: fraction of ``results`` above its threshold, "gate": fraction the gate would label}
    (adaptive thresholds start from an empty running distribution)."""
    th = {k: (t.fresh() if isinstance(t, AdaptiveThreshold) else t) for k, t in thresholds.items()}
    over = {k: 0 for k in th}
    n_label = 0
    for r, n in zip(results, n_atoms):
        d = decide(compute_measures(r, n), th, logic=logic)
        n_label += not d.trusted
        for k in d.exceeded:
            over[k] += 1
    total = max(len(results), 1)
    return {**{k: v / total for k, v in over.items()}, "gate": n_label / total}


def run_calibration(frames, committee, out, settings: SuiteSettings | None = None, committee_file=None,
                    reference=None, thresholds=None, logic: str = "any", apply: str | None = None,
                    offsets: bool = False, keys: dict | None = None, plots: bool = True) -> CalibrationRun:
    """The whole command (module docstring); ``keys``: energy_key, forces_key, stress_key of the
    frames (label-store defaults).  Raises CalibrationError (training overlap, unlabelled frames
    without a reference, nothing to calibrate) and ConfigError (bad settings, corrupt state)."""
    settings = settings or SuiteSettings()
    keys = {"energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress", **(keys or {})}
    if apply is not None and (apply not in METHODS or apply not in settings.methods):
        raise ConfigError(f"apply={apply!r} must be one of the fitted methods {settings.methods}")
    if (apply or offsets) and not committee_file:
        raise ConfigError("writing the calibration or offsets needs the committee YAML (committee_file)")
    frames = list(frames)
    if committee_file:
        check_not_training(frames, committee_file)
    out = Path(out)
    state = load_json(out / STATE)
    if state is not None and not isinstance(state, dict):
        raise ConfigError(f"{str(out / STATE)!r} is corrupt (not a JSON object); delete it")
    fresh = not out.exists()
    try:
        return _run(frames, committee, out, settings, committee_file, reference, thresholds, logic, apply,
                    offsets, keys, plots, state)
    except CommitteeError:
        # a refused first run leaves no folder behind (never one holding reference labels)
        if fresh and out.exists() and not any(out.glob("*.extxyz")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_summary_md(out, report, n_frames, n_ref, apply, offsets, files) -> None:
    """``summary.md``: per quantity the method with the lowest held-out NLL and its 95 % coverage."""
    numbers = [("frames", str(n_frames)), ("held-out frames", str(len(report.get("test_frames", [])))),
               ("reference calls", str(n_ref))]
    warns = []
    for q, d in report["quantities"].items():
        if "skipped" in d:
            warns.append(f"{q}: skipped ({d['skipped']})")
            continue
        best = min(d["methods"], key=lambda m: d["methods"][m]["nll"])
        r = d["methods"][best]
        numbers.append((f"{q}: best method (held-out NLL)", f"{best}: NLL {r['nll']:.3f}, 95 % coverage "
                        f"{100 * r['coverage_95']:.1f} % (raw: {100 * d['methods']['raw']['coverage_95']:.1f} %)"
                        if "raw" in d["methods"] else f"{best}: NLL {r['nll']:.3f}"))
    if apply:
        numbers.append(("written into the committee YAML", f"calibration {apply}"))
    if offsets:
        numbers.append(("written into the committee YAML", "energy offsets"))
    write_summary_md(out, "committee-calibrate summary", "committee-calibrate fitted the spread calibrations "
                     "on one split of the frames and judged them on the other (held-out).", numbers, warns,
                     [(Path(f).name, _WHAT.get(Path(f).suffix, "output")) for f in files])


_WHAT = {".png": "figure", ".md": "the full report (tables)", ".json": "the report, machine-readable",
         ".csv": "the report as a table", ".yaml": "every fitted calibration (a calibration: block)"}


def _run(frames, committee, out, settings, committee_file, reference, thresholds, logic, apply, offsets,
         keys, plots, state) -> CalibrationRun:
    out.mkdir(parents=True, exist_ok=True)
    n_missing = sum(reference_labels(a, **keys)[0] is None for a in frames)
    bar = Progress(n_missing + len(frames), "calibrate", unit="frames")
    frames, n_ref = _label_missing(frames, reference, out, keys, bar)
    refs = [reference_labels(a, **keys) for a in frames]
    raw = _predict(committee, frames, out, _key(committee_file, frames), state, bar)
    bar.update(bar.total - bar.n, force=True, postfix="fitting the calibrations")
    bar.close()
    fitted_offsets = None
    if offsets:
        fitted_offsets, off_report = fit_offsets(np.array([r[K.ENERGY_MEMBERS] for r in raw]),
                                                 [a.numbers for a in frames], [m.name for m in committee.members],
                                                 np.array([r[0] for r in refs]))
    raw = _offset_results(raw, frames, fitted_offsets if offsets else getattr(committee, "energy_offsets", None))
    n_atoms = [len(a) for a in frames]
    report, fitted, samples = run_suite(raw, refs, n_atoms, committee.n_members, settings,
                                        current=getattr(committee, "calibrators", None) or None)
    report["n_reference_calls"] = n_ref
    if offsets:
        report["energy_offsets"] = {"offsets": fitted_offsets.as_spec(), **off_report}
    if thresholds:
        test = report["test_frames"]
        cals = {"raw": None, "current": getattr(committee, "calibrators", None), **fitted}
        report["labelled_fraction"] = {
            m: labelled_fraction([reaggregate(raw[i], c) for i in test], [n_atoms[i] for i in test],
                                 thresholds, logic) for m, c in cals.items() if m == "raw" or c}
    files = write_report(out, report, samples, fitted, plots=plots)
    _write_summary_md(out, report, len(frames), n_ref, apply, offsets, files)
    if apply:
        report["applied"] = {"method": apply, "calibration": save_calibration(committee_file, fitted[apply])}
    if offsets:
        report["applied_offsets"] = save_offsets(committee_file, fitted_offsets)
    if apply or offsets:
        save_json_atomic(out / "calibration_report.json", report)
    return CalibrationRun(report, fitted, fitted_offsets, tuple(files), n_ref)


__all__ = ["CalibrationRun", "run_calibration", "labelled_fraction", "STATE", "CACHE"]
