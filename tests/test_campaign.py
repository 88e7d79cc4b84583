"""The active relaxation campaign (committee_calc.campaign, committee-campaign) on a tiny Cu system.

Reference: EMT (counted; a version that always fails); committee: the pair-ridge committee
trained by ``train_committee(backend="ridge")`` on 8 rattled fcc cells (an in-process trainer:
a fine-tune is a refit, seconds); candidates: 3 rattled 4-atom fcc cells.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import read, write

import committee_calc.campaign.stages as stages_mod
import committee_calc.campaign.training as training_mod
from committee_calc.campaign import run_campaign
from committee_calc.config import load_committee
from committee_calc.errors import ConfigError, ReferenceCalculationError
from committee_calc.labels import LabelStore
from committee_calc.structures import structure_hash
from committee_calc.train import fine_tune_committee, read_training, train_committee
from drivers.campaign import main as campaign_main
from helpers import emt_labelled, rattled_cu_cells

RIDGE = {"r_cut": 4.5, "n_basis": 8, "ridge": 1e-6}
SETTINGS = {"u_max": 0.05, "fmax": 0.02, "verify_fmax": 0.05, "max_rounds": 8}
CALLS = {"n": 0}


class CountingEMT(EMT):
    """EMT counting its calls over all copies (the reference deep-copies it per call)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        CALLS["n"] += 1
        super().calculate(atoms, properties, system_changes)


class AlwaysFails(Calculator):
    """A reference that fails on every call (importable: ``test_campaign.AlwaysFails``)."""

    implemented_properties = ("energy", "forces", "stress")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("SCF did not converge (this reference always fails)")


_cells = rattled_cu_cells


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("campaign")
    seed = _cells(8, 0, 0.02, 0.05)
    write(d / "seed.extxyz", emt_labelled(seed))
    committee = train_committee(d / "seed.extxyz", d / "committee", backend="ridge", n_members=4,
                                bootstrap=True, model_options=RIDGE)
    candidates = _cells(3, 1, 0.0, 0.12)
    write(d / "candidates.extxyz", candidates)
    return d, committee, candidates


def campaign(setup, out, reference=None, **kw):
    d, committee, candidates = setup
    return run_campaign(candidates, committee, reference or CountingEMT(), out, **{**SETTINGS, **kw})


def label_hashes(out) -> list:
    return [f.info["label_hash"] for f in LabelStore(out / "labels.extxyz").read()]


@pytest.fixture(scope="module")
def baseline(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    CALLS["n"] = 0
    res = campaign(setup, out)
    return out, res, CALLS["n"]


def test_campaign_converges_and_labels_only_stopped_structures(baseline):
    out, res, calls = baseline
    assert res.status == "finished" and 2 <= res.n_rounds <= 5
    assert [r["status"] for r in res.candidates] == ["converged"] * 3
    assert all(r["reference_fmax_eVA"] <= 0.05 for r in res.candidates)
    labels = LabelStore(out / "labels.extxyz").read()
    assert res.n_labels == len(labels) == calls == res.n_reference_calls  # one call per label
    hashes = [f.info["label_hash"] for f in labels]
    assert len(set(hashes)) == len(hashes)
    state = json.loads((out / "campaign.json").read_text())
    reasons = [f.info["prov_reason"] for f in labels]
    assert reasons[0] == "probe" and set(reasons[1:]) <= {"stop", "verify"} and "stop" in reasons
    for f in labels[1:]:  # each label is the structure where its candidate's round ended
        r, cid = f.info["prov_round"], f.info["prov_candidate"]
        row = state["rounds"][r]["results"][cid]
        assert row["outcome"] == ("stop" if f.info["prov_reason"] == "stop" else "converged")
        final = read(out / f"round_{r:03d}" / "relaxed" / f"{cid}.extxyz")
        assert structure_hash(final) == f.info["label_hash"]
    # stopped structures only: every stop label comes from a relaxation that ended uncertain
    assert {state["rounds"][f.info["prov_round"]]["results"][f.info["prov_candidate"]]["status"]
            for f in labels if f.info["prov_reason"] == "stop"} == {"uncertain"}
    # per-round committees: fine-tuned from the previous one, with held-out errors
    first = yaml.safe_load((out / "round_000" / "committee.yaml").read_text())
    held = first["training"]["heldout"]
    assert first["training"]["backend"] == "ridge" and held["n"] == held["before"]["n"]
    assert first["training"]["finetuned_from"].endswith("committee/committee.yaml")
    assert load_committee(out / "round_000" / "committee.yaml").n_members == 4
    assert [rec.get("retrained") for rec in state["rounds"]][:-1] == [
        f"round_{r:03d}/committee.yaml" for r in range(res.n_rounds - 1)]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["id"] for r in rows] == ["c0000", "c0001", "c0002"]
    assert sum(int(r["reference_calls"]) for r in rows) == calls
    assert len(read(out / "final.extxyz", ":")) == 3
    # a rerun of a finished campaign does nothing
    CALLS["n"] = 0
    again = run_campaign(read(out / "candidates.extxyz", ":"), res.committee, CountingEMT(), out,
                         **SETTINGS)
    assert CALLS["n"] == 0 and again.n_rounds == res.n_rounds and label_hashes(out) == hashes


