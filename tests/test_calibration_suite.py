"""Issue 19, calibration suite: split-conformal and isotonic calibrators, their persistence and
application everywhere a spread is used, the committee-calibrate report and its refusals."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from committee_calc import load_committee
from committee_calc.calibration import check_not_training, fit_conformal, fit_isotonic, save_calibration
from committee_calc.calibration_maps import Calibrator, gaussian_z, parse_calibration
from committee_calc.calibration_metrics import coverage, miscalibration_area, nll
from committee_calc.calibration_report import SuiteSettings, run_suite, split_frames
from committee_calc.errors import CalibrationError, ConfigError
from committee_calc.gate import Gate
from test_bad_input import snapshot

EPS = (0.045, -0.02, 0.03, -0.005)  # PerturbedEMT member strengths (test_relax_members)


def synthetic(n=2000, seed=1):
    """Committee predictions with heteroscedastic errors of known law: raw spread σ (log-normal)
    and true error std 0.01 + 4 σ^1.5, not proportional to σ (one α cannot fix it)."""
    rng = np.random.default_rng(seed)
    sig = np.exp(rng.normal(np.log(0.05), 0.8, n))
    err = (0.01 + 4.0 * sig ** 1.5) * rng.standard_normal(n)
    y = rng.normal(0.0, 1.0, n)
    results = [{"energy": y[i] + err[i], "energy_std": sig[i], "forces": np.zeros((1, 3))} for i in range(n)]
    return results, [(y[i], None, None) for i in range(n)], err, sig


def test_synthetic_split_conformal_coverage_and_isotonic_beats_alpha():
    """Acceptance: 2000 frames, split-conformal at 95 % covers 95 ± 2 % of the held-out frames;
    isotonic recalibration has a smaller miscalibration area than the global α."""
    results, refs, err, sig = synthetic()
    report, fitted, _ = run_suite(results, refs, [1] * len(results), 8, SuiteSettings(quantities=("energy",)))
    rows = report["quantities"]["energy"]["methods"]
    assert report["quantities"]["energy"]["n_fit"] == 1000 and report["quantities"]["energy"]["n_test"] == 1000
    assert set(report["fit_frames"]).isdisjoint(report["test_frames"])
    print({m: (round(r["coverage_95"], 4), round(r["miscalibration_area"], 4), round(r["nll"], 3))
           for m, r in rows.items()})
    assert abs(rows["conformal"]["coverage_95"] - 0.95) <= 0.02
    assert rows["raw"]["coverage_95"] < 0.92  # the raw committee is over-confident here
    assert rows["isotonic"]["miscalibration_area"] < rows["alpha"]["miscalibration_area"]
    assert rows["isotonic"]["miscalibration_area"] < 0.5 * rows["raw"]["miscalibration_area"]
    assert rows["isotonic"]["nll"] < rows["raw"]["nll"]
    # the fitted maps are what the report judged: recompute coverage from the calibrators
    test = np.array(report["test_frames"])
    cal = fitted["conformal"]["energy"]
    assert cal.coverage == 0.95 and cal.alpha == pytest.approx(cal.quantile / gaussian_z(0.95))
    assert coverage(err[test], cal(sig[test]), gaussian_z(0.95)) == pytest.approx(rows["conformal"]["coverage_95"])


def test_metrics_on_a_calibrated_gaussian():
    rng = np.random.default_rng(3)
    s = rng.uniform(0.1, 2.0, 20000)
    e = s * rng.standard_normal(s.size)
    assert coverage(e, s, 1.0) == pytest.approx(0.6827, abs=0.01)
    assert coverage(e, s, gaussian_z(0.95)) == pytest.approx(0.95, abs=0.005)
    assert miscalibration_area(e, s) < 0.01 < miscalibration_area(e, 0.5 * s)
    assert nll(e, s) < nll(e, 0.5 * s) and nll(e, s) < nll(e, 2 * s)


def test_calibrator_maps_validation_and_yaml_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    s = rng.uniform(0.01, 0.2, 500)
    e = (0.02 + 2 * s ** 2) * rng.standard_normal(500)
    iso, conf = fit_isotonic(e, s, per_atom=True), fit_conformal(e, s, 0.9)
    assert np.all(np.diff(iso(np.linspace(0, 0.3, 50))) >= 0)          # monotone in σ
    assert iso(0.5) == pytest.approx(0.5 * iso.calibrated[-1] / iso.sigma[-1])  # proportional above
    assert iso(4 * 0.05, 4) == pytest.approx(4 * iso(0.05))             # per atom: acts on σ/N
    path = tmp_path / "c.yaml"
    path.write_text("members:\n  - {backend: ase, calculator: ase.calculators.emt.EMT}\n"
                    "  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {asap_cutoff: true}}\n"
                    "calibration: {energy: 1.5}\n")
    assert load_committee(path).calibration == {"energy": 1.5}  # the old form stays a float
    block = save_calibration(path, {"forces": conf, "energy": iso})
    assert block["energy"]["method"] == "isotonic" and block["forces"]["method"] == "conformal"
    again = parse_calibration(yaml.safe_load(path.read_text())["calibration"])
    assert again["forces"].alpha == pytest.approx(conf.alpha)
    np.testing.assert_allclose(again["energy"].calibrated, iso.calibrated, rtol=1e-7)
    with pytest.raises(CalibrationError, match="not one factor"):
        float(load_committee(path).calibration["energy"])
    for bad, match in [({"forces": {"method": "magic"}}, "unknown calibration method"),
                       ({"forces": {"method": "conformal", "coverage": 1.2, "quantile": 2}}, "> 0 and < 1"),
                       ({"forces": {"method": "conformal", "coverage": 0.9}}, "needs coverage and quantile"),
                       ({"forces": {"method": "isotonic", "sigma": [2, 1], "calibrated": [1, 2]}}, "ascend"),
                       ({"forces": {"method": "alpha", "alpha": 1, "extra": 2}}, "unknown keys")]:
        with pytest.raises(CalibrationError, match=match):
            parse_calibration(bad)
    with pytest.raises(CalibrationError, match="> 0 and < 1"):
        fit_conformal(e, s, 1.0)


def test_calibrated_spreads_reach_results_and_gate():
    """A conformal force map and an isotonic per-atom energy map act on every spread the committee
    reports, so the gate's measures are calibrated too; means are untouched."""
    from committee_calc.committee import CommitteeCalculator
    from test_relax_members import perturbed_members

    atoms = bulk("Cu", "fcc", a=3.5, cubic=True)
    atoms.rattle(0.1, seed=2)
    iso = Calibrator("isotonic", sigma=(0.0, 0.001, 0.01), calibrated=(0.002, 0.004, 0.03), per_atom=True)
    raw = Gate(CommitteeCalculator(perturbed_members())).evaluate(atoms)
    cal = {"forces": {"method": "conformal", "coverage": 0.95, "quantile": 3.0}, "energy": iso, "stress": 2.0}
    res = Gate(CommitteeCalculator(perturbed_members(), calibration=cal)).evaluate(atoms)
    a = 3.0 / gaussian_z(0.95)
    assert res.results["energy"] == raw.results["energy"]
    np.testing.assert_allclose(res.results["forces_std"], a * raw.results["forces_std"], rtol=1e-12)
    assert res.measures["forces_std_max"] == pytest.approx(a * raw.measures["forces_std_max"], rel=1e-12)
    np.testing.assert_allclose(res.results["stress_std"], 2 * raw.results["stress_std"], rtol=1e-12)
    n = len(atoms)
    assert res.results["energy_std"] == pytest.approx(n * iso(raw.results["energy_std"] / n), rel=1e-12)
    assert res.measures["energy_std_per_atom"] == pytest.approx(iso(raw.results["energy_std"] / n), rel=1e-12)


