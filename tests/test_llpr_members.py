"""Issue 20: LLPR pseudo-members (backend ``mace_llpr``, ``members: K``): the committee schema,
forces and stress equal to finite differences of their energies, the sampled posterior, low-rank
and ``sampling: sigma`` members, odd K, and the HAL bias over them.  The model and its covariance:
the ``llpr_model`` fixture (:mod:`tiny_models`)."""
from __future__ import annotations

import numpy as np
import pytest

from committee_calc import keys as K
from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from test_llpr import si

pytest.importorskip("mace")
from committee_calc.members.mace import MACEMember  # noqa: E402
from committee_calc.members.mace_llpr import LLPRCalculator, LLPRMember, LLPRModel, covariance_path  # noqa: E402


def test_pseudo_members_give_the_committee_schema(llpr_model):
    members = LLPRMember.from_file(llpr_model, members=4, seed=1)
    com = CommitteeCalculator(members)
    atoms = si(seed=3)
    atoms.calc = com
    atoms.get_forces()
    res = com.results
    for key in (K.ENERGY_MEMBERS, K.FORCES_MEMBERS, K.STRESS_MEMBERS, K.ENERGIES_MEMBERS, K.ENERGY_STD,
                K.FORCES_STD, K.FORCES_STD_MAX, K.STRESS_STD, K.ENERGIES_STD, K.FORCE_UNCERTAINTY_RELATIVE):
        assert key in res, key
    assert res[K.FORCES_MEMBERS].shape == (4, 8, 3) and res[K.STRESS_MEMBERS].shape == (4, 6)
    assert res[K.ENERGY_STD] > 0 and res[K.FORCES_STD_MAX] > 0
    model = MACEMember.from_file(llpr_model).predict(atoms, ("energy", "forces"))
    assert res[K.ENERGY] == pytest.approx(model["energy"], abs=1e-10)  # antithetic pairs
    np.testing.assert_allclose(res[K.FORCES], model["forces"], atol=1e-10)
    # per-atom energies sum to the member energies; batched predict equals single calls
    np.testing.assert_allclose(res[K.ENERGIES_MEMBERS].sum(axis=1), res[K.ENERGY_MEMBERS], atol=1e-9)
    batch = com.predict([atoms, si(seed=4)])
    np.testing.assert_allclose(batch[0][K.FORCES_MEMBERS], res[K.FORCES_MEMBERS], atol=1e-10)
    assert set(Gate(com).evaluate(atoms).measures) >= {K.ENERGY_STD, K.FORCES_STD_MAX}


@pytest.mark.parametrize("periodic, rank, sampling",
                         [(True, None, "posterior"), (False, None, "posterior"), (True, 1, "posterior"),
                          (True, None, "sigma"), (False, None, "sigma")],
                         ids=["periodic", "cluster", "periodic-rank1", "periodic-sigma", "cluster-sigma"])
def test_pseudo_member_forces_and_stress_equal_finite_differences(llpr_model, periodic, rank, sampling):
    members = LLPRMember.from_file(llpr_model, members=3, seed=2, rank=rank, sampling=sampling)
    atoms = si(seed=5)
    if not periodic:
        atoms.pbc = False
        atoms.center(vacuum=4.0)
    props = ("energy", "forces", "stress") if periodic else ("energy", "forces")
    preds = LLPRMember.predict_group(members, atoms, props)

    def energies(a):
        return np.array([p["energy"] for p in LLPRMember.predict_group(members, a, ("energy",))])

    h = 1e-4
    for i, d in [(0, 0), (3, 1), (6, 2)]:
        e = []
        for s in (h, -h):
            b = atoms.copy()
            b.positions[i, d] += s
            e.append(energies(b))
        fd = -(e[0] - e[1]) / (2 * h)
        got = np.array([p["forces"][i, d] for p in preds])
        assert np.abs(fd - got).max() < 1e-6 * max(1.0, np.abs(got).max())
    if not periodic:
        assert all("stress" not in p for p in preds)
        return
    for v, (i, j) in enumerate([(0, 0), (1, 2)]):
        e = []
        for s in (h, -h):
            eps = np.eye(3)
            eps[i, j] += s if i == j else s / 2
            eps[j, i] += 0 if i == j else s / 2
            b = atoms.copy()
            b.set_cell(atoms.cell @ eps, scale_atoms=True)
            e.append(energies(b))
        fd = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
        got = np.array([p["stress"][[0, 3][v]] for p in preds])
        assert np.abs(fd - got).max() < 1e-6 * max(1e-2, np.abs(got).max())


