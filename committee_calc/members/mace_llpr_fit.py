"""Fitting an LLPR covariance (``committee-llpr-fit``): features of the training set, C, α, ς.

:func:`fit_llpr` computes C = Σ_train φ φᵀ (D, D) of a MACE model's last-layer features
(:class:`~committee_calc.members.mace_llpr.LastLayer`), fits ς² and α on held-out frames by
maximum likelihood of their energy errors (:func:`fit_calibration`) and writes them beside the
model (:func:`~committee_calc.members.mace_llpr.covariance_path`).  Source of the method: Bigi,
Chong, Ceriotti & Grasselli, Mach. Learn.: Sci. Technol. 5, 045018 (2024).
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import CalibrationError, CommitteeWarning, ConfigError
from ..fileio import atomic_write_bytes
from ..structures import structure_hash
from .mace_llpr import LLPRModel, covariance_path, model_digest

#: ς² grid of the calibration, relative to the mean eigenvalue of C
REG_GRID = 10.0 ** np.arange(-10.0, 3.0)


def _energies(frames, key: str, what: str) -> np.ndarray:
    bad = [i for i, a in enumerate(frames) if not np.isfinite(float(a.info.get(key, np.nan)))]
    if bad or not len(frames):
        raise ConfigError(f"{what} structure(s) {bad[:5] or 'none given'}: no finite reference energy "
                          f"info[{key!r}]; give the key of the energies (--energy-key)")
    return np.array([float(a.info[key]) for a in frames])


def features(core: LLPRModel, frames, batch_size: int = 8) -> tuple:
    """(φ (n, D), model energies (n,) [eV]) of ``frames`` (forward passes only)."""
    import torch
    phis, es = [], []
    with torch.no_grad():
        for s in range(0, len(frames), int(batch_size)):
            chunk = list(frames[s:s + int(batch_size)])
            _ = [core.mace.check_atoms(a) for a in chunk]
            _, _, out, _, phi = core.forward(chunk)
            phis.append(phi.cpu().numpy().astype(float))
            es.append(out["energy"].cpu().numpy().astype(float).reshape(-1))
    return np.concatenate(phis), np.concatenate(es)


def fit_calibration(cov, phi, errors) -> dict:
    """ς² (from :data:`REG_GRID` × mean eigenvalue of C) and α maximising the Gaussian likelihood
    of held-out energy ``errors`` [eV] given raw σ² = φᵀ(C + ς²I)⁻¹φ -> {regularizer, alpha, nll}."""
    e = np.asarray(errors, float)
    if len(e) < 2 or not np.any(e != 0):
        raise CalibrationError(f"LLPR calibration needs at least 2 held-out frames with non-zero "
                               f"error, got {len(e)}")
    lam, vec = np.linalg.eigh(cov)
    lam, z2, fits = np.clip(lam, 0.0, None), (np.asarray(phi, float) @ vec) ** 2, []
    for reg in REG_GRID * max(float(lam.mean()), 1e-300):
        s2 = np.maximum(z2 @ (1.0 / (lam + reg)), 1e-300)
        a2 = float(np.mean(e * e / s2))  # the maximum-likelihood α² at this ς²
        fits.append({"regularizer": float(reg), "alpha": math.sqrt(a2),
                     "nll": float(0.5 * np.mean(np.log(2 * np.pi * a2 * s2)) + 0.5)})
    return min(fits, key=lambda f: f["nll"])


def fit_llpr(model_path, train_frames, heldout_frames, energy_key: str = "REF_energy", out=None,
             head=None, dtype=None, batch_size: int = 8) -> dict:
    """Compute the LLPR covariance of ``model_path`` over ``train_frames``, calibrate α and ς on
    ``heldout_frames`` (reference energies ``info[energy_key]`` [eV]) and write them to ``out``
    (default :func:`covariance_path`).  Returns a summary: path, n_train, n_heldout, features,
    regularizer, alpha, nll, rmse_eV and rms_sigma_eV on the held-out frames, and
    spearman (rank correlation of σ with |error| there).  The training frames need no energies
    (C uses their features only); held-out frames that are also training frames (same geometry)
    are warned about: their errors make α optimistic.  Raises ConfigError (no training frames,
    missing held-out energies, elements the model lacks), CalibrationError, ModelFileError.
    """
    from scipy.stats import spearmanr

    if not len(train_frames):
        raise ConfigError("no training structures given: the LLPR covariance is a sum over them")
    e_held = _energies(heldout_frames, energy_key, "held-out")
    seen = {structure_hash(a) for a in train_frames}
    shared = sum(structure_hash(a) in seen for a in heldout_frames)
    if shared:
        warnings.warn(f"{shared} of {len(heldout_frames)} held-out structures are also training "
                      f"structures: the calibration α fitted on them is optimistic; hold out other "
                      f"frames", CommitteeWarning, stacklevel=2)
    core = LLPRModel(model_path, dtype=dtype, head=head, need_covariance=False)
    phi_train, _ = features(core, train_frames, batch_size)
    phi_held, pred = features(core, heldout_frames, batch_size)
    cov = phi_train.T @ phi_train
    cal = fit_calibration(cov, phi_held, pred - e_held)
    path = Path(out) if out is not None else covariance_path(model_path)
    buf = io.BytesIO()
    np.savez(buf, covariance=cov, weights=core.last.w.cpu().numpy(), model_sha256=model_digest(model_path),
             head=core.mace.head, energy_key=energy_key, n_train=len(train_frames), n_heldout=len(e_held),
             **cal)
    atomic_write_bytes(path, buf.getvalue())
    core.load(path)
    sig, err = core.sigma(phi_held), np.abs(pred - e_held)
    return {"path": str(path), "n_train": len(train_frames), "n_heldout": len(e_held),
            "features": core.last.dim, **cal, "rmse_eV": float(np.sqrt(np.mean(err ** 2))),
            "rms_sigma_eV": float(np.sqrt(np.mean(sig ** 2))),
            "spearman": float(spearmanr(sig, err).statistic)}


