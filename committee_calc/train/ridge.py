"""Ridge-regression resampling committee of pair-basis potentials: fit and trainer.

:class:`PairRidgeCommittee` fits M weight vectors of the linear pair potential
of :mod:`committee_calc.members.ridge` by ridge regression on random
subsamples of the training structures (resampling committee, Musil et al.,
JCTC 15, 906 (2019)) on energies, forces, or Δ-values of both, and calibrates
the spread with the out-of-sample α.  :meth:`PairRidgeCommittee.as_committee`
wraps it as a :class:`~committee_calc.committee.CommitteeCalculator` of
:class:`~committee_calc.members.ridge.RidgeMember` s.  :class:`RidgeTrainer`
is the active-learning trainer over it (seconds, in-process).  :func:`train_members` and
:class:`RidgeMemberCalculator` are the ``backend: ridge`` adapter of
:func:`committee_calc.train.train_committee` (members written inline into the committee YAML
as ``backend: ase`` entries; a fine-tune is a refit on all data).

The resampling helpers (:func:`_subsets`, :func:`_calibrate`) are shared with
the expected-improvement surrogate
:func:`committee_calc.analysis.select.ridge_rs_fit_predict`.

The normal equations are solved with NumPy (LAPACK): scikit-learn is an
optional extra (``analysis``) and this committee is used by the core drivers.

Units: energies eV, forces eV/Å; α is dimensionless.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read

from .. import keys as K
from ..committee import CommitteeCalculator
from ..errors import ConfigError
from ..members.ridge import PairBasis, RidgeMember, pair_predict
from ._common import bootstrap_indices


def _ridge(A, b, lam):
    """Weights w (d,) minimising ‖Aw − b‖² + λ·s‖w‖², s = tr(AᵀA)/d (relative regulariser)."""
    AtA = A.T @ A
    scale = np.trace(AtA) / max(AtA.shape[0], 1)
    return np.linalg.solve(AtA + lam * max(scale, 1e-12) * np.eye(AtA.shape[0]), A.T @ b)


def _subsets(n, n_members, fraction, rng):
    """``n_members`` sorted index arrays of ``round(fraction·n)`` (≥ 1) of range(n), no repeats."""
    k = max(1, min(n, int(round(fraction * n))))
    return [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(n_members)]


def _oob(Y, member_preds, subsets):
    """Out-of-bag squared residuals and subcommittee variances (structures with >= 2 OOB members)."""
    n, M = len(Y), len(subsets)
    seen = np.zeros((M, n), bool)
    for m, s in enumerate(subsets):
        seen[m, s] = True
    r2, v = [], []
    for i in range(n):
        oob = ~seen[:, i]
        if oob.sum() >= 2:
            p = member_preds[oob, i]
            r2.append((Y[i] - p.mean()) ** 2)
            v.append(p.var(ddof=1))
    return np.array(r2), np.array(v)


def _calibrate(Y, member_preds, subsets):
    """α from out-of-sample residuals: α² = Σ r² / Σ σ², OOB subcommittees (≥ 2 members)."""
    r2, v = _oob(Y, member_preds, subsets)
    if len(r2) < 3 or np.sum(v) <= 0:
        return 1.0
    return float(np.clip(np.sqrt(np.sum(r2) / np.sum(v)), 1e-2, 1e3))


def _stable_subsets(n, n_members, fraction, seed):
    """Member subsets in which structure i's membership depends only on (seed, i).

    Structure i joins member m when ``u[m, i] < fraction`` with ``u[:, i]``
    drawn from a generator seeded by ``(seed, i)``; appending structures (new
    labels) never reshuffles the memberships of the earlier ones, so a retrain
    changes the committee only through the new data.  A member left with no
    structure takes the one with its smallest ``u``.
    """
    base = 0 if seed is None else int(seed)
    U = np.array([np.random.default_rng([base, i]).random(n_members) for i in range(n)]).T  # (M, n)
    out = []
    for m in range(n_members):
        sub = np.flatnonzero(U[m] < fraction)
        out.append(sub if len(sub) else np.array([int(np.argmin(U[m]))]))
    return out


def _calibrate_with_bias(Y, member_preds, subsets):
    """(α, σ_b): maximum likelihood of OOB residuals r_i ~ N(0, α² σ_i² + σ_b²).

    A misspecified model (a pair potential fitted to a many-body reference)
    has an error floor σ_b that resampling cannot see; the one-parameter
    estimate α² = Σr²/Σσ² then grows with the training set as the floor is
    divided by a shrinking spread, inflating σ far from the data.  Here α
    scales the spread only and the floor is returned separately [units of Y].
    r_i is the out-of-bag residual; σ_i² the variance of all M members (the
    2–3 OOB members give too noisy a variance: it biases α low, σ_b high).
    """
    from scipy.optimize import minimize

    n, M = len(Y), len(subsets)
    seen = np.zeros((M, n), bool)
    for m, s in enumerate(subsets):
        seen[m, s] = True
    ok = (~seen).sum(0) >= 2
    if ok.sum() < 3:
        return 1.0, 0.0
    r2 = np.array([(Y[i] - member_preds[~seen[:, i], i].mean()) ** 2 for i in np.flatnonzero(ok)])
    v = np.maximum(member_preds[:, ok].var(0, ddof=1), 1e-30)
    if not np.any(v > 1e-30):
        return 1.0, 0.0
    a0 = np.sum(r2) / np.sum(v)

    def nll(x):
        t = np.exp(x[0]) * v + np.exp(x[1])
        return float(np.sum(np.log(t) + r2 / t))

    best = min((minimize(nll, [np.log(a0 * f), np.log(np.mean(r2) * g + 1e-30)], method="Nelder-Mead",
                         options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
                for f, g in ((1.0, 1e-3), (0.1, 0.5))), key=lambda r: r.fun)
    alpha = float(np.clip(np.sqrt(np.exp(best.x[0])), 1e-2, 1e3))
    return alpha, float(np.sqrt(np.exp(best.x[1])))


class PairRidgeCommittee:
    """Resampling committee of ridge-fitted pair-basis potentials.

    Parameters: ``species``; ``n_members`` (≥ 2); ``subsample`` fraction of
    training structures per member; ``ridge`` relative regulariser;
    ``force_weight`` weight of a force row (eV/Å) against a per-atom energy
    row (eV/atom); ``seed``; basis options ``r_cut``, ``n_basis``.

    ``resampling``: ``"fixed-size"`` (default; every member draws
    ``round(subsample·n)`` structures afresh at each fit) or ``"stable"``
    (structure i's memberships depend only on ``(seed, i)``, so refits on a
    growing training set — on-the-fly learning — keep earlier assignments).
    ``calibration``: ``"ratio"`` (default; α² = Σr²/Σσ² over OOB residuals)
    or ``"bias"`` (:func:`_calibrate_with_bias`: α scales the spread only, the
    error floor is kept in :attr:`bias_std` [eV], not added to σ).
    Raises ConfigError for invalid options.
    """

    def __init__(self, species, n_members=8, subsample=0.7, ridge=1e-8, force_weight=0.1,
                 seed=0, r_cut=5.0, n_basis=12, resampling="fixed-size", calibration="ratio"):
        if n_members < 2:
            raise ConfigError(f"a committee needs n_members >= 2, got {n_members}")
        if not 0 < subsample <= 1:
            raise ConfigError(f"subsample must be in (0, 1], got {subsample}")
        self.basis = PairBasis(species, r_cut=r_cut, n_basis=n_basis)
        self.n_members, self.subsample, self.ridge = int(n_members), float(subsample), float(ridge)
        self.force_weight, self.seed = float(force_weight), seed
        if resampling not in ("fixed-size", "stable"):
            raise ConfigError(f"resampling must be 'fixed-size' or 'stable', got {resampling!r}")
        if calibration not in ("ratio", "bias"):
            raise ConfigError(f"calibration must be 'ratio' or 'bias', got {calibration!r}")
        self.resampling, self.calibration = resampling, calibration
        self.weights = None     # (M, d)
        self.alpha = 1.0
        self.bias_std = 0.0     # eV per structure (calibration="bias" only)

    def fit(self, structures, energies, forces=None, subsets=None):
        """Fit on energies (n,) [eV] and optionally forces (list of (N,3)) [eV/Å]; returns self.

        subsets: one index array per member (e.g. bootstrap samples, repeats allowed) instead
        of the committee's own resampling; ``len(subsets)`` must equal ``n_members``."""
        structures = list(structures)
        E = np.asarray(energies, float).reshape(-1)
        if len(structures) != len(E) or not len(E):
            raise ConfigError(f"need one energy per structure ({len(structures)} structures, {len(E)} energies)")
        blocks = []
        for s, atoms in enumerate(structures):
            n = len(atoms)
            if forces is None:
                phi = self.basis.features(atoms)
                A, b = phi[None, :] / n, np.array([E[s] / n])
            else:
                phi, dphi = self.basis.features(atoms, derivatives=True)
                F = np.asarray(forces[s], float).reshape(n, 3)
                A = np.vstack([phi[None, :] / n, -self.force_weight * dphi.reshape(3 * n, -1)])
                b = np.concatenate([[E[s] / n], self.force_weight * F.reshape(-1)])
            blocks.append((A, b, phi))
        if subsets is not None:
            subsets = [np.asarray(sub, int) for sub in subsets]
            if len(subsets) != self.n_members or any(len(sub) == 0 for sub in subsets):
                raise ConfigError(f"need {self.n_members} non-empty member subsets, got {len(subsets)}")
        elif self.resampling == "stable":
            subsets = _stable_subsets(len(blocks), self.n_members, self.subsample, self.seed)
        else:
            subsets = _subsets(len(blocks), self.n_members, self.subsample, np.random.default_rng(self.seed))
        W = []
        for sub in subsets:
            A = np.vstack([blocks[k][0] for k in sub])
            b = np.concatenate([blocks[k][1] for k in sub])
            W.append(_ridge(A, b, self.ridge))
        self.weights = np.array(W)
        Phi = np.array([blk[2] for blk in blocks])
        if self.calibration == "bias":
            self.alpha, self.bias_std = _calibrate_with_bias(E, self.weights @ Phi.T, subsets)
        else:
            self.alpha = _calibrate(E, self.weights @ Phi.T, subsets)
        return self

    def member_predict(self, k, atoms, forces=True) -> dict:
        """Uncalibrated prediction of member k: ``energy`` [eV] (and ``forces`` (N,3) [eV/Å])."""
        if self.weights is None:
            raise ConfigError("the ridge committee is not fitted yet; call fit() first")
        return pair_predict(self.basis, self.weights[k], atoms, forces=forces)[0]

    def as_committee(self, molecules=None) -> CommitteeCalculator:
        """The committee calculator (α applied to energy and force spreads, no stress)."""
        members = [RidgeMember(self, k) for k in range(self.n_members)]
        return CommitteeCalculator(members, calibration={K.ENERGY: self.alpha, K.FORCES: self.alpha},
                                   molecules=molecules, stress=False)


