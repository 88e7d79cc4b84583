"""LLPR member for MACE: uncertainty from the last layer of one model, and pseudo-members.

A MACE energy is linear in the weights w of its last linear layers (the final ``Linear`` of every
readout).  Their scalar inputs, scaled as the model scales its readouts and summed over atoms, are
the last-layer features φ (D,): ``E = φ·w + (terms without w)``.  LLPR (last-layer prediction
rigidity; Bigi, Chong, Ceriotti & Grasselli, Mach. Learn.: Sci. Technol. 5, 045018 (2024))::

    C = Σ_train φ φᵀ  (D, D);    σ²(A) = α² φ(A)ᵀ (C + ς² I)⁻¹ φ(A)  [eV²]

α and ς are fitted on held-out frames (maximum likelihood of the energy errors, ς on a log
grid).  ``committee-llpr-fit model.model train.extxyz --heldout heldout.extxyz`` (:func:`fit_llpr`)
writes C, α, ς to ``model.model.llpr.npz`` beside the model.  σ needs the features of one
forward pass, no backward pass (:class:`LLPRCalculator`, :meth:`LLPRModel.run`).

Pseudo-members (``members: K``): K weight changes δw ~ N(0, α²(C + ς²I)⁻¹) (seeded, antithetic
pairs ±δw, so their mean is the model).  Member k: ``E_k = E + φ·δw_k``, ``F_k = F − ∇_r(φ·δw_k)``,
``S_k = S + (1/V) ∂(φ·δw_k)/∂ε``; the gradients of E and of the ⌈K/2⌉ distinct terms come from
one batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``).  One YAML entry
is a whole committee::

    members:
      - {backend: mace_llpr, path: model.model, members: 8}
        # optional: seed: 0, covariance: <npz>, dtype, device, head, jit, skin (as mace)

Units as the MACE member.  Errors: ModelFileError for a model without its covariance (naming the
command that makes it), a corrupt one or one made for another model file; ConfigError; CalibrationError.
"""
from __future__ import annotations

import copy
import hashlib
import io
import math
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..errors import CalibrationError, ConfigError, ModelFileError
from ..fileio import atomic_write_bytes
from ..structures import is_bulk
from ._torch_common import check_dtype, keeps_torch_globals, torch_dtype, torch_load, voigt
from .base import BatchedMember
from .mace import MACEMember, _mace

SUFFIX, FIT_COMMAND = ".llpr.npz", "committee-llpr-fit"  #: covariance file suffix, the command writing it
#: ς² grid of the calibration, relative to the mean eigenvalue of C
REG_GRID = 10.0 ** np.arange(-10.0, 3.0)


def covariance_path(model_path) -> Path:
    """Where the LLPR covariance of ``model_path`` lives: ``<model>.llpr.npz``."""
    return Path(str(model_path) + SUFFIX)


def model_digest(path) -> str:
    """SHA-256 of the model file (stored with its covariance; a changed model is refused)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fit_hint(path) -> str:  # the command that writes the covariance of ``path``
    return f"`{FIT_COMMAND} {path} TRAIN.extxyz --heldout HELDOUT.extxyz`"


class LastLayer:
    """The last linear layers of an eager MACE model (read before it is scripted; the readouts'
    first layers are copied) as weights ``w`` (D,) and :meth:`atom_features` (N, D), with
    ``Σ_atoms atom_features · w = scale · Σ readout energies`` for the head of :meth:`select`."""

    def __init__(self, model):
        import torch

        dims = [int(p.linear.irreps_out.dim) for p in model.products]
        offsets = np.cumsum([0] + dims)
        scale = getattr(getattr(model, "scale_shift", None), "scale", None)
        self.scales = None if scale is None else torch.atleast_1d(scale).detach().clone()
        self.blocks = []
        for i, r in enumerate(model.readouts):
            f = len(dims) - 1 if len(model.readouts) == 1 else i
            kind = type(r).__name__
            if kind not in ("LinearReadoutBlock", "NonLinearReadoutBlock"):
                raise ConfigError(f"LLPR supports MACE readouts LinearReadoutBlock and "
                                  f"NonLinearReadoutBlock; this model has {kind}")
            lin = r.linear if kind == "LinearReadoutBlock" else r.linear_2
            pre = None if kind == "LinearReadoutBlock" else torch.nn.Sequential(
                copy.deepcopy(r.linear_1), copy.deepcopy(r.non_linearity)).requires_grad_(False)
            ref = next(lin.parameters())
            with torch.no_grad():
                eye = torch.eye(lin.irreps_in.dim, dtype=ref.dtype, device=ref.device)
                weights = lin(eye) - lin(torch.zeros_like(eye[:1]))  # (d_in, heads)
            scalars = [k for (_, ir), sl in zip(lin.irreps_in, lin.irreps_in.slices())
                       if ir.l == 0 and ir.p == 1 for k in range(sl.start, sl.stop)]
            heads = int(getattr(r, "num_heads", 1)) if pre is not None else 1
            self.blocks.append([int(offsets[f]), int(offsets[f + 1]), pre, scalars, weights, heads])
        self.w = self.scale = None

    def select(self, head: int) -> None:
        """Fix the head (index): its weight column, the hidden channels of its mask, its scale."""
        import torch
        ws = []
        for b in self.blocks:
            idx, weights, heads = b[3], b[4], b[5]
            if heads > 1:  # mace's mask_head keeps the channel block of the node's head
                n = weights.shape[0] // heads
                idx = [k for k in idx if head * n <= k < (head + 1) * n]
            b[3] = torch.tensor(idx, dtype=torch.long, device=weights.device)
            ws.append(weights[idx, head])
        self.scale, self.w = 1.0 if self.scales is None else float(self.scales[head]), torch.cat(ws)

    dim = property(lambda self: int(self.w.shape[0]))

    def atom_features(self, node_feats):
        """(N, D) per-atom last-layer features from MACE's ``node_feats`` output."""
        import torch
        xs = []
        for lo, hi, pre, idx, _, _ in self.blocks:
            xs.append((node_feats[:, lo:hi] if pre is None else pre(node_feats[:, lo:hi]))[:, idx])
        return self.scale * torch.cat(xs, dim=1)