class Kill(BaseException):
    """A simulated kill (like KeyboardInterrupt, not an error the campaign handles)."""


def _kill_relax(monkeypatch):
    orig, n = stages_mod.append_frame, {"frames": 0}

    def append_frame(path, frame):
        orig(path, frame)
        if "round_001" in str(path):
            n["frames"] += 1
            if n["frames"] == 3:
                raise Kill("killed while relaxing")
    monkeypatch.setattr(stages_mod, "append_frame", append_frame)


def _kill_label(monkeypatch):
    orig, fired = LabelStore.append, []

    def append(self, *args, **kw):
        index = orig(self, *args, **kw)  # the label is stored, the state not yet
        if (kw.get("provenance") or {}).get("round") == 1 and not fired:
            fired.append(index)
            raise Kill("killed while labelling")
        return index
    monkeypatch.setattr(LabelStore, "append", append)


def _kill_retrain(monkeypatch):
    orig, fired = training_mod.fine_tune_committee, []

    def fine_tune(init, train_file, work, **kw):
        out = orig(init, train_file, work, **kw)
        TRAININGS.append(str(work))
        if "round_000" in str(work) and not fired:
            fired.append(out)
            raise Kill("killed while retraining (after the models were written)")
        return out
    monkeypatch.setattr(training_mod, "fine_tune_committee", fine_tune)


TRAININGS: list = []
KILLS = {"relax": _kill_relax, "label": _kill_label, "retrain": _kill_retrain}
#: the round each kill happens in (the campaign retrains once, after round 0)
KILL_ROUND = {"relax": 1, "label": 1, "retrain": 0}


@pytest.mark.parametrize("stage", list(KILLS))
def test_kill_and_resume_at_each_stage(setup, baseline, tmp_path, monkeypatch, stage):
    base_out, base, base_calls = baseline
    out = tmp_path / "run"
    TRAININGS.clear()
    CALLS["n"] = 0
    with monkeypatch.context() as m:
        KILLS[stage](m)
        with pytest.raises(Kill):
            campaign(setup, out)
        state = json.loads((out / "campaign.json").read_text())
        assert state["round"] == KILL_ROUND[stage] and state["stage"] == stage
    if stage == "retrain":  # count the trainings of the resumed run too
        monkeypatch.setattr(training_mod, "fine_tune_committee",
                            lambda *a, _f=training_mod.fine_tune_committee, **k: TRAININGS.append(a[2]) or _f(*a, **k))
    res = campaign(setup, out)
    assert res.n_rounds == base.n_rounds and res.status == base.status
    assert [r["status"] for r in res.candidates] == [r["status"] for r in base.candidates]
    hashes = label_hashes(out)
    assert hashes == label_hashes(base_out) and len(set(hashes)) == len(hashes)
    assert CALLS["n"] == base_calls  # no label computed twice
    if stage == "retrain":  # no round trained twice
        assert len(TRAININGS) == len(set(TRAININGS)) == base.n_rounds - 1


def test_budgets_end_the_campaign_and_a_larger_budget_goes_on(setup, baseline, tmp_path):
    res = campaign(setup, tmp_path / "b", label_budget=3)
    assert res.status == "label_budget" and res.n_labels == 3
    assert {r["status"] for r in res.candidates} <= {"converged", "unfinished"}
    assert any("label budget" in r["reason"] for r in res.candidates if r["status"] == "unfinished")
    base_out, base, _ = baseline
    out = tmp_path / "r"
    first = campaign(setup, out, max_rounds=1)
    assert first.status == "round_budget" and first.n_rounds == 1
    assert {r["status"] for r in first.candidates} == {"unfinished"}
    more = campaign(setup, out)  # max_rounds 8: goes on, as if never stopped
    assert more.status == "finished" and more.n_rounds == base.n_rounds
    assert label_hashes(out) == label_hashes(base_out)