class RidgeTrainer:
    """Active-learning trainer: ``trainer(train_file, work_dir, use_forces) -> CommitteeCalculator``.

    Reads ``energy_key`` [eV] (and ``forces_key`` [eV/Å] when ``use_forces``;
    default the active-learning training keys ``AL_energy``/``AL_forces``; use
    ``REF_energy``/``REF_forces`` to train straight from a label store) and fits
    a :class:`PairRidgeCommittee` in-process (seconds).  ``options`` go to it.
    """

    def __init__(self, species, molecules=None, energy_key="AL_energy", forces_key="AL_forces",
                 **options):
        self.species, self.molecules, self.options = list(species), molecules, options
        self.energy_key, self.forces_key = energy_key, forces_key
        self.model = None

    def __call__(self, train_file, work_dir=None, use_forces=False):
        frames = read(str(train_file), index=":")
        E = [float(f.info[self.energy_key]) for f in frames]
        F = [np.asarray(f.arrays[self.forces_key]) for f in frames] if use_forces else None
        self.model = PairRidgeCommittee(self.species, **self.options).fit(frames, E, F)
        return self.model.as_committee(molecules=self.molecules)


# ---------------------------------------------------------------------------------------------
# the ``backend: ridge`` training adapter of :func:`committee_calc.train.train_committee`
#: trained in this process (no member jobs); one epoch is one exact least-squares fit
IN_PROCESS = True
DEFAULT_EPOCHS = 1
MEMBER_CALCULATOR = "committee_calc.train.ridge.RidgeMemberCalculator"


