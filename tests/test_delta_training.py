"""Δ-learning committees trained, fine-tuned and used by the campaign (train_committee(baseline=...)).

Reference: EMT on rattled/strained Cu cells; baseline: a Lennard-Jones potential (a deliberately
poor but smooth "foundation" model); correction members: the pair-ridge committee (in-process,
seconds).  The same path serves a CHGNet baseline (``{backend: chgnet}``) for the Si demo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.io import read, write

from committee_calc.campaign import run_campaign
from committee_calc.config import load_committee
from committee_calc.delta import DeltaCalculator
from committee_calc.errors import ConfigError
from committee_calc.train import fine_tune_committee, train_committee
from helpers import rattled_cu_cells

RIDGE = {"r_cut": 4.5, "n_basis": 8, "ridge": 1e-6}
LJ = {"calculator": "ase.calculators.lj.LennardJones",
      "parameters": {"sigma": 2.3, "epsilon": 0.4, "rc": 4.5, "smooth": True}}


_cells = rattled_cu_cells


def _labelled(frames):
    for a in frames:
        a.calc = EMT()
        a.info["REF_energy"], a.arrays["REF_forces"] = a.get_potential_energy(), a.get_forces()
        a.info["REF_stress"] = a.get_stress()
        a.calc = None
    return frames


def _errors(calc, frames):
    de, df = [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        de.append((b.get_potential_energy() - a.info["REF_energy"]) / len(a))
        df.append(np.abs(b.get_forces() - a.arrays["REF_forces"]).max())
    return float(np.sqrt(np.mean(np.square(de)))), float(np.max(df))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("delta")
    write(d / "seed.extxyz", _labelled(_cells(12, 0, 0.03, 0.08)))
    path = train_committee(d / "seed.extxyz", d / "committee", backend="ridge", n_members=4,
                           bootstrap=True, model_options=RIDGE, baseline=LJ)
    return d, path


def test_delta_committee_learns_reference_minus_baseline(trained):
    d, path = trained
    spec = yaml.safe_load(open(path))
    assert spec["baseline"] == LJ
    # the training file of record keeps the reference labels; the Δ file holds REF - BASE
    assert spec["training"]["train_file"] == str((d / "seed.extxyz").resolve())
    delta = read(d / "committee" / "train_delta.extxyz", ":")
    ref = read(d / "seed.extxyz", ":")
    lj = LennardJones(**LJ["parameters"])
    for a, r in zip(delta[:3], ref[:3]):
        b = r.copy()
        b.calc = lj
        assert a.info["REF_energy"] == pytest.approx(r.info["REF_energy"] - b.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(a.arrays["REF_forces"], r.arrays["REF_forces"] - b.get_forces(), atol=1e-9)
        np.testing.assert_allclose(a.info["REF_stress"], r.info["REF_stress"] - b.get_stress(), atol=1e-9)
    committee = load_committee(path)
    assert isinstance(committee, DeltaCalculator)
    test = _labelled(_cells(6, 5, 0.03, 0.08))
    e_delta, f_delta = _errors(committee, test)
    e_base, f_base = _errors(LennardJones(**LJ["parameters"]), test)
    assert e_delta < 0.2 * e_base and f_delta < 0.5 * f_base
    # the correction committee's spread and the baseline values are in the results
    a = test[0].copy()
    a.calc = committee
    a.get_potential_energy()
    assert committee.results["energy_std"] > 0 and "baseline_energy" in committee.results


def test_delta_predict_equals_the_calculator(trained):
    d, path = trained
    committee = load_committee(path)
    frames = _cells(3, 7, 0.03, 0.1)
    many = committee.predict(frames)
    for a, r in zip(frames, many):
        b = a.copy()
        b.calc = committee
        assert r["energy"] == pytest.approx(b.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(r["forces"], b.get_forces(), atol=1e-10)
        assert r["energy_std"] == pytest.approx(committee.results["energy_std"], abs=1e-12)
        assert r["baseline_energy"] == pytest.approx(committee.results["baseline_energy"], abs=1e-12)


def test_fine_tune_keeps_the_baseline_and_refits_the_correction(trained, tmp_path):
    d, path = trained
    more = _labelled(_cells(6, 9, 0.05, 0.1))
    write(tmp_path / "more.extxyz", read(d / "seed.extxyz", ":") + more)
    out = fine_tune_committee(path, tmp_path / "more.extxyz", tmp_path / "ft")
    spec = yaml.safe_load(open(out))
    assert spec["baseline"] == LJ and spec["training"]["finetuned_from"] == str(Path(path).resolve())
    tuned = load_committee(out)
    assert isinstance(tuned, DeltaCalculator)
    e_before, _ = _errors(load_committee(path), more)
    e_after, _ = _errors(tuned, more)
    assert e_after < e_before


def test_campaign_round_with_a_delta_committee(trained, tmp_path):
    d, path = trained
    candidates = _cells(2, 1, 0.0, 0.12)
    res = run_campaign(candidates, path, EMT(), tmp_path / "run", u_max=0.01, fmax=0.02,
                       verify_fmax=0.05, max_rounds=6)
    assert res.n_rounds >= 2 and res.n_labels >= 2  # at least one retraining of the Δ committee
    assert all(r["status"] == "converged" and r["reference_fmax_eVA"] <= 0.05 for r in res.candidates)
    first = yaml.safe_load((tmp_path / "run" / "round_000" / "committee.yaml").read_text())
    assert first["baseline"] == LJ
    assert isinstance(load_committee(tmp_path / "run" / "round_000" / "committee.yaml"), DeltaCalculator)


def test_bad_baseline_is_a_config_error(tmp_path):
    write(tmp_path / "seed.extxyz", _labelled(_cells(3, 0, 0.03, 0.08)))
    with pytest.raises(ConfigError, match="baseline"):
        train_committee(tmp_path / "seed.extxyz", tmp_path / "c", backend="ridge", n_members=2,
                        model_options=RIDGE, baseline="lj")