def test_bad_input_leaves_nothing(setup, tmp_path, capsys):
    d, committee, candidates = setup
    spec = yaml.safe_load(open(committee))
    del spec["training"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="no 'training:' section"):
        run_campaign(candidates, bare, EMT(), out)
    for budget in (0, -2):
        with pytest.raises(ConfigError, match="label_budget"):
            campaign(setup, out, label_budget=budget)
    with pytest.raises(ReferenceCalculationError, match="failed on the first 3 candidate"):
        campaign(setup, out, reference=AlwaysFails())
    assert not out.exists()
    good_ref = tmp_path / "emt.yaml"
    good_ref.write_text("calculator: ase.calculators.emt.EMT\n")
    bad_ref = tmp_path / "fails.yaml"
    bad_ref.write_text("calculator: test_campaign.AlwaysFails\n")
    base = [str(d / "candidates.extxyz"), "--out", str(out), "--u-max", "0.05"]
    for argv, message in (
            (["--committee", str(bare), "--reference", str(good_ref)], "no 'training:' section"),
            (["--committee", committee, "--reference", str(good_ref), "--label-budget", "0"], "--label-budget"),
            (["--committee", committee, "--reference", str(bad_ref)], "reference failed"),
            (["--committee", committee], "give --reference")):
        capsys.readouterr()
        try:
            rc = campaign_main(base + argv)
        except SystemExit as stop:  # refused by the parser: usage, then the error: line
            rc = stop.code
        assert rc == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("error:") and message in err, err
        # the probe's temporary folder is gone: the message must not point into it
        assert "committee_campaign_probe" not in err, err
        assert not out.exists()


def test_driver_prints_progress_lines_and_resumes(setup, tmp_path, capsys):
    d, committee, _ = setup
    ref = tmp_path / "emt.yaml"
    ref.write_text("calculator: ase.calculators.emt.EMT\n")
    out = tmp_path / "drv"
    argv = [str(d / "candidates.extxyz"), "--committee", committee, "--reference", str(ref),
            "--out", str(out), "--u-max", "0.05", "--fmax", "0.02", "--verify-fmax", "0.05"]
    assert campaign_main(argv) == 0
    text = capsys.readouterr().out
    assert "round 0: relaxing 3 candidates" in text and "round 1:" in text
    assert "campaign finished" in text and text.count(" converged ") >= 3
    n = len(label_hashes(out))
    assert campaign_main(argv) == 0 and "resuming" in capsys.readouterr().out
    assert len(label_hashes(out)) == n


def test_ridge_training_section_and_fine_tune(setup, tmp_path):
    d, committee, _ = setup
    t = read_training(committee)
    assert t["backend"] == "ridge" and [m["seed"] for m in t["members"]] == [1000, 1001, 1002, 1003]
    y = fine_tune_committee(committee, d / "seed.extxyz", tmp_path / "ft")
    spec = yaml.safe_load(open(y))
    assert [m["seed"] for m in spec["training"]["members"]] == [1001, 1002, 1003, 1004]
    assert spec["training"]["finetuned_from"] == str(d / "committee" / "committee.yaml")
    w0 = [m["parameters"]["weights"] for m in yaml.safe_load(open(committee))["members"]]
    w1 = [m["parameters"]["weights"] for m in spec["members"]]
    assert w0 != w1 and spec["calibration"]["energy"] > 0  # new subsets, own calibration
    a = read(d / "seed.extxyz")
    a.calc = load_committee(y)
    assert abs(a.get_potential_energy() - a.info["REF_energy"]) < 0.1
    # fine-tune settings ride along from fine-tune to fine-tune
    c2 = train_committee(d / "seed.extxyz", tmp_path / "c2", backend="ridge", n_members=2, bootstrap=True,
                         model_options=RIDGE, finetune_epochs=3, finetune_options={"ridge": 1e-3})
    t2 = yaml.safe_load(open(fine_tune_committee(c2, d / "seed.extxyz", tmp_path / "ft2")))["training"]
    assert t2["model_options"] == RIDGE and t2["finetune_options"] == {"ridge": 1e-3}
    assert t2["finetune_epochs"] == 3 and t2["max_epochs"] == 3