class RidgeMemberCalculator(Calculator):
    """One fitted pair-ridge member as an ASE calculator (``backend: ase`` in a committee YAML).

    species, r_cut [Å], n_basis: the :class:`PairBasis`; weights: (d,) fitted weights.
    Energy [eV] and forces [eV/Å], no stress.  Raises ConfigError when the weights do not fit
    the basis.
    """

    implemented_properties = (K.ENERGY, K.FREE_ENERGY, K.FORCES)

    def __init__(self, species, weights, r_cut=5.0, n_basis=12, **kwargs):
        super().__init__(**kwargs)
        self.basis = PairBasis(species, r_cut=r_cut, n_basis=n_basis)
        self.weights = np.asarray(weights, float).reshape(-1)
        if len(self.weights) != self.basis.n_features:
            raise ConfigError(f"ridge member has {len(self.weights)} weights; its basis needs "
                              f"{self.basis.n_features}")

    def calculate(self, atoms=None, properties=(K.ENERGY,), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        p = pair_predict(self.basis, self.weights, self.atoms, forces=True)[0]
        self.results = {K.ENERGY: p[K.ENERGY], K.FREE_ENERGY: p[K.ENERGY], K.FORCES: p[K.FORCES]}


def _member_subsets(n, seeds, bootstrap, subsample):
    """One training subset per member seed: a bootstrap sample, or ``round(subsample·n)``
    structures without repeats -> (subsets, records with the indices and out-of-bag rest)."""
    subsets, records = [], []
    for seed in seeds:
        if bootstrap:
            idx, oob = bootstrap_indices(n, seed)
        else:
            k = max(1, min(n, int(round(subsample * n))))
            idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).tolist()
            oob = np.setdiff1d(np.arange(n), idx).tolist()
        subsets.append(np.asarray(idx, int))
        records.append({"seed": int(seed), "n_train": n, "bootstrap_indices": idx, "oob_indices": oob})
    return subsets, records


