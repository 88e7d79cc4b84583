"""Calibration of committee spreads: fitting the calibrators of :mod:`.calibration_maps`.

Three methods per quantity (energy per atom, force components, stress components), fitted
on labelled frames the committee never trained on (:func:`check_not_training` refuses an
overlap with the YAML's ``training.train_file`` by structure hash):

* ``alpha``: σ' = α·σ, σ the committee's sample standard deviation (ddof=1);
* ``conformal``: split-conformal at a chosen coverage c (Vovk et al.; Angelopoulos & Bates,
  arXiv:2107.07511): q̂ is the ⌈(n+1)c⌉/n empirical quantile of the scores |Δ|/σ on the
  fitting split (a numpy quantile, ``method="higher"``: MAPIE is not installed and would do
  the same one-line quantile), and σ' = (q̂/z_c)·σ so that ±z_c σ' = ±q̂ σ covers a fraction c;
* ``isotonic``: σ'² = g(σ), g the non-decreasing least-squares fit of Δ² on σ
  (scikit-learn ``IsotonicRegression``): a spread too small where errors are large and too
  large where they are small is corrected, which one global α cannot do.

α is estimated from errors Δ = ȳ − y_ref and raw spreads σ by

* ``resampling`` (Imbalzano et al., J. Chem. Phys. 154, 074102 (2021), eq. for
  resampling committees of M members):
  α² = −1/M + (M−3)/(M−1) · ⟨Δ²/σ²⟩.  It corrects for the noise of σ² estimated
  from M members and for the error of the mean itself; needs M > 3.
* ``nll``: maximum likelihood of Δ ~ N(0, α²σ²), closed form α² = ⟨Δ²/σ²⟩.

Forces are calibrated per Cartesian component (every component a sample), stress per Voigt
component, energies per atom.  Calibrators are persisted in the committee YAML under
``calibration:`` (:func:`save_calibration`), energy offsets under ``energy_offsets:``
(:func:`save_offsets`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import keys as K
from .calibration_maps import (
    Calibrator,
    alpha_calibrator,
    calibration_spec,
    check_coverage,
    conformal_calibrator,
    isotonic_calibrator,
    parse_calibration,
)
from .calibration_offsets import EnergyOffsets
from .config import read_yaml, write_yaml_atomic
from .errors import BackendUnavailableError, CalibrationError, CommitteeWarning, ConfigError
from .structures import read_structures, structure_hash

#: quantities the calibration suite fits: energy per atom, force and stress components
SUITE_QUANTITIES = (K.ENERGY, K.FORCES, K.STRESS)

GAUSS_1SIGMA = 0.6826894921370859
GAUSS_2SIGMA = 0.9544997361036416


@dataclass(frozen=True)
class CalibrationResult:
    """α for one quantity, with diagnostics (fractions use the scaled spread)."""

    quantity: str
    alpha: float
    method: str
    n_samples: int
    n_members: int
    frac_within_1sigma: float  # fraction of |Δ| ≤ α σ   (Gaussian: 0.683)
    frac_within_2sigma: float  # fraction of |Δ| ≤ 2 α σ (Gaussian: 0.954)
    frac_within_1sigma_raw: float  # same with α = 1
    rmse: float  # sqrt⟨Δ²⟩, unit of the quantity
    rms_sigma: float  # sqrt⟨α²σ²⟩, unit of the quantity
    nll: float  # mean Gaussian negative log likelihood with α σ

    def as_dict(self) -> dict:
        return asdict(self)


def _clean(errors, sigmas):
    e = np.asarray(errors, dtype=float).reshape(-1)
    s = np.asarray(sigmas, dtype=float).reshape(-1)
    if e.shape != s.shape:
        raise CalibrationError(f"errors {e.shape} and sigmas {s.shape} differ in size")
    ok = np.isfinite(e) & np.isfinite(s) & (s > 0)
    if ok.sum() < 2:
        raise CalibrationError(
            f"only {int(ok.sum())} samples with finite error and positive spread; "
            "calibration needs a validation set where members disagree"
        )
    return e[ok], s[ok]


def alpha_resampling(errors, sigmas, n_members: int) -> float:
    """Imbalzano et al. (2021) estimator: α² = −1/M + (M−3)/(M−1)⟨Δ²/σ²⟩."""
    m = int(n_members)
    if m <= 3:
        raise CalibrationError(
            f"the resampling estimator needs more than 3 members, got {m}; use method='nll'"
        )
    e, s = _clean(errors, sigmas)
    a2 = -1.0 / m + (m - 3) / (m - 1) * float(np.mean((e / s) ** 2))
    if a2 <= 0:
        raise CalibrationError(
            f"resampling estimator gave α² = {a2:.3g} ≤ 0 (committee spread much larger "
            "than its errors); use method='nll' or a larger validation set"
        )
    return math.sqrt(a2)


def alpha_nll(errors, sigmas) -> float:
    """Maximum-likelihood α for Δ ~ N(0, α²σ²): α² = ⟨Δ²/σ²⟩."""
    e, s = _clean(errors, sigmas)
    return math.sqrt(float(np.mean((e / s) ** 2)))


def diagnostics(errors, sigmas, alpha: float) -> dict:
    e, s = _clean(errors, sigmas)
    z = np.abs(e) / (alpha * s)
    var = (alpha * s) ** 2
    return {
        "n_samples": int(e.size),
        "frac_within_1sigma": float(np.mean(z <= 1.0)),
        "frac_within_2sigma": float(np.mean(z <= 2.0)),
        "frac_within_1sigma_raw": float(np.mean(np.abs(e) <= s)),
        "rmse": float(np.sqrt(np.mean(e ** 2))),
        "rms_sigma": float(np.sqrt(np.mean(var))),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * var) + e ** 2 / (2 * var))),
    }


def fit_alpha(errors, sigmas, n_members: int, method: str = "resampling",
              quantity: str = "energy") -> CalibrationResult:
    if method == "resampling":
        a = alpha_resampling(errors, sigmas, n_members)
    elif method == "nll":
        a = alpha_nll(errors, sigmas)
    else:
        raise CalibrationError(f"unknown calibration method {method!r}; use 'resampling' or 'nll'")
    return CalibrationResult(quantity=quantity, alpha=a, method=method, n_members=int(n_members),
                             **diagnostics(errors, sigmas, a))


def reference_values(atoms, energy_key: str | None = None, forces_key: str | None = None):
    """Reference energy (eV) and forces (eV/Å) of a labelled structure.

    Taken from ``atoms.info[energy_key]``/``atoms.arrays[forces_key]`` when the
    keys are given, else from the attached (single-point) calculator.
    """
    e = f = None
    if energy_key:
        e = atoms.info.get(energy_key)
    if forces_key:
        f = atoms.arrays.get(forces_key)
    calc = atoms.calc
    if e is None and calc is not None:
        e = calc.results.get("energy")
    if f is None and calc is not None:
        f = calc.results.get("forces")
    if e is None:
        raise CalibrationError(
            "validation structure has no reference energy; attach a calculator result or "
            "pass energy_key= naming the info key (e.g. 'REF_energy')"
        )
    return float(e), (None if f is None else np.asarray(f, float))


def calibrate(committee, structures, quantities=("energy", "forces"), method="resampling",
              energy_key=None, forces_key=None) -> dict:
    """Fit α per quantity on labelled ``structures``; returns {quantity: CalibrationResult}.

    Uses the committee's raw (α=1) spreads regardless of its current calibration.
    """
    raw = committee.with_calibration(None)
    errs = {q: [] for q in quantities}
    sigs = {q: [] for q in quantities}
    for atoms in structures:
        e_ref, f_ref = reference_values(atoms, energy_key, forces_key)
        res = raw.predict([atoms])[0]
        if "energy" in quantities:
            errs["energy"].append(res["energy"] - e_ref)
            sigs["energy"].append(res["energy_std"])
        if "forces" in quantities:
            if f_ref is None:
                raise CalibrationError("forces calibration asked but a structure has no reference forces")
            errs["forces"].append((res["forces"] - f_ref).ravel())
            sigs["forces"].append(res["forces_std"].ravel())
    out = {}
    for q in quantities:
        e = np.concatenate([np.atleast_1d(x) for x in errs[q]])
        s = np.concatenate([np.atleast_1d(x) for x in sigs[q]])
        out[q] = fit_alpha(e, s, committee.n_members, method, q)
    return out


def save_calibration(yaml_path, results: dict) -> dict:
    """Write calibrators into the committee YAML's ``calibration:`` block (atomically).

    results: {quantity: CalibrationResult, α float, Calibrator or YAML value}; other quantities
    of the block are kept.  Returns the new block.
    """
    spec = read_yaml(yaml_path)
    cal = dict(spec.get("calibration") or {})
    for q, r in results.items():
        cal[q] = float(r.alpha) if isinstance(r, CalibrationResult) else r
    cal = calibration_spec(parse_calibration(cal))
    spec["calibration"] = cal
    write_yaml_atomic(Path(yaml_path), spec)
    return cal


def save_offsets(yaml_path, offsets: EnergyOffsets | None) -> list | None:
    """Write (None: remove) the ``energy_offsets:`` list of the committee YAML (atomically)."""
    spec = read_yaml(yaml_path)
    spec.pop("energy_offsets", None)
    if offsets is not None:
        spec["energy_offsets"] = offsets.as_spec()
    write_yaml_atomic(Path(yaml_path), spec)
    return spec.get("energy_offsets")


# ----------------------------------------------------------------------------- the suite
def fit_conformal(errors, sigmas, coverage: float = 0.95) -> Calibrator:
    """Split-conformal calibrator: q̂ = the ⌈(n+1)c⌉/n quantile of |Δ|/σ (module docstring).

    With fewer than 1/(1−c) − 1 samples the finite-sample level exceeds 1 and q̂ is the largest
    score (coverage then not guaranteed; a RuntimeWarning says so)."""
    import warnings

    c = check_coverage(coverage)
    e, s = _clean(errors, sigmas)
    scores = np.abs(e) / s
    level = math.ceil((scores.size + 1) * c) / scores.size
    if level > 1:
        warnings.warn(f"{scores.size} samples are too few for a finite split-conformal quantile at "
                      f"coverage {c:g} (needs >= {math.ceil(c / (1 - c))}); using the largest score",
                      CommitteeWarning, stacklevel=2)
    q = float(np.quantile(scores, min(level, 1.0), method="higher"))
    return conformal_calibrator(c, max(q, np.finfo(float).tiny))


def fit_isotonic(errors, sigmas, per_atom: bool = False) -> Calibrator:
    """Isotonic calibrator: σ'(σ) = √g(σ), g = IsotonicRegression(increasing) of Δ² on σ."""
    try:
        from sklearn.isotonic import IsotonicRegression
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the analysis extra
        raise BackendUnavailableError("isotonic calibration needs scikit-learn (pip install "
                                      "'committee_calc[analysis]')") from exc
    e, s = _clean(errors, sigmas)
    floor = max(float(np.min(e ** 2)), 1e-12 * float(np.mean(e ** 2)), np.finfo(float).tiny)
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=floor).fit(s, e ** 2)
    return isotonic_calibrator(iso.X_thresholds_, np.sqrt(iso.y_thresholds_), per_atom)