@pytest.mark.slow
def test_mace_campaign_round(tmp_path):
    """One campaign round with a tiny MACE committee: members fine-tuned from their weights."""
    pytest.importorskip("mace")
    from ase.calculators.lj import LennardJones

    from tiny_models import si_structures

    lj = LennardJones(sigma=2.1, epsilon=1.0, rc=4.0, smooth=True)
    seed = si_structures(12, seed=0)
    for a in seed:
        a.calc = lj
        a.info["REF_energy"], a.arrays["REF_forces"] = a.get_potential_energy(), a.get_forces()
        a.calc = None
    write(tmp_path / "seed.extxyz", seed)
    tiny = {"num_channels": 8, "max_L": 0, "r_max": 4.0, "num_interactions": 2, "correlation": 2,
            "num_radial_basis": 4, "MLP_irreps": "4x0e", "radial_MLP": "[8]", "batch_size": 4}
    committee = train_committee(tmp_path / "seed.extxyz", tmp_path / "c", backend="mace", n_members=2,
                                max_epochs=2, model_options=tiny, n_jobs=2, finetune_epochs=1)
    res = run_campaign(si_structures(2, seed=3), committee, lj, tmp_path / "run", u_max=0.01,
                       max_rounds=2, max_steps=20, n_jobs=2)
    assert res.n_rounds == 2
    spec = yaml.safe_load((tmp_path / "run" / "round_000" / "committee.yaml").read_text())
    assert [m["path"] for m in spec["members"]] == ["training/mace_0.model", "training/mace_1.model"]
    log = (tmp_path / "run" / "round_000" / "training" / "member_0" / "train.log").read_text()
    assert "Using foundation model" in log and spec["training"]["finetuned_from"] == committee
    assert load_committee(tmp_path / "run" / "round_000" / "committee.yaml").n_members == 2


def test_constraints_are_kept_across_rounds(setup, tmp_path):
    """The input's FixAtoms holds in every round (each round restarts from plain relaxed
    frames) and the reference check leaves the fixed atom's force out."""
    from ase.constraints import FixAtoms

    _, committee, candidates = setup
    a = candidates[1].copy()
    a.set_constraint(FixAtoms([0]))
    res = run_campaign([a], committee, EMT(), tmp_path / "fix", **SETTINGS)
    assert res.candidates[0]["status"] == "converged" and res.n_rounds >= 2
    final = read(tmp_path / "fix" / "final.extxyz")
    assert np.allclose(final.positions[0], a.positions[0], atol=1e-7)
    assert not np.allclose(final.positions[1:], a.positions[1:], atol=1e-3)
    from committee_calc.campaign.stages import reference_check

    two = bulk("Cu", "sc", 2.5) * (2, 1, 1)
    two.set_constraint(FixAtoms([0]))
    check = reference_check({"energy": -1.0, "forces": [[5.0, 0, 0], [0.01, 0, 0]]},
                            {"verify_fmax": 0.05, "cell": False}, two)
    assert check["fmax_eVA"] == pytest.approx(0.01) and check["verified"]