class LLPRModel:
    """One MACE model with its LLPR covariance, shared by its pseudo-members.

    path: the mace-torch ``.model`` file.  members, seed: pseudo-members and the seed of their
    weights.  covariance: the ``.npz`` (default :func:`covariance_path`; ``need_covariance=False``
    for fitting it).  device, dtype, head, jit, skin: as :class:`~committee_calc.members.mace.MACEMember`.
    """

    @keeps_torch_globals
    def __init__(self, path, members: int = 0, seed: int = 0, covariance=None, device="cpu",
                 dtype=None, head=None, jit=True, skin=0.0, need_covariance=True):
        _mace()
        self.path = str(path)
        model = torch_load(path, "mace", device=device)
        if not hasattr(model, "readouts") or not hasattr(model, "products"):
            raise ModelFileError(f"{path!r} is not a MACE energy model (no readouts): give a .model file")
        if check_dtype(dtype):
            model = model.to(torch_dtype(dtype))
        self.last = LastLayer(model)  # before MACEMember scripts the model
        self.mace = MACEMember(model, path=self.path, device=device, dtype=dtype, head=head,
                               jit=jit, skin=skin)
        self.last.select(self.mace.heads.index(self.mace.head))
        self.alpha, self.proj, self.dw = 1.0, None, None
        if need_covariance:
            self.load(covariance or covariance_path(path))
            self.sample(members, seed)

    def load(self, npz) -> None:
        """Read C, ς², α of ``npz``; checks that it belongs to this model file and head."""
        import torch
        npz = Path(npz)
        if not npz.is_file():
            raise ModelFileError(f"MACE model {self.path!r} has no LLPR covariance ({str(npz)!r} "
                                 f"is missing); compute it once with {fit_hint(self.path)}")
        try:
            with np.load(npz) as f:
                data = {k: f[k] for k in f.files}
            cov, reg, alpha = data["covariance"], float(data["regularizer"]), float(data["alpha"])
            digest, head = str(data["model_sha256"]), str(data["head"])
        except Exception as exc:  # noqa: BLE001 - any unreadable/incomplete file
            raise ModelFileError(f"LLPR covariance file {str(npz)!r} is corrupt or incomplete ({exc}); "
                                 f"recompute it with {fit_hint(self.path)}") from exc
        if digest != model_digest(self.path):
            raise ModelFileError(f"LLPR covariance {str(npz)!r} was computed for another version "
                                 f"of {self.path!r} (the model file changed); recompute it with "
                                 f"{fit_hint(self.path)}")
        if head != self.mace.head or cov.shape != (self.last.dim, self.last.dim):
            raise ModelFileError(f"LLPR covariance {str(npz)!r} is for head {head!r} with "
                                 f"{cov.shape[0]} features, the model head {self.mace.head!r} has "
                                 f"{self.last.dim}; recompute it with {fit_hint(self.path)}")
        lam, vec = np.linalg.eigh(0.5 * (cov + cov.T))  # proj: σ² = α²‖φ proj‖², δw = α proj z
        self.proj = torch.tensor(vec / np.sqrt(np.clip(lam, 0.0, None) + reg), dtype=self.last.w.dtype,
                                 device=self.last.w.device)
        self.alpha = alpha

    def sample(self, members: int, seed: int = 0) -> None:
        """Draw the weight changes of ``members`` pseudo-members (⌈K/2⌉ distinct, antithetic)."""
        import torch
        z = np.random.default_rng(int(seed)).standard_normal((math.ceil(members / 2), self.last.dim))
        self.dw = self.alpha * torch.tensor(z, dtype=self.proj.dtype, device=self.proj.device) @ self.proj.T

    def forward(self, structures, stress: bool = False):
        """One forward pass: (batch dict, ptr, model output, per-atom φ (N,D), φ (B,D))."""
        import torch  # already imported in mace's environment (_mace() in __init__): no scope per call

        if self.mace.skin > 0 and len(structures) == 1:
            bdict, ptr = self.mace.single_graph(structures[0])
        else:
            batch = self.mace.build_batch(structures)
            bdict, ptr = batch.to_dict(), batch["ptr"].cpu().numpy()
        out = self.mace.model(dict(bdict), compute_force=False, compute_displacement=stress, training=False)
        phi_atom = self.last.atom_features(out["node_feats"])
        phi = torch.zeros(len(structures), phi_atom.shape[1], dtype=phi_atom.dtype,
                          device=phi_atom.device).index_add_(0, bdict["batch"], phi_atom)
        return bdict, ptr, out, phi_atom, phi

    def sigma(self, phi) -> np.ndarray:
        """Calibrated σ [eV] of features ``phi`` (B, D) (torch or numpy)."""
        p = np.asarray(phi.detach().cpu() if hasattr(phi, "detach") else phi, float)
        return self.alpha * np.linalg.norm(p @ self.proj.cpu().numpy(), axis=-1)

    @keeps_torch_globals
    def run(self, structures, properties=("energy", "forces"), members=()) -> tuple:
        """Mean-model predictions (with ``energy_std`` [eV]) and pseudo-member predictions.

        Returns ``(means, per)``: ``means[i]`` the model's dict for structure i (energy [eV],
        forces (N,3) [eV/Å], stress (6,) [eV/Å³] for 3-D periodic cells, energies (N,),
        energy_std [eV]); ``per[i][k]`` the dict of pseudo-member k for k in ``members``.
        Energy only: no backward pass.
        """
        import torch
        structures, grad = list(structures), "forces" in properties or "stress" in properties
        periodic = [is_bulk(a) for a in structures]
        stress, distinct = "stress" in properties and any(periodic), sorted({int(k) // 2 for k in members})
        if members and self.dw is None:
            raise ConfigError("this LLPR model has no pseudo-members; build it with members=K")
        with torch.set_grad_enabled(grad):
            bdict, ptr, out, phi_atom, phi = self.forward(structures, stress)
            dw = self.dw[distinct] if distinct else phi.new_zeros((0, phi.shape[1]))
            d_e = phi @ dw.T  # (B, R)
            if grad:
                rows = torch.cat([out["energy"].sum()[None], d_e.sum(0)])
                inputs = [bdict["positions"]] + ([out["displacement"]] if stress else [])
                eye = torch.eye(len(rows), dtype=rows.dtype, device=rows.device)
                grads = [g[None] for g in torch.autograd.grad(rows[0], inputs)] if len(rows) == 1 else \
                    torch.autograd.grad(rows, inputs, grad_outputs=eye, is_grads_batched=True)
        np_ = lambda t: t.detach().cpu().numpy().astype(float)  # noqa: E731
        energy, node_e = np_(out["energy"]).reshape(-1), np_(out["node_energy"])
        d_e, d_atom = (np.hstack([np.zeros((len(x), 1)), np_(x)]) for x in (d_e, phi_atom @ dw.T))
        gpos, gdisp = np_(grads[0]) if grad else None, np_(grads[1]) if stress else None
        sig = self.sigma(phi) if self.proj is not None else np.full(len(structures), np.nan)
        picks = [(None, 0, 0.0)] + [(int(k), distinct.index(int(k) // 2) + 1, -1.0 if k % 2 else 1.0)
                                    for k in members]  # (member, column, sign); None: the model
        means, per = [], []
        for i, a in enumerate(structures):
            sl, row = slice(ptr[i], ptr[i + 1]), {}
            vol = a.get_volume() if stress and periodic[i] else None
            for k, j, s in picks:
                p = {"energy": float(energy[i] + s * d_e[i, j]), "energies": node_e[sl] + s * d_atom[sl, j]}
                if grad:
                    p["forces"] = -(gpos[0, sl] + s * gpos[j, sl])
                if vol is not None:
                    p["stress"] = voigt(gdisp[0, i] + s * gdisp[j, i]) / vol
                row[k] = p
            means.append(dict(row.pop(None), energy_std=float(sig[i])))
            per.append(row)
        return means, per


class LLPRMember(BatchedMember):
    """Pseudo-member ``index`` of an :class:`LLPRModel` (members of one model share its passes)."""

    backend = "mace_llpr"
    implemented_properties = ("energy", "forces", "stress", "energies")
    group_fields = "LLPR model"

    def __init__(self, core: LLPRModel, index: int, name=None):
        super().__init__(name or f"mace_llpr:{core.path}#{index}")
        self.core, self.index = core, int(index)
        self.cutoff, self.species = core.mace.cutoff, core.mace.species

    @classmethod
    def from_file(cls, path, members: int, name=None, **kwargs) -> list:
        """``members`` pseudo-members of the model file ``path`` (kwargs: :class:`LLPRModel`)."""
        if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 2:
            raise ConfigError(f"mace_llpr needs 'members: K' with an integer K >= 2 pseudo-members, "
                              f"got {members!r}; for σ from one pass use LLPRCalculator")
        core = LLPRModel(path, members=int(members), **kwargs)
        return [cls(core, k, name=f"{name}_{k}" if name else None) for k in range(int(members))]

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> list:
        unknown = set(spec) - (known := {"backend", "path", "name", "members", "seed", "covariance",
                                         "device", "dtype", "head", "jit", "skin"})
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a mace_llpr member; known: {sorted(known)}")
        if "path" not in spec:
            raise ConfigError("a mace_llpr member needs 'path: <file.model>'")
        cov = spec.get("covariance")
        if cov is not None and base_dir is not None and not Path(cov).is_absolute():
            cov = Path(base_dir) / cov
        kw = {k: spec[k] for k in ("seed", "device", "dtype", "head", "skin") if k in spec}
        return cls.from_file(spec["path"], spec.get("members"), name=spec.get("name"), covariance=cov,
                             jit=bool(spec.get("jit", True)), **kw)

    def group_key(self):
        return ("mace_llpr", id(self.core))

    def describe(self):
        return dict(super().describe(), path=self.core.path, index=self.index, alpha=self.core.alpha)

    @classmethod
    def predict_batch(cls, members, structures, properties=("energy", "forces")) -> list:
        members, structures = list(members), list(structures)
        cls._check_group(members)
        for a in structures:
            members[0].check_atoms(a)
        _, per = members[0].core.run(structures, properties, [m.index for m in members])
        return [[row[m.index] for m in members] for row in per]


class LLPRCalculator(Calculator):
    """ASE calculator of one MACE model with its LLPR σ from the same pass.

    ``model``: an :class:`LLPRModel` or a model path (kwargs go to :class:`LLPRModel`).
    Results: energy, free_energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³] (3-D periodic),
    energies (N,) [eV], energy_std [eV] (calibrated LLPR σ), energy_std_per_atom [eV].
    Asking for the energy alone runs no backward pass.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "energies",
                              "energy_std", "energy_std_per_atom")

    def __init__(self, model, **kwargs):
        super().__init__()
        self.core = model if isinstance(model, LLPRModel) else LLPRModel(model, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.core.mace.check_atoms(self.atoms)
        res = self.core.run([self.atoms], properties)[0][0]
        self.results = dict(res, free_energy=res["energy"], energy_std_per_atom=res["energy_std"] / len(self.atoms))


# ------------------------------------------------------------------ fitting (committee-llpr-fit)
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
    spearman (rank correlation of σ with |error| there).  Raises ConfigError (missing energies),
    CalibrationError, ModelFileError.
    """
    from scipy.stats import spearmanr

    e_train, e_held = (_energies(f, energy_key, w) for f, w in ((train_frames, "training"),
                                                                 (heldout_frames, "held-out")))
    core = LLPRModel(model_path, dtype=dtype, head=head, need_covariance=False)
    phi_train, _ = features(core, train_frames, batch_size)
    phi_held, pred = features(core, heldout_frames, batch_size)
    cov = phi_train.T @ phi_train
    cal = fit_calibration(cov, phi_held, pred - e_held)
    path = Path(out) if out is not None else covariance_path(model_path)
    buf = io.BytesIO()
    np.savez(buf, covariance=cov, weights=core.last.w.cpu().numpy(), model_sha256=model_digest(model_path),
             head=core.mace.head, energy_key=energy_key, n_train=len(e_train), n_heldout=len(e_held),
             **cal)
    atomic_write_bytes(path, buf.getvalue())
    core.load(path)
    sig, err = core.sigma(phi_held), np.abs(pred - e_held)
    return {"path": str(path), "n_train": len(e_train), "n_heldout": len(e_held),
            "features": core.last.dim, **cal, "rmse_eV": float(np.sqrt(np.mean(err ** 2))),
            "rms_sigma_eV": float(np.sqrt(np.mean(sig ** 2))),
            "spearman": float(spearmanr(sig, err).statistic)}


