"""Issue 20: uncertainty-biased sampling (HAL, UDD) with exact forces and stress.

The committee is four perturbed-EMT members (:mod:`test_relax_members`) with a calibration
α_E = 1.7, so σ is the calibrated spread.  The biased forces and stress are compared with
central finite differences of the biased energy, periodic and non-periodic; the drivers
committee-md and committee-mc are run biased on the tiny EMT inputs of :mod:`driver_inputs`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from committee_calc import keys as K
from committee_calc.bias import (
    BIAS_ENERGY,
    ENERGY_UNBIASED,
    FORCES_UNBIASED,
    HAL,
    STRESS_UNBIASED,
    UDD,
    BiasCalculator,
    apply_bias,
    bias_from_args,
    bias_from_dict,
)
from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError, UnitError
from committee_calc.gate import Gate
from driver_inputs import DRIVERS, argv, make_inputs
from test_bad_input import snapshot
from test_relax_members import perturbed_members

ALPHA = 1.7
H_POS, H_STRAIN = 1e-5, 1e-6


def committee(calibration=None):
    return CommitteeCalculator(perturbed_members(), calibration=calibration or {"energy": ALPHA})


def isotonic(atoms):
    """A per-atom isotonic energy calibration, knots bracketing this structure's raw spread: σ' =
    f(σ) with f(σ)/σ ≈ 1.8 but f'(σ) ≈ 2.8 there (a bias assuming a scale would be wrong)."""
    a = atoms.copy()
    a.calc = CommitteeCalculator(perturbed_members())
    raw = a.calc.get_property(K.ENERGY_STD, a) / len(a)
    return {"energy": {"method": "isotonic", "per_atom": True, "sigma": [0.2 * raw, 0.7 * raw, 1.6 * raw],
                       "calibrated": [0.5 * raw, 1.0 * raw, 3.5 * raw]}}


def structure(periodic: bool):
    a = bulk("Cu", "fcc", 3.6, cubic=True) * (2, 1, 1)
    a.rattle(0.2, seed=2)
    if not periodic:
        a.pbc = False
        a.center(vacuum=5.0)
    return a


def make_bias(kind, atoms, calibration=None):
    """HAL τ = 0.8; UDD with A = 0.3 eV and b such that σ²/(N b²) = 0.6 here (not saturated)."""
    if kind == "hal":
        return HAL(0.8)
    b = atoms.copy()
    b.calc = committee(calibration)
    sigma = b.calc.get_property(K.ENERGY_STD, b)
    return UDD(0.3, sigma / math.sqrt(0.6 * len(b)))


def biased_energy(atoms, bias, calibration=None):
    a = atoms.copy()
    a.calc = BiasCalculator(committee(calibration), bias)
    return a.get_potential_energy()


@pytest.mark.parametrize("kind, periodic, cal", [
    ("hal", True, "alpha"), ("hal", False, "alpha"), ("udd", True, "alpha"), ("udd", False, "alpha"),
    ("hal", True, "isotonic"), ("udd", True, "isotonic")],
    ids=["hal-periodic", "hal-cluster", "udd-periodic", "udd-cluster", "hal-periodic-isotonic",
         "udd-periodic-isotonic"])
def test_bias_forces_and_stress_are_derivatives_of_the_biased_energy(kind, periodic, cal):
    atoms = structure(periodic)
    calibration = isotonic(atoms) if cal == "isotonic" else None
    bias = make_bias(kind, atoms, calibration)
    a = atoms.copy()
    a.calc = calc = BiasCalculator(committee(calibration), bias)
    forces = a.get_forces()
    res = calc.results
    bias_forces = forces - res[FORCES_UNBIASED]
    assert np.abs(bias_forces).max() > 1e-3  # the bias acts
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for d in range(3):
            e = []
            for h in (H_POS, -H_POS):
                b = atoms.copy()
                b.positions[i, d] += h
                e.append(biased_energy(b, bias, calibration))
            fd[i, d] = -(e[0] - e[1]) / (2 * H_POS)
    # relative to the bias forces themselves (far smaller than the total forces)
    assert np.abs(fd - forces).max() <= 1e-6 * np.abs(bias_forces).max()
    if cal == "isotonic":  # a map's derivative f' matters: the scale formula would be off
        naive = apply_bias(calc.calc.results, bias, len(atoms))[K.FORCES]
        assert np.abs(naive - forces).max() > 0.1 * np.abs(bias_forces).max()
    if not periodic:
        assert K.STRESS not in res
        return
    stress = a.get_stress()
    bias_stress = stress - res[STRESS_UNBIASED]
    assert np.abs(bias_stress).max() > 1e-5
    fd_s = np.zeros(6)
    for v, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        e = []
        for h in (H_STRAIN, -H_STRAIN):
            eps = np.eye(3)
            eps[i, j] += h / (1 if i == j else 2)
            eps[j, i] += 0 if i == j else h / 2
            b = atoms.copy()
            b.set_cell(atoms.cell @ eps, scale_atoms=True)
            e.append(biased_energy(b, bias, calibration))
        fd_s[v] = (e[0] - e[1]) / (2 * H_STRAIN) / atoms.get_volume()
    assert np.abs(fd_s - stress).max() <= 1e-6 * np.abs(bias_stress).max()