class FailsAfterFirst(EMT):
    """EMT that works for the probe only, then fails on every call."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        CALLS["n"] += 1
        if CALLS["n"] > 1:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


def test_reference_failing_during_the_campaign_ends_those_candidates(setup, tmp_path):
    CALLS["n"] = 0
    res = campaign(setup, tmp_path / "f", reference=FailsAfterFirst())
    assert res.status == "finished" and res.n_labels == 1  # the probe
    rows = res.candidates
    assert [r["status"] for r in rows] == ["reference_failed"] * 3
    assert "SCF did not converge" in rows[1]["reason"]
    # c0000 stops on its probed input structure (its label is the stored probe, no call) until
    # it relaxes without the U stop; its verification then fails like the others' labels
    assert [r["reference_calls"] for r in rows] == [2, 1, 1] and res.n_reference_calls == 4
    assert CALLS["n"] == 4
    assert len(list((tmp_path / "f" / "failed").iterdir())) == 3  # kept for inspection


def test_heldout_file_of_the_training_section(setup, tmp_path):
    """``training.heldout_file`` (relative to the YAML) is the held-out set: every label trains."""
    d, committee, candidates = setup
    spec = yaml.safe_load(open(committee))
    spec["training"]["heldout_file"] = "seed.extxyz"
    (d / "with_heldout.yaml").write_text(yaml.safe_dump(spec))
    res = run_campaign(candidates, d / "with_heldout.yaml", EMT(), tmp_path / "h", **{**SETTINGS, "max_rounds": 2})
    held = yaml.safe_load((tmp_path / "h" / "round_000" / "committee.yaml").read_text())["training"]["heldout"]
    assert held["n"] == 8 and held["source"] == str(d / "seed.extxyz")
    first_round = [f for f in LabelStore(tmp_path / "h" / "labels.extxyz").read() if f.info["prov_round"] <= 0]
    assert res.n_rounds == 2 and held["n_train_labels"] == len(first_round)


def test_threshold_stops_are_named_and_move_on_once_labelled(setup, tmp_path):
    """A --threshold-… stop is status ``threshold`` (not a hard cap) at the structure above it,
    which is labelled; the next round, stopped again right at that labelled (trained-on)
    structure, the candidate relaxes on without the uncertainty stops instead of stopping after
    0 steps round after round."""
    said = []
    res = campaign(setup, tmp_path / "t", u_max=1e6, thresholds={"forces_std_max": 1e-9}, max_rounds=2,
                   progress=said.append)
    state = json.loads((tmp_path / "t" / "campaign.json").read_text())
    first, second = (state["rounds"][r]["results"] for r in (0, 1))
    assert {row["status"] for row in first.values()} == {"threshold"}, first
    for row in first.values():
        assert row["steps"] == 0 and row["outcome"] == "stop" and not row["free"]
        assert row["reason"].startswith("committee uncertainty above the stop threshold: forces_std_max="), row
    assert not any("hard cap" in line or "hard_cap" in line for line in said), said
    assert sum("stopped on a stop threshold at a structure labelled in an earlier round" in s for s in said) == 3
    for row in second.values():  # moved on from the labelled structure, without the stops
        assert row["free"] and row["steps"] > 0 and row["status"] != "threshold", row
    assert res.n_rounds == 2


def test_hard_caps_end_a_candidate_unlabelled(setup, tmp_path):
    """--cap-…: above a hard cap the candidate ends ``unfinished`` without a label (too far from
    the training data to label), while --threshold-… stops and labels; the help says which."""
    from drivers.campaign import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--threshold-forces-std-max-eVA X stop and label above this" in text
    assert "--cap-forces-std-max-eVA X hard cap: stop instead of labelling above this" in text
    with pytest.raises(ConfigError, match="below its threshold"):
        campaign(setup, tmp_path / "bad", thresholds={"forces_std_max": 0.5}, caps={"forces_std_max": 0.1})
    assert not (tmp_path / "bad").exists()
    res = campaign(setup, tmp_path / "cap", thresholds={"forces_std_max": 1e-9}, caps={"forces_std_max": 1e-8})
    assert res.status == "finished" and res.n_rounds == 1 and res.n_labels == 1  # the probe only
    assert [r["status"] for r in res.candidates] == ["unfinished"] * 3
    assert all("hard cap" in r["reason"] for r in res.candidates), res.candidates
    state = json.loads((tmp_path / "cap" / "campaign.json").read_text())
    assert {row["outcome"] for row in state["rounds"][0]["results"].values()} == {"hard_cap"}
    assert {e["action"] for e in state["rounds"][0]["labelled"].values()} == {"hard_cap"}
    assert state["settings"]["caps"] == {"forces_std_max": 1e-8} and "caps" not in campaign_settings_of(setup)


def campaign_settings_of(setup) -> dict:
    """The settings of a campaign without caps (as stored by earlier versions: no ``caps`` key)."""
    from committee_calc.campaign.runner import campaign_settings

    return campaign_settings(0.05, None, 0.02, 200, 8, None, False, 0.0, "FIRE", False, 0.05, 0.1, None)


def test_candidate_ids_and_changed_settings():
    """Ids come from info candidate_id, candidate (as the relax tutorial and every relaxed frame
    name them), id or name; a changed setting is reported as its key old -> new only."""
    from committee_calc.relax.pool import candidate_ids, settings_change

    cells = _cells(3, 5, 0.0, 0.05)
    assert candidate_ids(cells) == ["c0000", "c0001", "c0002"]
    for k, a in enumerate(cells):
        a.info["name"], a.info["candidate"] = f"n{k}", f"c{k}"
    assert candidate_ids(cells) == ["c0", "c1", "c2"]
    cells[0].info["candidate_id"] = "x"  # not on every structure: the next key
    assert candidate_ids(cells) == ["c0", "c1", "c2"]
    assert settings_change({"fmax": 0.05, "max_steps": 200, "cell": False},
                           {"fmax": 0.02, "max_steps": 200, "cell": False, "polish": 3}) == \
        "fmax 0.05 -> 0.02, polish None -> 3"