def test_sigma_from_one_pass_is_the_spread_of_many_pseudo_members(llpr_model):
    """The sampled ensemble is the LLPR posterior: its energy spread approaches σ."""
    members = LLPRMember.from_file(llpr_model, members=800, seed=4)
    atoms = si((1, 1, 1), seed=6, amp=0.25)
    energies = np.array([p["energy"] for p in LLPRMember.predict_group(members, atoms, ("energy",))])
    sigma = LLPRCalculator(members[0].core).get_property("energy_std", atoms)
    assert np.std(energies, ddof=1) == pytest.approx(sigma, rel=0.15)


def test_low_rank_pseudo_members_live_in_the_leading_directions(llpr_model):
    """rank r: δw in the r eigen-directions of C with the largest λ/(λ+ς²); one backward row each."""
    with np.load(covariance_path(llpr_model)) as f:
        cov, reg = f["covariance"], float(f["regularizer"])
    lam, vec = np.linalg.eigh(cov)
    lam = np.clip(lam, 0, None)
    share = lam / (lam + reg)
    core = LLPRModel(llpr_model, members=6, seed=3, rank=2, jit=False)
    assert core.variance_kept == pytest.approx(np.sort(share)[-2:].sum() / share.sum())
    assert core.basis.shape == (2, core.last.dim) and core.coef.shape == (3, 2)
    top = vec[:, np.argsort(lam)[-2:]]
    dw = core.dw.numpy()
    np.testing.assert_allclose(dw - (dw @ top) @ top.T, 0, atol=1e-12 * np.abs(dw).max())
    _, z_rows = core.coefficients(range(6))
    assert len(z_rows) == 2  # 6 members, 2 gradient rows besides the model's
    # the members' energy changes of any structure are combinations of two
    atoms = [si(seed=s) for s in (7, 8, 9)]
    _, per = core.run(atoms, ("energy",), members=range(6))
    d = np.array([[row[k]["energy"] for k in range(6)] for row in per])
    d -= d.mean(axis=1, keepdims=True)
    assert np.linalg.matrix_rank(d, tol=1e-9 * np.abs(d).max()) == 2
    core.sample(6, seed=3, rank=core.last.dim)  # 3 draws need 3 rows: the draws are the basis
    assert core.variance_kept == pytest.approx(1.0) and core.basis.shape == (3, core.last.dim)
    for rank in (0, core.last.dim + 1, 1.5, True):
        with pytest.raises(ConfigError, match="'rank' must be an integer from 1"):
            core.sample(4, rank=rank)
    spec = {"backend": "mace_llpr", "path": llpr_model, "members": 4, "rank": 1, "jit": False}
    assert LLPRMember.from_spec(spec)[0].core.rank == 1


@pytest.mark.parametrize("k", [2, 5, 8])
def test_sigma_sampling_members_spread_is_sigma_and_their_mean_the_model(llpr_model, k):
    """sampling: sigma: E_k = E + z_k σ with one gradient row; spread (ddof=1) = σ, mean = model;
    per-atom member energies sum to the member energies; batched equals single calls."""
    members = LLPRMember.from_file(llpr_model, members=k, sampling="sigma", jit=False)
    core = members[0].core
    assert core.coefficients(range(k))[0].shape == (k, 1)
    atoms = [si(seed=s, amp=0.2) for s in (11, 12)]
    atoms[1].pbc = False
    model = MACEMember.from_file(llpr_model)
    per = LLPRMember.predict_batch(members, atoms, ("energy", "forces"))
    for a, row in zip(atoms, per):
        e = np.array([p["energy"] for p in row])
        sigma = LLPRCalculator(core).get_property("energy_std", a)
        ref = model.predict(a, ("energy", "forces"))
        assert np.std(e, ddof=1) == pytest.approx(sigma, rel=1e-9) and sigma > 0
        assert e.mean() == pytest.approx(ref["energy"], abs=1e-9)
        np.testing.assert_allclose(np.mean([p["forces"] for p in row], axis=0), ref["forces"], atol=1e-9)
        np.testing.assert_allclose([p["energies"].sum() for p in row], e, atol=1e-9)
        single = LLPRMember.predict_group(members, a, ("energy", "forces"))
        np.testing.assert_allclose([p["forces"] for p in single], [p["forces"] for p in row], atol=1e-10)
    with pytest.raises(ConfigError, match="'rank' applies to sampling: posterior"):
        LLPRModel(llpr_model, members=4, rank=1, sampling="sigma", jit=False)
    with pytest.raises(ConfigError, match="'sampling' must be 'posterior'"):
        LLPRModel(llpr_model, members=4, sampling="sigmas", jit=False)
    spec = {"backend": "mace_llpr", "path": llpr_model, "members": 4, "sampling": "sigma", "jit": False}
    assert LLPRMember.from_spec(spec)[0].core.sampling == "sigma"