def fit_calibrator(method: str, errors, sigmas, n_members: int, coverage: float = 0.95,
                   quantity: str = "energy") -> Calibrator:
    """One calibrator of ``method`` (alpha | conformal | isotonic) for ``quantity``.

    alpha: the resampling estimator for M > 3 members (falls back to ``nll`` where it does not
    apply), else ``nll``.  The energy map is per atom (errors and σ per atom)."""
    if method == "alpha":
        est = "resampling" if n_members > 3 else "nll"
        try:
            a = alpha_resampling(errors, sigmas, n_members) if est == "resampling" else alpha_nll(errors, sigmas)
        except CalibrationError as exc:
            if "≤ 0" not in str(exc):
                raise
            est, a = "nll", alpha_nll(errors, sigmas)
        return alpha_calibrator(a, estimator=est, name=quantity)
    if method == "conformal":
        return fit_conformal(errors, sigmas, coverage)
    if method == "isotonic":
        return fit_isotonic(errors, sigmas, per_atom=quantity == K.ENERGY)
    raise CalibrationError(f"unknown calibration method {method!r}; use 'alpha', 'conformal' or 'isotonic'")


def reference_labels(atoms, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress"):
    """(energy eV or None, forces (N,3) eV/Å or None, stress (6,) eV/Å³ or None) of a labelled
    frame: the label-store keys, else the attached single-point calculator."""
    e, f, s = atoms.info.get(energy_key), atoms.arrays.get(forces_key), atoms.info.get(stress_key)
    res = atoms.calc.results if atoms.calc is not None else {}
    e = res.get("energy") if e is None else e
    f = res.get("forces") if f is None else f
    s = res.get("stress") if s is None else s
    if s is not None:
        s = np.asarray(s, float)
        s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] if s.shape == (3, 3) else s.reshape(6)
    return (None if e is None else float(e), None if f is None else np.asarray(f, float).reshape(-1, 3), s)