def train_members(frames, seeds, *, bootstrap, energy_key, forces_key, model_options=None) -> tuple:
    """Fit one pair-ridge member per seed on ``frames`` (energies [eV], forces [eV/Å]).

    Members differ by their subset: a bootstrap sample with ``bootstrap``, else a random
    ``subsample`` fraction (option, default 0.7) drawn with the member's seed.
    model_options: ``species`` (default: the elements of ``frames``), ``r_cut``, ``n_basis``,
    ``ridge``, ``force_weight``, ``subsample``, ``calibration`` (of :class:`PairRidgeCommittee`).
    Returns ``(member YAML entries, member records, calibration {energy: α, forces: α})``;
    the entries hold the weights inline (``backend: ase`` + :class:`RidgeMemberCalculator`).
    Raises ConfigError for unknown options or fewer than 2 members.
    """
    opts = dict(model_options or {})
    species = sorted(opts.pop("species", None) or {s for a in frames for s in a.get_chemical_symbols()})
    subsample = float(opts.pop("subsample", 0.7))
    subsets, records = _member_subsets(len(frames), seeds, bootstrap, subsample)
    try:
        model = PairRidgeCommittee(species, n_members=len(seeds), **opts)
    except TypeError as exc:
        raise ConfigError(f"unknown ridge model option: {exc}") from None
    E = [float(a.info[energy_key]) for a in frames]
    F = [np.asarray(a.arrays[forces_key]) for a in frames] if forces_key else None
    model.fit(frames, E, F, subsets=subsets)
    basis = model.basis
    members = [{"backend": "ase", "name": f"ridge_{k}", "calculator": MEMBER_CALCULATOR,
                "species": list(basis.species), "cutoff": basis.r_cut,
                "parameters": {"species": list(basis.species), "r_cut": basis.r_cut,
                               "n_basis": basis.n_basis, "weights": model.weights[k].tolist()}}
               for k in range(len(seeds))]
    return members, records, {K.ENERGY: float(model.alpha), K.FORCES: float(model.alpha)}