# ------------------------------------------------------------------------------- the driver
def _frames(n, seed, noise=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.55 + 0.1 * rng.random(), cubic=True).repeat((2, 1, 1))
        a.rattle(0.03 + 0.1 * rng.random(), seed=int(rng.integers(1e9)))
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy() + noise * len(a) * rng.standard_normal()
        a.arrays["REF_forces"] = a.get_forces() + noise * rng.standard_normal((len(a), 3))
        a.info["REF_stress"] = a.get_stress()
        a.calc = None
        out.append(a)
    return out


@pytest.fixture()
def calib_inputs(tmp_path):
    write(tmp_path / "train.extxyz", _frames(3, 0))
    write(tmp_path / "frames.extxyz", _frames(24, 1, noise=0.003))
    members = "".join(f"  - {{backend: ase, calculator: test_relax_members.PerturbedEMT, parameters: "
                      f"{{eps: {e}}}, name: p{i}}}\n" for i, e in enumerate(EPS))
    (tmp_path / "committee.yaml").write_text(f"members:\n{members}training: {{train_file: train.extxyz}}\n")
    (tmp_path / "ref.yaml").write_text("calculator: ase.calculators.emt.EMT\n")
    return tmp_path


def _run(argv):
    from drivers.calibrate import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # few energies: conformal level > 1
        return main([str(a) for a in argv])