def predict_raw(committee, frames) -> list:
    """Committee results per frame with raw spreads: no calibration and no energy offsets (both are
    fitted or applied on top of these), one batched ``predict``.  CalibrationError naming frames
    where members returned non-finite values."""
    raw = committee.with_calibration(None)
    raw = raw.with_offsets(None) if hasattr(raw, "with_offsets") else raw
    results = raw.predict(frames)
    bad = [i for i, r in enumerate(results) if r.get(K.N_NONFINITE, 0)]
    if bad:
        raise CalibrationError(f"committee members returned non-finite values on frames {bad[:10]}; "
                               "remove those frames")
    return results


def suite_samples(results: list, refs: list, quantity: str) -> tuple:
    """(errors, raw σ, frame index) per sample of ``quantity`` over frames that have its reference.

    results: raw (uncalibrated) committee results per frame; refs: :func:`reference_labels`
    per frame.  energy: per atom [eV/atom]; forces: components [eV/Å]; stress: components [eV/Å³].
    """
    col = {K.ENERGY: 0, K.FORCES: 1, K.STRESS: 2}[quantity]
    errs, sigs, idx = [], [], []
    for i, (r, ref) in enumerate(zip(results, refs)):
        y = ref[col]
        if y is None or r.get(quantity) is None or r.get(K.N_NONFINITE, 0):
            continue
        n = len(r[K.FORCES]) if quantity == K.ENERGY else 1
        e = (np.asarray(r[quantity], float) - y).reshape(-1) / n
        errs.append(e)
        sigs.append(np.asarray(r[f"{quantity}_std"], float).reshape(-1) / n)
        idx.append(np.full(e.size, i))
    if not errs:
        return np.zeros(0), np.zeros(0), np.zeros(0, int)
    return np.concatenate(errs), np.concatenate(sigs), np.concatenate(idx)