def test_bias_energy_formulas_and_unbiased_values():
    atoms = structure(True)
    com = committee()
    a = atoms.copy()
    a.calc = com
    a.get_forces()
    raw = dict(com.results)
    sigma, n = raw[K.ENERGY_STD], len(atoms)
    assert sigma == pytest.approx(ALPHA * np.std(raw[K.ENERGY_MEMBERS], ddof=1))
    hal = apply_bias(raw, HAL(0.5))
    assert hal[K.ENERGY] == pytest.approx(raw[K.ENERGY] - 0.5 * sigma, abs=1e-12)
    assert hal[BIAS_ENERGY] == pytest.approx(-0.5 * sigma)
    assert hal[ENERGY_UNBIASED] == raw[K.ENERGY] and hal[K.FREE_ENERGY] == hal[K.ENERGY]
    np.testing.assert_array_equal(hal[FORCES_UNBIASED], raw[K.FORCES])
    udd = apply_bias(raw, UDD(0.2, 0.05))
    assert udd[BIAS_ENERGY] == pytest.approx(0.2 * (math.exp(-sigma ** 2 / (n * 0.05 ** 2)) - 1))
    assert -0.2 <= udd[BIAS_ENERGY] <= 0
    for zero in (HAL(0.0), UDD(0.0, 0.1), None):  # no strength, no bias
        z = apply_bias(raw, zero)
        assert z[K.ENERGY] == raw[K.ENERGY] and z[BIAS_ENERGY] == 0
        np.testing.assert_array_equal(z[K.FORCES], raw[K.FORCES])
    # the spread, not its members' count, sets the bias: a gate in between changes nothing
    b = atoms.copy()
    b.calc = BiasCalculator(Gate(committee()), HAL(0.5))
    assert b.get_potential_energy() == pytest.approx(hal[K.ENERGY], abs=1e-12)
    np.testing.assert_allclose(b.get_forces(), hal[K.FORCES], atol=1e-12)
    np.testing.assert_allclose(b.get_stress(), hal[K.STRESS], atol=1e-14)


def test_results_without_members_pass_unbiased():
    res = {K.ENERGY: -1.0, K.FORCES: np.zeros((2, 3))}
    out = apply_bias(res, HAL(1.0))
    assert out[K.ENERGY] == -1.0 and out[BIAS_ENERGY] == 0.0
    nonfinite = {K.ENERGY: -1.0, K.ENERGY_MEMBERS: np.array([-1.0, np.nan]), K.N_NONFINITE: 1}
    assert apply_bias(nonfinite, HAL(1.0))[BIAS_ENERGY] == 0.0


@pytest.mark.parametrize("make, text", [
    (lambda: HAL(-0.1), r"--hal-tau .* must be >= 0"),
    (lambda: UDD(-1.0, 0.1), r"--udd-a-eV .* must be >= 0"),
    (lambda: UDD(1.0, 0.0), r"--udd-b-eV .* must be > 0"),
    (lambda: HAL(float("nan")), r"must be finite"),
    (lambda: bias_from_dict({"kind": "metad"}), r"kind: one of"),
    (lambda: bias_from_dict({"kind": "hal", "tau": 1, "x": 2}), r"hal bias parameters are \['tau'\]"),
])
def test_bad_bias_is_refused(make, text):
    with pytest.raises((ConfigError, UnitError), match=text):
        make()


