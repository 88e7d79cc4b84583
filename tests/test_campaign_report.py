"""The campaign's ranking report (summary.json/md, Kendall τ against a reference-only
relaxation) and its landscape figure, on a Cu polymorph pool (rattled fcc, bcc, hcp, simple cubic
cells at fixed cell) with EMT as the reference and a pair-ridge committee."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.optimize import BFGS
from scipy.stats import kendalltau

from committee_calc.campaign import run_campaign
from committee_calc.campaign.plots import plot_ranking_landscape
from committee_calc.campaign.report import ROW_KEYS, ranking_report, write_report
from committee_calc.train import train_committee

RIDGE = {"r_cut": 5.0, "n_basis": 10, "ridge": 1e-6}


def _pool():
    out = {"fcc": bulk("Cu", "fcc", 3.66, cubic=True), "bcc": bulk("Cu", "bcc", 2.93, cubic=True).repeat((2, 1, 1)),
           "hcp": bulk("Cu", "hcp", 2.60, c=4.3).repeat((1, 1, 2)), "sc": bulk("Cu", "sc", 2.45).repeat((2, 2, 1))}
    for i, (k, a) in enumerate(out.items()):
        a.rattle(0.05, seed=i)
        a.info["candidate_id"] = k
    return out


def _emt_only(atoms):
    a = atoms.copy()
    a.calc = EMT()
    opt = BFGS(a, logfile=None)
    opt.run(fmax=0.005, steps=300)
    return {"energy_per_atom_eV": a.get_potential_energy() / len(a), "reference_calls": opt.nsteps + 1,
            "volume_A3_atom": a.get_volume() / len(a)}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    seed = []
    for a in _pool().values():
        for eps in (-0.03, 0.0, 0.03):
            b = a.copy()
            b.set_cell(b.cell * (1 + eps), scale_atoms=True)
            b.rattle(0.03, seed=int(rng.integers(1e6)))
            b.calc = EMT()
            b.info = {"REF_energy": b.get_potential_energy()}
            b.arrays["REF_forces"] = b.get_forces()
            b.calc = None
            seed.append(b)
    write(d / "seed.extxyz", seed)
    committee = train_committee(d / "seed.extxyz", d / "committee", backend="ridge", n_members=4,
                                bootstrap=True, model_options=RIDGE)
    pool = _pool()
    res = run_campaign(list(pool.values()), committee, EMT(), d / "run", ids=list(pool), u_max=1.0, fmax=0.01,
                       verify_fmax=0.02, optimizer="BFGS",
                       max_rounds=3, polish=30)
    ref_only = {k: _emt_only(a) for k, a in pool.items()}
    return d, res, ref_only


def test_report_ranks_against_the_reference_only_relaxation(campaign):
    d, res, ref_only = campaign
    finals = read(d / "run" / "final.extxyz", ":")
    rep = ranking_report(res.candidates, finals, zero="fcc", ranked=["fcc", "bcc", "hcp", "sc"],
                         reference_only=ref_only)
    rows = {r["id"]: r for r in rep["candidates"]}
    assert set(rows["fcc"]) == set(ROW_KEYS)
    assert all(r["status"] == "converged" for r in rep["candidates"])
    assert rows["fcc"]["reference_meV_atom"] == pytest.approx(0.0, abs=1e-9)
    # the workflow energy of a verified candidate is the reference energy at its final structure
    for r, row in zip(rep["candidates"], res.candidates):
        assert r["workflow_meV_atom"] == pytest.approx(
            1e3 * (row["reference_energy_per_atom_eV"] - rows["fcc"]["reference_meV_atom"] / 1e3
                   - res.candidates[0]["reference_energy_per_atom_eV"]), abs=1e-6)
    wf = [rows[k]["workflow_meV_atom"] for k in rep["ranked"]]
    ro = [rows[k]["reference_only_meV_atom"] for k in rep["ranked"]]
    assert rep["kendall_tau"] == pytest.approx(kendalltau(wf, ro).statistic) == pytest.approx(1.0)
    assert sorted(r["rank_workflow"] for r in rep["candidates"]) == [1, 2, 3, 4]
    assert rep["lowest"] == "fcc"
    assert rep["reference_calls"] == res.n_reference_calls
    assert rep["reference_only_calls"] == sum(v["reference_calls"] for v in ref_only.values())
    js, md = write_report(d / "out", rep, title="Cu", extra={"note": "x"})
    data = json.loads(open(js).read())
    assert data["kendall_tau"] == pytest.approx(1.0) and data["note"] == "x"
    text = open(md).read()
    assert "Kendall τ = 1.00" in text and all(f"| {k} |" in text for k in rows)
    png = plot_ranking_landscape(rep, d / "out" / "landscape.png")
    from PIL import Image

    assert Image.open(png).size[0] > 600


def test_report_without_a_reference_only_run(campaign):
    d, res, _ = campaign
    rep = ranking_report(res.candidates, read(d / "run" / "final.extxyz", ":"), zero="fcc")
    assert rep["kendall_tau"] is None and rep["reference_only_calls"] is None
    assert all(r["reference_only_meV_atom"] is None for r in rep["candidates"])