def training_files(committee_yaml) -> list:
    """The training structure files named by the YAML's ``training.train_file`` (str or list),
    resolved against the YAML's folder."""
    path = Path(committee_yaml)
    spec = read_yaml(path)
    tr = spec.get("training") or {}
    files = tr.get("train_file") or []
    files = [files] if isinstance(files, str) else list(files)
    return [(path.parent / f) if not Path(f).is_absolute() else Path(f) for f in files]


def check_not_training(frames, committee_yaml) -> int:
    """Refuse calibration frames the committee trained on (same :func:`structure_hash` as a frame of
    ``training.train_file``).  Returns the number of training frames compared; CalibrationError
    naming the overlapping frames; ConfigError when a named training file is missing."""
    n, seen = 0, set()
    for f in training_files(committee_yaml):
        if not f.is_file():
            raise ConfigError(f"the committee's training.train_file {str(f)!r} does not exist; it is "
                              "needed to check that calibration frames are not training frames")
        for a in read_structures(f):
            seen.add(structure_hash(a))
            n += 1
    bad = [i for i, a in enumerate(frames) if structure_hash(a) in seen]
    if bad:
        raise CalibrationError(f"{len(bad)} of {len(frames)} calibration frames (indices {bad[:10]}) are "
                               "in the committee's training set (training.train_file, same structure "
                               "hash): calibrate on frames the committee never trained on")
    return n