def test_bias_options():
    from argparse import Namespace

    ns = dict(bias="hal", hal_tau=None, udd_a_eV=None, udd_b_eV=None)
    assert bias_from_args(Namespace(**dict(ns, hal_tau=0.2))) == HAL(0.2)
    assert bias_from_args(Namespace(**dict(ns, bias="udd", udd_a_eV=1, udd_b_eV=0.1))) == UDD(1, 0.1)
    assert bias_from_args(Namespace(**dict(ns, bias="none"))) is None
    with pytest.raises(ConfigError, match="--bias hal needs --hal-tau"):
        bias_from_args(Namespace(**ns))
    with pytest.raises(ConfigError, match="--bias none does not use --udd-a-eV"):
        bias_from_args(Namespace(**dict(ns, bias="none", udd_a_eV=1.0)))


# ------------------------------------------------------------------------------- drivers
@pytest.mark.parametrize("driver", ["md", "mc"])
@pytest.mark.parametrize("extra, text", [
    (["--bias", "hal", "--hal-tau", "-0.1"], r"--hal-tau .* must be >= 0, got -0.1"),
    (["--bias", "udd", "--udd-a-eV", "-1", "--udd-b-eV", "0.1"], r"--udd-a-eV .* must be >= 0"),
    (["--bias", "udd", "--udd-a-eV", "1"], r"--bias udd needs --udd-b-eV"),
])
def test_driver_refuses_bad_bias(driver, extra, text, tmp_path, capsys):
    inputs = make_inputs(tmp_path, n=3)
    inputs["extra"] += extra
    before = snapshot(tmp_path)
    rc = DRIVERS[driver][0](argv(driver, inputs))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error:") and __import__("re").search(text, last), last
    assert snapshot(tmp_path) == before


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_md_driver_biased_run_logs_unbiased_values_and_refuses_another_bias(tmp_path, capsys):
    inputs = make_inputs(tmp_path, n=3)
    inputs["extra"] += ["--bias", "hal", "--hal-tau", "0.5"]
    assert DRIVERS["md"][0](argv("md", inputs)) == 0
    rows = _rows(Path(inputs["out"]) / "md_log.csv")
    assert len(rows) == 3
    for r in rows:  # online mode, threshold 1e-9: the reference answers, the bias is added to it
        e, e0, b, s = (float(r[k]) for k in ("energy_eV", "energy_unbiased_eV", "bias_energy_eV",
                                            "energy_std_eV"))
        assert e == pytest.approx(e0 + b, abs=1e-10) and b == pytest.approx(-0.5 * s, abs=1e-10)
        assert r["pressure_unbiased_GPa"] != r["pressure_GPa"]
    state = json.loads((Path(inputs["out"]) / "md_state.json").read_text())
    assert state["bias"] == {"kind": "hal", "tau": 0.5}
    summary = (Path(inputs["out"]) / "summary.md").read_text()  # says it was biased, unbiased P beside
    assert "HAL bias B = −τ σ_E, τ = 0.5" in summary and "mean pressure, unbiased" in summary
    assert "mean pressure (biased surface)" in summary
    inputs["extra"][-1] = "0.6"
    assert DRIVERS["md"][0](argv("md", inputs) + ["--steps", "3"]) == 2
    assert "bias" in capsys.readouterr().err.strip().splitlines()[-1]


def test_mc_driver_biased_chain_compares_biased_energies(tmp_path, capsys):
    inputs = make_inputs(tmp_path, n=3)
    inputs["extra"] += ["--bias", "udd", "--udd-a-eV", "0.5", "--udd-b-eV", "0.01"]
    assert DRIVERS["mc"][0](argv("mc", inputs)) == 0
    rows = _rows(Path(inputs["out"]) / "chain_000" / "steps.csv")
    assert rows and all(float(r["trial_energy_eV"]) == pytest.approx(
        float(r["trial_energy_unbiased_eV"]) + float(r["bias_energy_eV"]), abs=1e-10) for r in rows)
    assert all(-0.5 <= float(r["bias_energy_eV"]) < 0 for r in rows)
    run = json.loads((Path(inputs["out"]) / "run.json").read_text())
    assert run["bias"] == {"kind": "udd", "a_eV": 0.5, "b_eV": 0.01}
    summary = (Path(inputs["out"]) / "summary.md").read_text()
    assert "UDD bias" in summary and "A = 0.5 eV, b = 0.01 eV" in summary and "biased surface" in summary
    inputs["extra"] = []
    assert DRIVERS["mc"][0](argv("mc", inputs) + ["--steps", "3"]) == 2
    assert "started with bias" in capsys.readouterr().err.strip().splitlines()[-1]
