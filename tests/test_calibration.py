"""Calibration: α estimators recover a known scale; persistence in the YAML."""
import numpy as np
import pytest
import yaml

from committee_calc.calibration import (
    GAUSS_1SIGMA,
    alpha_nll,
    alpha_resampling,
    calibrate,
    fit_alpha,
    save_calibration,
)
from committee_calc.errors import CalibrationError


def synthetic(alpha, m=8, n=20000, seed=0):
    """Members i.i.d. N(mu, s²); truth = mu + N(0, α² s²) (Imbalzano et al. model)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.01, 0.2, n)  # heteroscedastic true spread
    mu = rng.normal(0, 1, n)
    members = mu[:, None] + s[:, None] * rng.standard_normal((n, m))
    truth = mu + alpha * s * rng.standard_normal(n)
    mean = members.mean(axis=1)
    sigma = members.std(axis=1, ddof=1)
    return mean - truth, sigma


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.5])
def test_resampling_estimator_recovers_known_scale(alpha):
    err, sig = synthetic(alpha, m=8)
    a = alpha_resampling(err, sig, 8)
    assert a == pytest.approx(alpha, rel=0.10)


def test_nll_estimator_recovers_scale_with_many_members():
    # with many members σ is nearly exact and the mean error term 1/M is small
    err, sig = synthetic(2.0, m=64)
    assert alpha_nll(err, sig) == pytest.approx(np.sqrt(2.0 ** 2 + 1 / 64), rel=0.05)


def test_diagnostics_after_calibration_match_gaussian():
    err, sig = synthetic(1.7, m=16)
    r = fit_alpha(err, sig, 16, "resampling", "energy")
    assert r.frac_within_1sigma == pytest.approx(GAUSS_1SIGMA, abs=0.05)
    assert r.frac_within_2sigma > 0.9
    assert r.frac_within_1sigma_raw < r.frac_within_1sigma  # under-dispersed raw committee
    assert r.n_samples == len(err)


def test_estimator_errors():
    err, sig = synthetic(1.0, m=8, n=100)
    with pytest.raises(CalibrationError, match="more than 3 members"):
        alpha_resampling(err, sig, 3)
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        fit_alpha(err, sig, 8, "magic")
    with pytest.raises(CalibrationError, match="samples"):
        alpha_nll([0.1], [0.0])
    with pytest.raises(CalibrationError, match="≤ 0"):
        alpha_resampling(np.zeros(50) + 1e-9, np.ones(50), 8)


def test_calibrate_committee_and_persist(tmp_path):
    """End to end on real EMT-based members with EMT as the reference."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from committee_calc import load_committee
    from helpers import cu_cell

    spec = {"members": [
        {"backend": "ase", "calculator": "ase.calculators.emt.EMT"},
        {"backend": "ase", "calculator": "ase.calculators.lj.LennardJones",
         "parameters": {"sigma": 2.3, "epsilon": 0.4, "rc": 5.0, "smooth": True}},
        {"backend": "ase", "calculator": "ase.calculators.lj.LennardJones",
         "parameters": {"sigma": 2.3, "epsilon": 0.45, "rc": 5.0, "smooth": True}},
        {"backend": "ase", "calculator": "ase.calculators.lj.LennardJones",
         "parameters": {"sigma": 2.25, "epsilon": 0.42, "rc": 5.0, "smooth": True}},
        {"backend": "ase", "calculator": "ase.calculators.lj.LennardJones",
         "parameters": {"sigma": 2.28, "epsilon": 0.41, "rc": 5.0, "smooth": True}},
    ]}
    path = tmp_path / "committee.yaml"
    path.write_text(yaml.safe_dump(spec))
    committee = load_committee(path)
    val = []
    for seed in range(6):
        a = cu_cell(rattle=0.1, seed=seed)
        ref = EMT()
        a.calc = SinglePointCalculator(a, energy=ref.get_potential_energy(a), forces=ref.get_forces(a))
        val.append(a)
    res = calibrate(committee, val, method="nll")
    assert set(res) == {"energy", "forces"}
    assert all(r.alpha > 0 for r in res.values())
    cal = save_calibration(path, res)
    again = load_committee(path)
    assert again.calibration == pytest.approx(cal)
    assert again.calibration["forces"] == pytest.approx(res["forces"].alpha)
