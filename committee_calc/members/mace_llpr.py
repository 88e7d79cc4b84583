"""LLPR member for MACE: uncertainty from the last layer of one model, and pseudo-members.

A MACE energy is linear in the weights w of its last linear layers (the final ``Linear`` of every
readout).  Their scalar inputs, scaled as the model scales its readouts and summed over atoms, are
the last-layer features φ (D,): ``E = φ·w + (terms without w)``.  LLPR (last-layer prediction
rigidity; Bigi, Chong, Ceriotti & Grasselli, Mach. Learn.: Sci. Technol. 5, 045018 (2024))::

    C = Σ_train φ φᵀ  (D, D);    σ²(A) = α² φ(A)ᵀ (C + ς² I)⁻¹ φ(A)  [eV²]

α and ς are fitted on held-out frames (maximum likelihood of the energy errors, ς on a log
grid).  ``committee-llpr-fit model.model train.extxyz --heldout heldout.extxyz``
(:func:`~committee_calc.members.mace_llpr_fit.fit_llpr`) writes C, α, ς to
``model.model.llpr.npz`` beside the model.  σ needs the features of one forward pass, no
backward pass (:class:`LLPRCalculator`, :meth:`LLPRModel.run`).

Pseudo-members (``members: K``): K weight changes δw ~ N(0, α²(C + ς²I)⁻¹) (seeded, antithetic
pairs ±δw, so their mean is the model; for odd K the last member is the model itself, δw = 0,
which keeps the mean and leaves the ddof = 1 spread unbiased).  Member k: ``E_k = E + φ·δw_k``,
``F_k = F − ∇_r(φ·δw_k)``, ``S_k = S + (1/V) ∂(φ·δw_k)/∂ε``, exact derivatives of E_k.  The δw are ``Z @ B`` for R basis
rows b_j; the gradients of E and of the R terms φ·b_j come from one backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``), with R = ⌊K/2⌋ for the full posterior or
R = min(r, ⌊K/2⌋) with ``rank: r`` (the posterior restricted to the r directions carrying most of
its energy variance, :meth:`LLPRModel.sample`).  Each row costs about half a model evaluation
(a backward pass), so ``rank`` is what bounds the cost of many members.

``sampling: sigma`` (one gradient row for any K): member k is the surface ``E_k = E + z_k σ``
with fixed z_k (symmetric normal quantiles scaled to a sample standard deviation of 1), so
``F_k = F − z_k ∇σ`` and ``S_k = S + (z_k/V) ∂σ/∂ε`` are exact derivatives of E_k, the members'
mean is the model and their energy spread (ddof = 1) is the calibrated σ exactly.  At a
structure x, member k has the weights ``w + z_k Σφ(x)/σ(x)`` (Σ = α²(C + ς²I)⁻¹), the mean of the
posterior given the energy change z_k σ(x): all of the energy variance, and of the force
variance only the part along ∇σ (the benchmark ``benchmarks/llpr_cost.py`` reports how much).
Per-atom energies split σ = Σ_i φ_i·Σφ/σ over atoms.  One YAML entry is a whole committee::

    members:
      - {backend: mace_llpr, path: model.model, members: 8}
        # optional: rank: 2 or sampling: sigma, seed: 0, covariance: <npz>, dtype, device,
        # head, jit, skin (as mace)

Units as the MACE member.  Errors: ModelFileError for a model without its covariance (naming the
command that makes it), a corrupt one or one made for another model file; ConfigError (members,
rank, sampling).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..errors import ConfigError, ModelFileError
from ..structures import is_bulk
from ._torch_common import check_dtype, keeps_torch_globals, torch_dtype, torch_load, voigt
from .base import BatchedMember
from .llpr_sampling import POSTERIOR, SIGMA, draw_members
from .mace import MACEMember, _mace
from .mace_last_layer import LastLayer

SUFFIX, FIT_COMMAND = ".llpr.npz", "committee-llpr-fit"  #: covariance file suffix, the command writing it


def covariance_path(model_path) -> Path:
    """Where the LLPR covariance of ``model_path`` lives: ``<model>.llpr.npz``."""
    return Path(str(model_path) + SUFFIX)


def model_digest(path) -> str:
    """SHA-256 of the model file (stored with its covariance; a changed model is refused)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fit_hint(path) -> str:  # the command that writes the covariance of ``path``
    return f"`{FIT_COMMAND} {path} TRAIN.extxyz --heldout HELDOUT.extxyz`"