def test_hal_bias_over_sigma_members_is_minus_tau_llpr_sigma_with_exact_forces(llpr_model):
    """HAL over ``sampling: sigma`` members: B = −τ σ_LLPR, and its forces/stress (built from the
    members' forces/stress) are finite differences of the biased energy (one model, one extra row)."""
    from committee_calc.bias import HAL, BiasCalculator
    com = CommitteeCalculator(LLPRMember.from_file(llpr_model, members=4, sampling="sigma", jit=False))
    atoms, tau = si(seed=13, amp=0.2), 0.8

    def biased(a):
        b = a.copy()
        b.calc = BiasCalculator(com, HAL(tau))
        return b.get_potential_energy(), b

    e0, b = biased(atoms)
    forces, stress, res = b.get_forces(), b.get_stress(), b.calc.results
    sigma = LLPRCalculator(com.members[0].core).get_property("energy_std", atoms)
    assert res[K.BIAS_ENERGY] == pytest.approx(-tau * sigma, rel=1e-9)
    bias_forces = forces - res[K.FORCES_UNBIASED]
    assert np.abs(bias_forces).max() > 1e-4
    h = 1e-4
    for i, d in [(0, 0), (5, 2)]:
        e = []
        for s in (h, -h):
            c = atoms.copy()
            c.positions[i, d] += s
            e.append(biased(c)[0])
        assert -(e[0] - e[1]) / (2 * h) == pytest.approx(forces[i, d], abs=1e-6 * np.abs(bias_forces).max() + 1e-9)
    e = []
    for s in (h, -h):
        c = atoms.copy()
        c.set_cell(atoms.cell @ np.diag([1 + s, 1, 1]), scale_atoms=True)
        e.append(biased(c)[0])
    bias_stress = stress - res[K.STRESS_UNBIASED]
    fd = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    assert fd == pytest.approx(stress[0], abs=1e-6 * np.abs(bias_stress).max() + 1e-9)


@pytest.mark.parametrize("k", [3, 5])
def test_odd_number_of_posterior_members_keeps_the_model_as_mean(llpr_model, k):
    """Odd K: ⌊K/2⌋ antithetic pairs and one member with δw = 0, so the mean is the model."""
    members = LLPRMember.from_file(llpr_model, members=k, seed=1, jit=False)
    atoms = si(seed=14, amp=0.2)
    row = LLPRMember.predict_group(members, atoms, ("energy", "forces"))
    ref = MACEMember.from_file(llpr_model).predict(atoms, ("energy", "forces"))
    assert np.mean([p["energy"] for p in row]) == pytest.approx(ref["energy"], abs=1e-9)
    np.testing.assert_allclose(np.mean([p["forces"] for p in row], axis=0), ref["forces"], atol=1e-9)
    assert row[-1]["energy"] == pytest.approx(ref["energy"], abs=1e-9)  # the model itself
    assert np.std([p["energy"] for p in row]) > 0
    for seed in (-1, 1.5, "abc", True):
        with pytest.raises(ConfigError, match="'seed' must be a non-negative integer"):
            LLPRModel(llpr_model, members=k, seed=seed, jit=False)
