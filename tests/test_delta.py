"""Δ-learning: exact forces/stress of the damped variant, limits, NVE conservation, YAML, labels."""
import numpy as np
import pytest
import yaml
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import SumCalculator
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from committee_calc import CommitteeCalculator, load_committee
from committee_calc.delta import DeltaCalculator, add_baseline, delta_targets
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.labels import LabelStore


def _corrections():
    return [LennardJones(sigma=2.3 + 0.01 * i, epsilon=0.02 * (1 + 0.1 * i), rc=4.0, ro=3.0,
                         smooth=True) for i in range(3)]


def _delta(s=0.1, calibration=None):
    return DeltaCalculator(EMT(), CommitteeCalculator(_corrections(), calibration=calibration),
                           damping_sigma_eV=s)


def _cell(seed=0):
    a = bulk("Cu", cubic=True).repeat((2, 1, 1))
    a.rattle(0.08, seed=seed)
    a.set_cell(a.cell * [[1.0, 0.02, 0], [0, 0.98, 0.01], [0, 0, 1.01]], scale_atoms=True)
    return a


def test_damped_weight_is_intermediate_and_forces_stress_match_finite_differences():
    a = _cell()
    calc = _delta()
    a.calc = calc
    a.get_potential_energy()
    w = calc.results["delta_weight"]
    assert 0.05 < w < 0.95, "test must exercise the damping derivative"
    f_num = calc.calculate_numerical_forces(a, d=1e-4)
    s_num = calc.calculate_numerical_stress(a, d=1e-5)
    np.testing.assert_allclose(a.get_forces(), f_num, atol=2e-6)
    np.testing.assert_allclose(a.get_stress(), s_num, atol=2e-7)
    # without the derivative of the weight the forces would be measurably wrong
    naive = calc.results["baseline_forces"] + w * calc.committee.results["forces"]
    assert np.abs(naive - f_num).max() > 100 * np.abs(a.get_forces() - f_num).max()


def test_plain_delta_is_sum_and_keeps_committee_uncertainty():
    a = _cell(1)
    calc = _delta(s=None)
    a.calc = calc
    e = a.get_potential_energy()
    b = a.copy()
    b.calc = EMT()
    c = a.copy()
    c.calc = CommitteeCalculator(_corrections())
    assert e == pytest.approx(b.get_potential_energy() + c.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(a.get_forces(), b.get_forces() + c.get_forces(), atol=1e-10)
    assert calc.results["energy_std"] == pytest.approx(c.calc.results["energy_std"])
    np.testing.assert_allclose(calc.results["energy_members"],
                               b.get_potential_energy() + c.calc.results["energy_members"])
    np.testing.assert_allclose(calc.calculate_numerical_forces(a, d=1e-4), a.get_forces(), atol=2e-6)


@pytest.mark.parametrize("alpha,limit", [(1e-6, "full"), (1e6, "baseline")])
def test_sigma_limits(alpha, limit):
    a = _cell(2)
    damped = _delta(s=0.05, calibration={"energy": alpha})
    a.calc = damped
    e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
    if limit == "full":  # σ → 0: full correction
        ref = a.copy()
        ref.calc = _delta(s=None)
    else:  # σ → ∞: baseline only
        ref = a.copy()
        ref.calc = EMT()
    assert e == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(f, ref.get_forces(), atol=1e-7)
    np.testing.assert_allclose(s, ref.get_stress(), atol=1e-8)


def _nve_drift(calc, steps=1000):
    a = bulk("Cu", cubic=True).repeat((2, 2, 1))
    MaxwellBoltzmannDistribution(a, temperature_K=500, rng=np.random.default_rng(4))
    a.calc = calc
    dyn = VelocityVerlet(a, 2 * units.fs)
    etot, weights = [], []
    dyn.attach(lambda: (etot.append(a.get_total_energy()),
                        weights.append(calc.results.get("delta_weight", 1.0))), interval=10)
    dyn.run(steps)
    etot = np.array(etot)
    return np.abs(etot - etot[0]).max() / len(a), np.array(weights)


def test_damped_delta_conserves_energy_like_a_plain_member():
    drift_delta, w = _nve_drift(_delta(s=0.1))
    assert w.max() - w.min() > 0.02 and w.max() < 0.9  # the damping really varies
    member = SumCalculator([EMT(), _corrections()[0]])
    drift_member, _ = _nve_drift(member)
    # max |E_tot - E_tot(0)| per atom over 1000 × 2 fs
    print(f"NVE drift per atom: damped delta {drift_delta:.2e} eV, plain member {drift_member:.2e} eV")
    assert drift_delta < max(3 * drift_member, 2e-4), (drift_delta, drift_member)


def test_yaml_baseline_and_delta_targets(tmp_path):
    spec = {"members": [{"backend": "ase", "calculator": "ase.calculators.lj.LennardJones",
                         "parameters": {"sigma": 2.3 + 0.01 * i, "epsilon": 0.02 * (1 + 0.1 * i),
                                        "rc": 4.0, "smooth": True}} for i in range(3)],
            "baseline": {"calculator": "ase.calculators.emt.EMT"},
            "delta": {"damping_sigma_eV": 0.05}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    calc = load_committee(tmp_path / "c.yaml")
    assert isinstance(calc, DeltaCalculator) and calc.damping_sigma_eV == 0.05
    bad = dict(spec, delta={"sigma": 1})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown 'delta' options"):
        load_committee(tmp_path / "bad.yaml")
    # a Δ gate stores reference and baseline values; Δ targets follow
    store = LabelStore(tmp_path / "labels.extxyz")
    gate = Gate(calc, SumCalculator([EMT(), LennardJones(sigma=2.3, epsilon=0.03, rc=4.0)]),
                thresholds={"energy_std": 1e-9}, label_store=store)
    a = _cell(3)
    gate.evaluate(a)
    frames = delta_targets(store.read())
    b = a.copy()
    b.calc = EMT()
    f = frames[0]
    assert f.info["BASE_energy"] == pytest.approx(b.get_potential_energy())
    assert f.info["DELTA_energy"] == pytest.approx(f.info["REF_energy"] - b.get_potential_energy())
    np.testing.assert_allclose(f.arrays["DELTA_forces"], f.arrays["REF_forces"] - b.get_forces(),
                               atol=1e-6)
    assert f.info["DELTA_stress"].shape == (6,)
    # add_baseline recomputes the same values on plain labels
    plain = add_baseline([a.copy()], EMT())
    assert plain[0].info["BASE_energy"] == pytest.approx(f.info["BASE_energy"])