class LLPRModel:
    """One MACE model with its LLPR covariance, shared by its pseudo-members.

    path: the mace-torch ``.model`` file.  members, seed: pseudo-members and the seed of their
    weights.  rank: None samples the full posterior (⌊K/2⌋ gradient rows); an integer r
    (1 ≤ r ≤ D) samples it in the r directions carrying most of its energy variance over the
    training set (:meth:`sample`; at most r rows for any K).  sampling: ``"posterior"`` (the
    above) or ``"sigma"`` (members ``E + z_k σ``, one row for any K; module docstring).
    covariance: the ``.npz`` (default
    :func:`covariance_path`; ``need_covariance=False`` for fitting it).  device, dtype, head,
    jit, skin: as :class:`~committee_calc.members.mace.MACEMember`.
    """

    @keeps_torch_globals
    def __init__(self, path, members: int = 0, seed: int = 0, covariance=None, device="cpu",
                 dtype=None, head=None, jit=True, skin=0.0, need_covariance=True, rank=None,
                 sampling=POSTERIOR):
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
        self.alpha, self.proj, self.eig, self.basis, self.coef = 1.0, None, None, None, None
        self.rank, self.variance_kept, self.sampling, self._proj_t = None, 1.0, POSTERIOR, None
        if need_covariance:
            self.load(covariance or covariance_path(path))
            self.sample(members, seed, rank, sampling)

    def load(self, npz) -> None:
        """Read C, ς², α of ``npz``; checks that it belongs to this model file and head."""
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
            raise ModelFileError(f"LLPR covariance {str(npz)!r} was computed for another model file "
                                 f"(its SHA-256 differs from {self.path!r}: another model, or this "
                                 f"one changed since); recompute it with {fit_hint(self.path)}")
        if head != self.mace.head or cov.shape != (self.last.dim, self.last.dim):
            raise ModelFileError(f"LLPR covariance {str(npz)!r} is for head {head!r} with "
                                 f"{cov.shape[0]} features, the model head {self.mace.head!r} has "
                                 f"{self.last.dim}; recompute it with {fit_hint(self.path)}")
        lam, vec = np.linalg.eigh(0.5 * (cov + cov.T))  # proj: σ² = α²‖φ proj‖², δw = α proj z
        self.eig = (np.clip(lam, 0.0, None), vec, reg)
        self.proj, self.alpha = vec / np.sqrt(self.eig[0] + reg), alpha  # (D, D) numpy

    def sample(self, members: int, seed: int = 0, rank=None, sampling=POSTERIOR) -> None:
        """Make the pseudo-members' weight changes (:func:`~.llpr_sampling.draw_members`): ⌊K/2⌋
        antithetic pairs ±δw of the (rank-r) posterior (odd K: the last member is the model), or
        for ``sampling="sigma"`` the σ factors.  Sets :attr:`basis` (R, D) torch, :attr:`coef`,
        :attr:`rank`, :attr:`variance_kept`.  Raises ConfigError (``draw_members``)."""
        import torch
        self.sampling, self.rank, self.variance_kept, basis, self.coef = draw_members(
            self.eig, self.alpha, members, seed, rank, sampling)
        as_t = lambda x: torch.tensor(x, dtype=self.last.w.dtype, device=self.last.w.device)  # noqa: E731
        self.basis = None if basis is None else as_t(basis)
        self._proj_t = as_t(self.proj) if sampling == SIGMA else None

    @property
    def dw(self):
        """Distinct weight changes (⌈K/2⌉, D; odd K: the last row 0): member k has
        ``(-1)**k * dw[k // 2]`` (None for sampling: sigma, whose weight changes depend on the
        structure)."""
        import torch
        return None if self.basis is None else torch.tensor(self.coef, dtype=self.basis.dtype) @ self.basis

    @dw.setter
    def dw(self, value):
        self.basis, self.coef = value, np.eye(len(value))

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
        phi = phi_atom.sum(0, keepdim=True) if len(structures) == 1 else torch.zeros(
            len(structures), phi_atom.shape[1], dtype=phi_atom.dtype,
            device=phi_atom.device).index_add_(0, bdict["batch"], phi_atom)
        return bdict, ptr, out, phi_atom, phi

    def sigma(self, phi) -> np.ndarray:
        """Calibrated σ [eV] of features ``phi`` (B, D) (torch or numpy)."""
        p = np.asarray(phi.detach().cpu() if hasattr(phi, "detach") else phi, float)
        return self.alpha * np.linalg.norm(p @ self.proj, axis=-1)

    def coefficients(self, members) -> tuple:
        """(Z (M, R), basis rows (R,)): member k's weight change is ``Z[m] @ basis[rows]``
        (sampling: sigma: Z (M, 1) of the σ factors, one row)."""
        if not len(members):
            return np.zeros((0, 0)), np.zeros(0, int)
        if self.sampling == SIGMA:
            return self.coef[list(members)][:, None], np.zeros(1, int)
        if self.basis is None:
            raise ConfigError("this LLPR model has no pseudo-members; build it with members=K")
        z = np.array([(-1.0 if k % 2 else 1.0) * self.coef[k // 2] for k in members])
        rows = np.flatnonzero(np.any(z != 0, axis=0))
        return z[:, rows], rows

    def run(self, structures, properties=("energy", "forces"), members=()) -> tuple:
        """Mean-model predictions (with ``energy_std`` [eV]) and pseudo-member predictions.

        Returns ``(means, per)``: ``means[i]`` the model's dict for structure i (energy [eV],
        forces (N,3) [eV/Å], stress (6,) [eV/Å³] for 3-D periodic cells, energies (N,),
        energy_std [eV]); ``per[i][k]`` the dict of pseudo-member k for k in ``members``.
        Energy only: no backward pass.  Otherwise one backward pass of 1 + R rows (the model's
        energy and the R basis terms φ·b_j; positions and cell displacement together): member
        k's forces and stress are the model's plus Σ_j Z_kj times those of φ·b_j.  Global torch
        state: the graph is built in ``torch_scope`` (:meth:`MACEMember.build_batch`); the model's
        passes set none, so no second scope (each copies ``os.environ``: +17 % on E+σ of Si8).
        """
        import torch
        structures, grad = list(structures), "forces" in properties or "stress" in properties
        periodic = [is_bulk(a) if "stress" in properties else False for a in structures]
        stress, members = any(periodic), [int(k) for k in members]
        z, rows = self.coefficients(members)
        with torch.set_grad_enabled(grad):
            bdict, ptr, out, phi_atom, phi = self.forward(structures, stress)
            if len(rows):  # the R energy terms of the members (B, R) and their atom shares (N, R)
                d_e, d_atom = self.rows(bdict, phi_atom, phi, rows)
            if grad:
                inputs = [bdict["positions"]] + ([out["displacement"]] if stress else [])
                grads = _gradients(torch.cat([out["energy"].sum()[None], d_e.sum(0)]) if len(rows)
                                   else out["energy"].sum()[None], inputs)
        np_ = lambda t: t.detach().cpu().numpy().astype(float)  # noqa: E731
        energy, node_e = np_(out["energy"]).reshape(-1), np_(out["node_energy"])
        if len(rows):
            d_e, d_atom = np_(d_e) @ z.T, np_(d_atom) @ z.T  # (B, M), (N, M)
        else:  # no members (or all with δw = 0)
            d_e, d_atom = np.zeros((len(structures), len(members))), np.zeros((len(node_e), len(members)))
        if grad:
            gpos = np_(grads[0])
            f_mean, f_mem = -gpos[0], -(gpos[0] + np.tensordot(z, gpos[1:], 1))  # (N,3), (M,N,3)
        if stress:
            gdisp = np_(grads[1])
            s_mean, s_mem = gdisp[0], gdisp[0] + np.tensordot(z, gdisp[1:], 1)  # (B,3,3), (M,B,3,3)
        sig = self.sigma(phi) if self.proj is not None else np.full(len(structures), np.nan)
        means, per = [], []
        for i, a in enumerate(structures):
            sl = slice(ptr[i], ptr[i + 1])
            vol = a.get_volume() if stress and periodic[i] else None
            mean, row = {"energy": float(energy[i]), "energies": node_e[sl], "energy_std": float(sig[i])}, {}
            for m, k in enumerate(members):
                row[k] = {"energy": float(energy[i] + d_e[i, m]), "energies": node_e[sl] + d_atom[sl, m]}
            if grad:
                mean["forces"] = f_mean[sl]
                for m, k in enumerate(members):
                    row[k]["forces"] = f_mem[m, sl]
            if vol is not None:
                mean["stress"] = voigt(s_mean[i]) / vol
                for m, k in enumerate(members):
                    row[k]["stress"] = voigt(s_mem[m, i]) / vol
            means.append(mean)
            per.append(row)
        return means, per

    def rows(self, bdict, phi_atom, phi, rows) -> tuple:
        """Energy terms (B, R) of the basis ``rows`` and their per-atom shares (N, R), torch.

        Posterior sampling: φ·b_j.  Sampling sigma: σ = α‖φ P‖ itself, split over atoms as
        φ_i·u with u = α² P Pᵀ φ / σ (so the shares sum to σ).
        """
        import torch
        if self.sampling != SIGMA:
            basis = self.basis[torch.as_tensor(rows, device=phi.device)]
            return phi @ basis.T, phi_atom @ basis.T
        v = phi @ self._proj_t  # (B, D)
        sig = self.alpha * torch.linalg.vector_norm(v, dim=1)  # (B,)
        u = (self.alpha ** 2) * (v @ self._proj_t.T) / sig[:, None]  # (B, D)
        u_atom = u if len(phi) == 1 else u[bdict["batch"]]
        return sig[:, None], (phi_atom * u_atom).sum(1, keepdim=True)


def _gradients(rows, inputs) -> list:
    """Gradients (R, *input.shape) of every entry of ``rows`` (R,) with respect to ``inputs``,
    in one backward pass (batched over the rows)."""
    import torch
    if len(rows) == 1:
        return [g[None] for g in torch.autograd.grad(rows[0], inputs)]
    eye = torch.eye(len(rows), dtype=rows.dtype, device=rows.device)
    return list(torch.autograd.grad(rows, inputs, grad_outputs=eye, is_grads_batched=True))


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
                              f"got {members!r}; for σ from one pass use "
                              f"committee_calc.members.mace_llpr.LLPRCalculator")
        core = LLPRModel(path, members=int(members), **kwargs)
        return [cls(core, k, name=f"{name}_{k}" if name else None) for k in range(int(members))]

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> list:
        unknown = set(spec) - (known := {"backend", "path", "name", "members", "seed", "covariance",
                                         "device", "dtype", "head", "jit", "skin", "rank", "sampling"})
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a mace_llpr member; known: {sorted(known)}")
        if "path" not in spec:
            raise ConfigError("a mace_llpr member needs 'path: <file.model>'")
        cov = spec.get("covariance")
        if cov is not None and base_dir is not None and not Path(cov).is_absolute():
            cov = Path(base_dir) / cov
        kw = {k: spec[k] for k in ("seed", "device", "dtype", "head", "skin", "rank", "sampling") if k in spec}
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
    Asking for the energy alone runs no backward pass; asking for forces or stress gives both
    (3-D periodic cells) from the same backward pass.  Raises ConfigError for ``members``
    (pseudo-members are ``{backend: mace_llpr, members: K}`` / :meth:`LLPRMember.from_file`).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "energies",
                              "energy_std", "energy_std_per_atom")

    def __init__(self, model, **kwargs):
        super().__init__()
        if kwargs.get("members"):
            raise ConfigError("LLPRCalculator gives the model with its σ; for pseudo-members use "
                              "LLPRMember.from_file(path, members=K) or {backend: mace_llpr, members: K}")
        self.core = model if isinstance(model, LLPRModel) else LLPRModel(model, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.core.mace.check_atoms(self.atoms)
        if "forces" in properties or "stress" in properties:  # one backward pass gives both
            properties = ("energy", "forces") + (("stress",) if is_bulk(self.atoms) else ())
        res = self.core.run([self.atoms], properties)[0][0]
        self.results = dict(res, free_energy=res["energy"], energy_std_per_atom=res["energy_std"] / len(self.atoms))