def test_committee_calibrate_report_and_apply(calib_inputs, capsys):
    d = calib_inputs
    out = d / "out"
    rc = _run([d / "frames.extxyz", "--committee", d / "committee.yaml", "--out", out, "--apply", "conformal",
               "--coverage", "0.9", "--threshold-forces-std-max-eVA", "0.05"])
    assert rc == 0, capsys.readouterr().err
    for name in ("calibration_report.json", "calibration_report.csv", "calibration_report.md", "calibration.yaml",
                 "parity_forces.png", "calibration_curve_forces.png", "parity_energy.png", "state.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "calibration_report.json").read_text())
    assert set(rep["fit_frames"]).isdisjoint(rep["test_frames"]) and rep["n_frames"] == 24
    for q in ("energy", "forces", "stress"):
        rows = rep["quantities"][q]["methods"]
        assert set(rows) == {"raw", "alpha", "conformal", "isotonic"}
        for r in rows.values():
            assert 0 <= r["coverage_68"] <= r["coverage_95"] <= 1 and np.isfinite(r["nll"])
    assert rep["labelled_fraction"]["raw"]["gate"] >= 0 and "conformal" in rep["labelled_fraction"]
    committee = load_committee(d / "committee.yaml")
    cal = committee.calibrators["forces"]
    assert cal.method == "conformal" and cal.coverage == 0.9
    assert cal.quantile == pytest.approx(rep["quantities"]["forces"]["methods"]["conformal"]["calibrator"]["quantile"])
    # a second run reads the cached predictions and judges the stored calibration as "current"
    rc = _run([d / "frames.extxyz", "--committee", d / "committee.yaml", "--out", out, "--methods", "isotonic"])
    assert rc == 0
    rep = json.loads((out / "calibration_report.json").read_text())
    assert rep["quantities"]["forces"]["methods"]["current"]["calibrator"]["method"] == "conformal"


def test_unlabelled_frames_are_labelled_by_the_reference(calib_inputs):
    d = calib_inputs
    frames = _frames(6, 5)
    for a in frames:
        del a.info["REF_energy"], a.arrays["REF_forces"], a.info["REF_stress"]
    write(d / "bare.extxyz", frames)
    argv = [d / "bare.extxyz", "--committee", d / "committee.yaml", "--out", d / "out", "--no-plots"]
    assert _run(argv) == 2  # no reference energies and no --reference
    assert _run(argv + ["--reference", d / "ref.yaml"]) == 0
    rep = json.loads((d / "out" / "calibration_report.json").read_text())
    assert rep["n_reference_calls"] == 6 and (d / "out" / "labels.extxyz").is_file()
    assert _run(argv + ["--reference", d / "ref.yaml"]) == 0  # the store answers: no new call
    assert json.loads((d / "out" / "calibration_report.json").read_text())["n_reference_calls"] == 0


@pytest.mark.parametrize("extra, expected", [
    (["--coverage", "1.5"], r"coverage must be > 0 and < 1"),
    (["--coverage", "0"], r"coverage must be > 0 and < 1"),
    (["--fit-fraction", "1"], r"--fit-fraction\) must be > 0 and < 1"),
    (["--apply", "isotonic", "--methods", "alpha"], r"--apply isotonic is not among --methods"),
    (["--threshold-forces-std-max-eVA", "q0.95"], r"needs a floor and a ceiling"),
])
def test_bad_settings_refused_before_any_output(calib_inputs, capsys, extra, expected):
    import re

    d = calib_inputs
    before = snapshot(d)
    rc = _run([d / "frames.extxyz", "--committee", d / "committee.yaml", "--out", d / "out", *extra])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error:") and re.search(expected, last), last
    assert snapshot(d) == before


def test_calibration_frames_overlapping_the_training_set_are_refused(calib_inputs, capsys):
    from ase.io import read

    d = calib_inputs
    write(d / "mixed.extxyz", read(d / "frames.extxyz", ":5") + read(d / "train.extxyz", "1:2"))
    before = snapshot(d)
    rc = _run([d / "mixed.extxyz", "--committee", d / "committee.yaml", "--out", d / "out"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "CalibrationError" in last and "indices [5]" in last and "training set" in last, last
    assert snapshot(d) == before
    assert check_not_training(read(d / "frames.extxyz", ":"), d / "committee.yaml") == 3
    with pytest.raises(ConfigError, match="does not exist"):
        (d / "train.extxyz").unlink()
        check_not_training([], d / "committee.yaml")


def test_split_is_disjoint_seeded_and_refuses_one_frame():
    a, b = split_frames(10, 0.3, seed=4)
    assert len(a) == 3 and len(b) == 7 and set(a).isdisjoint(b)
    assert np.array_equal(split_frames(10, 0.3, seed=4)[0], a)
    with pytest.raises(CalibrationError, match="at least 2"):
        split_frames(1, 0.5)
