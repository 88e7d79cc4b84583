"""Campaign ``polish``: after a failed verification, steps on the committee surface corrected by
the reference's residual force (each step one reference call and label).

Reference: EMT (counted); committee: the pair-ridge committee of 8 rattled fcc Cu cells; a tight
verification target (0.005 eV/Å) that the committee minimum alone misses.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.io import write

import committee_calc.campaign.polish as polish_mod
from committee_calc.campaign import run_campaign
from committee_calc.labels import LabelStore
from committee_calc.train import train_committee
from helpers import emt_labelled, rattled_cu_cells

RIDGE = {"r_cut": 4.5, "n_basis": 8, "ridge": 1e-6}
SETTINGS = {"u_max": 1.0, "fmax": 0.02, "verify_fmax": 0.005, "max_rounds": 1,
            "optimizer": "BFGS"}
CALLS = {"n": 0}


class CountingEMT(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        CALLS["n"] += 1
        super().calculate(atoms, properties, system_changes)


_cells = rattled_cu_cells


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("polish")
    seed = _cells(8, 0, 0.02, 0.05)
    write(d / "seed.extxyz", emt_labelled(seed))
    committee = train_committee(d / "seed.extxyz", d / "committee", backend="ridge", n_members=4,
                                bootstrap=True, model_options=RIDGE)
    return committee, _cells(2, 1, 0.0, 0.08)


def _state_entries(out):
    state = json.loads((out / "campaign.json").read_text())
    return [e for rec in state["rounds"] for e in rec["labelled"].values() if "polished" in e]


def _labels(out):
    return LabelStore(out / "labels.extxyz").read()


def test_without_polish_the_tight_target_is_missed(setup, tmp_path):
    committee, cands = setup
    res = run_campaign(cands, committee, CountingEMT(), tmp_path / "run", **SETTINGS)
    assert res.status == "round_budget"
    assert all(r["status"] != "converged" and r["reference_fmax_eVA"] > 0.005 for r in res.candidates)


def test_polish_reaches_the_reference_minimum_and_labels_every_step(setup, tmp_path):
    committee, cands = setup
    CALLS["n"] = 0
    res = run_campaign(cands, committee, CountingEMT(), tmp_path / "run", polish=20, **SETTINGS)
    assert res.status == "finished"
    assert all(r["status"] == "converged" and r["reference_fmax_eVA"] <= 0.005 for r in res.candidates)
    assert all("polish" in r["reason"] for r in res.candidates)
    labels = _labels(tmp_path / "run")
    reasons = [f.info["prov_reason"] for f in labels]
    assert reasons.count("polish") >= 2 and len(labels) == CALLS["n"] == res.n_reference_calls
    # committee curvature + reference gradient: a couple of reference calls per candidate
    assert all(1 <= c["polish_steps"] <= 4 for c in _state_entries(tmp_path / "run"))
    state = json.loads((tmp_path / "run" / "campaign.json").read_text())
    for cid, c in state["candidates"].items():
        assert c["structure"].endswith(f"polished/{cid}.extxyz")
    # the final structure's reference force is what the summary reports (a fresh EMT call)
    from ase.io import read

    for a, row in zip(read(tmp_path / "run" / "final.extxyz", ":"), res.candidates):
        a.calc = EMT()
        assert np.linalg.norm(a.get_forces(), axis=1).max() == pytest.approx(row["reference_fmax_eVA"], abs=1e-6)


class Kill(BaseException):
    pass


def test_polish_killed_half_way_resumes_without_new_reference_calls(setup, tmp_path, monkeypatch):
    committee, cands = setup
    whole = run_campaign(cands, committee, CountingEMT(), tmp_path / "whole", polish=20, **SETTINGS)
    orig, n = polish_mod._stored, {"k": 0}

    def dying(*a, **kw):  # killed right after the 3rd polish label is stored
        n["k"] += 1
        if n["k"] == 3:
            raise Kill
        return orig(*a, **kw)

    monkeypatch.setattr(polish_mod, "_stored", dying)
    with pytest.raises(Kill):
        run_campaign(cands, committee, CountingEMT(), tmp_path / "run", polish=20, **SETTINGS)
    monkeypatch.setattr(polish_mod, "_stored", orig)
    n_before = len(_labels(tmp_path / "run"))
    CALLS["n"] = 0
    res = run_campaign(cands, committee, CountingEMT(), tmp_path / "run", polish=20, **SETTINGS)
    hashes = [f.info["label_hash"] for f in _labels(tmp_path / "run")]
    assert hashes == [f.info["label_hash"] for f in _labels(tmp_path / "whole")]
    assert len(set(hashes)) == len(hashes) and res.n_rounds == whole.n_rounds
    assert 0 < n_before < len(hashes) and CALLS["n"] == len(hashes) - n_before  # none computed twice
    assert [r["status"] for r in res.candidates] == [r["status"] for r in whole.candidates]


def test_a_collapsing_candidate_ends_exploded_without_a_label(setup, tmp_path):
    committee, cands = setup
    bad = cands[0].copy()
    bad.positions[1] = bad.positions[0] + [0.4, 0.0, 0.0]  # closer than the geometry guard
    res = run_campaign([cands[1], bad], committee, CountingEMT(), tmp_path / "run", ids=["ok", "bad"],
                       **{**SETTINGS, "max_rounds": 2})
    rows = {r["id"]: r for r in res.candidates}
    assert rows["bad"]["status"] == "exploded", rows["bad"]
    assert "exploded" in rows["bad"]["reason"]
    assert not [f for f in _labels(tmp_path / "run") if f.info.get("prov_candidate") == "bad"
                and f.info.get("prov_reason") != "probe"]


def test_committee_columns_describe_the_polished_structure(setup, tmp_path):
    committee, cands = setup
    res = run_campaign(cands, committee, CountingEMT(), tmp_path / "run", polish=20, **SETTINGS)
    from ase.io import read

    from committee_calc.config import load_committee

    calc = load_committee(committee)
    for a, row in zip(read(tmp_path / "run" / "final.extxyz", ":"), res.candidates):
        a.calc = calc
        assert row["energy_eV"] == pytest.approx(a.get_potential_energy(), abs=1e-6)
