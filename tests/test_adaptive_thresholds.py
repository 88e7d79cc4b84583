"""Issue 19, adaptive thresholds: ``q0.95:0.05:0.5`` is a quantile of the running distribution of a
measure (floor and ceiling in the option's unit), parsed once by ``measures.parse_limits`` and applied
by ``measures.decide`` — the one decision every gate, hence every driver, makes."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from ase import Atoms

from committee_calc.calibration_thresholds import AdaptiveThreshold
from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError, UnitError
from committee_calc.gate import Gate
from committee_calc.labels import LabelStore
from committee_calc.measures import check_limits, cli_limit_value, decide, describe, parse_limits
from test_relax_members import Harmonic

CENTRES = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 2.5, 0.0], [0.0, 0.0, 2.5]])
#: labels a gate records when the gate passes Decision.provenance to its labeller
GATE_RECORDS_THRESHOLDS = "provenance" in inspect.getsource(Gate._decide)


def shifting_stream(n, seed=0):
    """Displacement amplitudes of a stream whose spread distribution shifts: a slow drift up by
    50 %, a drop by 20 % half way."""
    t = np.arange(n)
    return 0.05 * (1 + 0.5 * t / n) * np.where(t > n // 2, 0.8, 1.0), np.random.default_rng(seed)


def harmonic_gate(spec, label_store=None):
    """Members E = k/2 Σ|r − R|² with different k: σ_F,i = std(k)·|r_i − R_i|; reference k = 1."""
    committee = CommitteeCalculator([Harmonic(CENTRES, 0.0, k) for k in (0.8, 0.95, 1.1, 1.25)])
    return Gate(committee, Harmonic(CENTRES, 0.0, 1.0), thresholds={"forces_std_max_eVA": spec},
                label_store=label_store)


@pytest.mark.parametrize("q", [0.95, 0.9])
def test_labelled_fraction_follows_the_quantile_on_a_shifting_stream(q):
    """Acceptance: through the gate, the fraction of structures sent to the reference stays within
    ±2 % of 1 − q after warm-up although the spread distribution drifts and jumps."""
    n, warm = 1500, 100
    amp, rng = shifting_stream(n)
    gate = harmonic_gate(f"q{q}:1e-4:10")
    labelled = []
    for a in amp:
        atoms = Atoms("Cu4", positions=CENTRES + a * rng.standard_normal((4, 3)))
        labelled.append(gate.evaluate(atoms).decision == "reference")
    frac = float(np.mean(labelled[warm:]))
    t = gate.thresholds["forces_std_max"]
    print(f"q={q}: labelled {frac:.4f} (target {1 - q:.2f}), level now {t.level:.4f}, threshold {t.value():.4g}")
    assert abs(frac - (1 - q)) <= 0.02
    assert gate.n_reference_calls == sum(labelled)


def test_window_quantile_alone_lags_a_drift_and_the_level_update_corrects_it():
    """Without the level update (gamma=0) the window's quantile lags the rising spread and labels
    more than asked; the adaptive level brings it back (decide alone: 10 000 values)."""
    rng = np.random.default_rng(0)
    t = np.arange(10000)
    x = np.exp(np.log(0.05) + 1.5 * t / t.size - 0.8 * (t > t.size // 2) + 0.5 * rng.standard_normal(t.size))
    fractions = {}
    for gamma in (0.0, 0.005):
        th = parse_limits({"forces_std_max_eVA": f"q0.95:1e-4:100:gamma={gamma}"})
        fractions[gamma] = np.mean([not decide({"forces_std_max": v}, th).trusted for v in x][500:])
    print(fractions)
    assert fractions[0.0] > 0.055 and abs(fractions[0.005] - 0.05) < 0.003


def test_floor_ceiling_warmup_and_provenance():
    th = parse_limits(forces_std_max_eVA="q0.5:0.2:0.4:warmup=3:window=10")
    t = th["forces_std_max"]
    assert (t.quantile, t.floor, t.ceiling, t.warmup, t.window) == (0.5, 0.2, 0.4, 3, 10)
    d = decide({"forces_std_max": 0.25}, th)
    assert not d.trusted and d.provenance["threshold_forces_std_max"] == 0.2  # warm-up: the floor
    assert "warm-up (0/3 values)" in d.provenance["threshold_rule_forces_std_max"]
    assert "(adaptive)" in d.provenance["gate_reason"]
    for v in (0.01, 0.02, 0.03):
        decide({"forces_std_max": v}, th)
    d = decide({"forces_std_max": 0.15}, th)
    assert d.trusted and d.provenance["threshold_forces_std_max"] == 0.2  # median 0.025 -> floor
    assert "clipped to the floor" in d.provenance["threshold_rule_forces_std_max"]
    for v in (5.0,) * 10:
        decide({"forces_std_max": v}, th)
    d = decide({"forces_std_max": 0.45}, th)
    assert not d.trusted and d.provenance["threshold_forces_std_max"] == 0.4  # ceiling
    fixed = decide({"forces_std_max": 0.1}, parse_limits(forces_std_max_eVA=0.3))
    assert fixed.provenance["threshold_rule_forces_std_max"] == "fixed"
    assert "q0.5:0.2:0.4" in describe(th) and "eV/Å" in describe(th)


def test_units_forms_and_sharing():
    e = parse_limits(energy_std_per_atom_meV="q0.9:1:10")["energy_std_per_atom"]
    assert (e.floor, e.ceiling) == pytest.approx((1e-3, 1e-2))  # meV -> eV
    f = parse_limits({"forces_std_max": "q0.9:50 meV/A:0.5 eV/A"})["forces_std_max"]
    assert (f.floor, f.ceiling) == pytest.approx((0.05, 0.5))
    y = parse_limits({"forces_std_max_eVA": {"quantile": 0.95, "floor": 0.05, "ceiling": 0.5, "warmup": 5}})
    assert y["forces_std_max"].warmup == 5
    assert parse_limits({"forces_std_max": f})["forces_std_max"] is f  # one running distribution
    gate = harmonic_gate(f)
    assert gate.thresholds["forces_std_max"] is f
    assert cli_limit_value(" q0.9:0.1:1 ") == "q0.9:0.1:1" and cli_limit_value("0.3") == 0.3


@pytest.mark.parametrize("spec, exc, match", [
    ("q0.95", ConfigError, "needs a floor and a ceiling"),
    ("q0.95:0.05", ConfigError, "needs a floor and a ceiling"),
    ("q0.95:0.05:", ConfigError, "needs a floor and a ceiling"),
    ("q1.5:0.05:0.5", ConfigError, r"quantile .* must be in \(0, 1\)"),
    ("qx:0.05:0.5", ConfigError, "cannot read the quantile"),
    ("q0.9:0.5:0.05", ConfigError, "0 < floor <= ceiling"),
    ("q0.9:-1:0.5", UnitError, "must be > 0"),
    ("q0.9:0.05:0.5:bogus=1", ConfigError, "bad field"),
    ("q0.9:0.05:0.5:gamma=2", ConfigError, r"gamma .* \[0, 1\)"),
    ("q0.9:0.05:0.5:warmup=50:window=10", ConfigError, "warmup <= window"),
])
def test_bad_adaptive_thresholds(spec, exc, match):
    with pytest.raises(exc, match=match):
        parse_limits(forces_std_max_eVA=spec)


def test_caps_are_never_adaptive_and_stay_above_the_ceiling():
    with pytest.raises(ConfigError, match="hard cap is a fixed number"):
        parse_limits(forces_std_max_eVA="q0.9:0.05:0.5", what="hard cap")
    with pytest.raises(ConfigError, match="stop threshold is a fixed number"):  # committee-campaign's stop
        parse_limits(forces_std_max_eVA="q0.9:0.05:0.5", what="stop threshold")
    with pytest.raises(ConfigError, match="hard cap is a fixed number"):
        parse_limits({"forces_std_max": AdaptiveThreshold(0.9, 0.05, 0.5)}, what="hard cap")
    th = parse_limits(forces_std_max_eVA="q0.9:0.05:0.5")
    with pytest.raises(ConfigError, match="below the ceiling"):
        check_limits(th, {"forces_std_max": 0.4})
    check_limits(th, {"forces_std_max": 0.6})
    with pytest.raises(ValueError):  # argparse: "invalid float value: 'abc'"
        cli_limit_value("abc")
    assert cli_limit_value.__name__ == "float"


def test_threshold_scale_and_number_protocol():
    t = AdaptiveThreshold(0.9, 0.1, 1.0, warmup=1)
    t.observe(0.5)
    assert float(t) == 0.5 and f"{t:.2f}" == "0.50" and t * 2 == 1.0 and 0.4 < t < 0.6
    d = decide({"forces_std_max": 0.3}, {"forces_std_max": t}, threshold_scale=0.5)
    assert not d.trusted and d.provenance["threshold_forces_std_max"] == 0.25


@pytest.mark.skipif(not GATE_RECORDS_THRESHOLDS, reason="the gate does not yet pass Decision.provenance "
                    "to its labeller (gate.py change requested in the issue-19 report)")
def test_each_label_records_the_threshold_in_force_and_why(tmp_path):
    store = LabelStore(tmp_path / "labels.extxyz")
    gate = harmonic_gate("q0.9:1e-4:10:warmup=5", label_store=store)
    amp, rng = shifting_stream(60)
    for a in amp:
        gate.evaluate(Atoms("Cu4", positions=CENTRES + a * rng.standard_normal((4, 3))))
    frames = store.read()
    assert len(frames) == gate.n_labels > 0
    for f in frames:
        t = f.info["prov_threshold_forces_std_max"]
        assert 1e-4 <= t <= 10 and f.info["committee_forces_std_max"] > t
        assert "running distribution" in f.info["prov_threshold_rule_forces_std_max"]
        assert "forces_std_max" in f.info["prov_gate_reason"]
