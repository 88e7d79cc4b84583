"""Issue 17 (relax, campaign, learn): refusals before any output, retries on rerun, one
energy surface in the ranking, counts of attempted reference calls."""
import csv
import logging

import pytest
import yaml
from ase.calculators.emt import EMT

from committee_calc import CommitteeCalculator
from committee_calc.committee import require_stress
from committee_calc.errors import ConfigError, MemberPropertyError
from committee_calc.gate import Gate
from committee_calc.relax.gated import GatedRelaxer, policy_thresholds
from committee_calc.relax.runner import one_surface
from test_relax_members import cu_pool, write_inputs


class NoStressEMT(EMT):
    """EMT that declares no stress (like the ridge committee's members)."""

    implemented_properties = ("energy", "free_energy", "forces")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _argv(tmp_path, *extra, labels=True):
    return [str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
            "--reference", str(tmp_path / "reference.yaml"), "--out", str(tmp_path / "out"),
            "--no-progress", *(["--labels", str(tmp_path / "labels.extxyz")] if labels else []), *extra]


def _refused(main, argv, capsys, text):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error:") and text in err, err


# ---------------------------------------------------------------- B9 stress
def _no_stress_committee(tmp_path):
    members = [{"backend": "ase", "calculator": "test_relax_issue17.NoStressEMT"} for _ in range(2)]
    (tmp_path / "committee.yaml").write_text(yaml.safe_dump({"members": members}))


def test_require_stress_names_the_members_and_the_option():
    com = CommitteeCalculator([NoStressEMT(), NoStressEMT()])
    require_stress(com, False, "--cell")  # not needed: nothing to check
    with pytest.raises(MemberPropertyError, match="--cell changes the cell.*member0"):
        require_stress(com, True, "--cell")
    with pytest.raises(MemberPropertyError, match="stress"):
        require_stress(Gate(com), True, "--cell")  # through a gate too
    with pytest.raises(MemberPropertyError, match="NoStressEMT"):
        require_stress(NoStressEMT(), True, "--cell")  # a plain calculator
    require_stress(CommitteeCalculator([EMT(), EMT()]), True, "--cell")
    with pytest.raises(MemberPropertyError, match="stress=False"):
        require_stress(CommitteeCalculator([EMT(), EMT()], stress=False), True, "--cell")
    with pytest.raises(MemberPropertyError, match="cell relaxation"):
        GatedRelaxer(Gate(com), cell=True)


def test_relax_cell_without_stress_is_refused_before_any_output(tmp_path, capsys):
    from drivers.relax import main

    write_inputs(tmp_path, n=2)
    _no_stress_committee(tmp_path)
    _refused(main, _argv(tmp_path, "--cell", "--threshold-forces-std-max-eVA", "0.2"), capsys, "stress")
    assert not (tmp_path / "out").exists() and not (tmp_path / "labels.extxyz").exists()
    assert main(_argv(tmp_path, labels=False)) == 0  # without --cell the same committee relaxes


@pytest.mark.parametrize("driver", ["md", "qha", "campaign"])
def test_cell_changing_runs_without_stress_are_refused_before_any_output(driver, tmp_path, capsys):
    write_inputs(tmp_path, n=1)
    _no_stress_committee(tmp_path)
    structure = str(tmp_path / "candidates.extxyz")
    out = str(tmp_path / "out")
    if driver == "md":
        from drivers.npt_md import main
        argv = [structure, "--committee", str(tmp_path / "committee.yaml"), "--out", out,
                "--ensemble", "mtk_iso", "--steps", "2", "--temperature-K", "100"]
        what = "--ensemble mtk_iso"
    elif driver == "qha":
        from drivers.qha import main
        argv = [structure, "--committee", str(tmp_path / "committee.yaml"), "--out", out,
                "--pressures-GPa", "0", "1", "2", "3", "4"]
        what = "--pressures-GPa"
    else:
        from drivers.campaign import main
        argv = [structure, "--committee", str(tmp_path / "committee.yaml"), "--reference",
                str(tmp_path / "reference.yaml"), "--out", out, "--cell"]
        what = "--cell"
    _refused(main, argv, capsys, what)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- B12, C14 options up front
@pytest.mark.parametrize("extra,text", [
    (["--cluster", "--cluster-eps", "0"], "--cluster-eps"),
    (["--cluster", "--cluster-eps", "-1"], "--cluster-eps"),
    (["--policy", "fallback", "--u-max", "0.2"], "--policy fallback"),
    (["--policy", "stop", "--u-max", "nan"], "--u-max"),
    (["--policy", "stop", "--u-max", "-5"], "--u-max"),
])
def test_relax_options_are_refused_before_relaxing(extra, text, tmp_path, capsys):
    from drivers.relax import main

    write_inputs(tmp_path, n=2)
    _refused(main, _argv(tmp_path, *extra, labels=False), capsys, text)
    assert not (tmp_path / "out").exists()


def test_u_max_under_fallback_and_bad_u_max_are_refused_in_the_library():
    with pytest.raises(ConfigError, match="fallback"):
        policy_thresholds("fallback", {}, u_max=0.2)
    for bad in (float("nan"), -5.0, 0.0, float("inf")):
        with pytest.raises(ConfigError, match="u-max"):
            policy_thresholds("stop", {}, u_max=bad)
    assert policy_thresholds("stop", {}, u_max=0.2) == ({}, 0.2)


# ---------------------------------------------------------------- D17, D18 reference failures
def test_failed_candidates_are_retried_once_the_reference_works(tmp_path, capsys, caplog):
    from drivers.relax import main

    write_inputs(tmp_path, n=2)
    good = (tmp_path / "reference.yaml").read_text()
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump({"calculator": "test_relax_members.FailingEMT"}))
    argv = _argv(tmp_path, "--threshold-forces-std-max-eVA", "0.001")
    with caplog.at_level(logging.INFO, logger="committee_calc"):
        assert main(argv) == 2
    out = capsys.readouterr().out
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["reference_failed"] * 2
    # attempted calls are counted (the failed one too), and the summary line says so
    assert all(int(r["reference_calls"]) >= 1 for r in rows)
    assert "reference calls 0 " not in out and "reference calls 2 " in out
    assert all(r["verified"] == "not verified" for r in rows)
    # each failure is logged once
    for cid in ("cu00", "cu01"):
        assert sum(cid in rec.getMessage() and "SCF did not converge" in rec.getMessage()
                   for rec in caplog.records) == 1, caplog.text
    (tmp_path / "reference.yaml").write_text(good)
    assert main(argv) == 0  # the rerun retries them with the working reference
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [r["id"] for r in rows] == ["cu00", "cu01"]  # one row per candidate
    assert {r["status"] for r in rows} <= {"converged", "unverified"}
    assert "nothing to do" not in capsys.readouterr().out


def test_campaign_probe_failure_does_not_name_the_deleted_folder(tmp_path):
    from committee_calc.campaign.io import probe_reference
    from committee_calc.errors import ReferenceCalculationError
    from test_relax_members import FailingEMT

    with pytest.raises(ReferenceCalculationError) as exc:
        probe_reference(FailingEMT(), cu_pool(2), ["a", "b"], tmp_path / "c" / "labels.extxyz")
    assert "committee_campaign_probe" not in str(exc.value) and "not kept" in str(exc.value)
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- F25 larger --max-steps
def test_rerun_with_more_steps_continues_max_steps_candidates(tmp_path, capsys):
    from drivers.relax import main

    write_inputs(tmp_path, n=2)
    argv = _argv(tmp_path, labels=False)
    assert main(argv + ["--max-steps", "2", "--stall-steps", "0"]) == 0
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [(r["status"], r["steps"]) for r in rows] == [("max_steps", "2")] * 2
    assert all(r["verified"] == "not verified" for r in rows)  # not empty
    assert main(argv + ["--max-steps", "2", "--stall-steps", "0"]) == 0  # same budget: nothing to do
    assert [r["steps"] for r in _rows(tmp_path / "out" / "summary.csv")] == ["2", "2"]
    assert main(argv + ["--max-steps", "500", "--stall-steps", "0"]) == 0
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [r["id"] for r in rows] == ["cu00", "cu01"]
    assert all(r["status"] == "converged" and int(r["steps"]) > 2 for r in rows), rows


# ---------------------------------------------------------------- E22 one energy surface
def test_ranking_uses_one_energy_surface():
    rows = [{"id": "a", "natoms": "2", "energy_per_atom_eV": "-5.0", "committee_energy_eV": "-2.0",
             "reference_energy_eV": "-10.0"},
            {"id": "b", "natoms": "2", "energy_per_atom_eV": "-1.1", "committee_energy_eV": "-2.2",
             "reference_energy_eV": ""}]
    ranked, surface = one_surface(rows)
    assert surface == "committee" and [r["energy_per_atom_eV"] for r in ranked] == [-1.0, -1.1]
    assert rows[0]["energy_per_atom_eV"] == "-5.0"  # copies
    rows[1]["reference_energy_eV"] = "-9.0"
    ranked, surface = one_surface(rows)
    assert surface == "reference" and [r["energy_per_atom_eV"] for r in ranked] == [-5.0, -4.5]


def test_clusters_csv_names_its_surface_and_verification(tmp_path):
    from drivers.relax import main

    write_inputs(tmp_path, n=3)
    assert main(_argv(tmp_path, "--threshold-forces-std-max-eVA", "0.2", "--cluster")) == 0
    clusters = _rows(tmp_path / "out" / "clusters.csv")
    summary = {r["id"]: r for r in _rows(tmp_path / "out" / "summary.csv")}
    assert clusters and {c["energy_surface"] for c in clusters} <= {"reference", "committee"}
    assert all(c["verified"] in ("yes", "no", "not verified") for c in clusters)
    for c in clusters:
        r = summary[c["id"]]
        key = "reference_energy_eV" if c["energy_surface"] == "reference" else "committee_energy_eV"
        assert float(c["energy_per_atom_eV"]) == pytest.approx(float(r[key]) / int(r["natoms"]))


# ---------------------------------------------------------------- F26 hard cap names the option
def test_relax_hard_cap_names_the_option(tmp_path, capsys):
    from drivers.relax import main

    write_inputs(tmp_path, n=1)
    assert main(_argv(tmp_path, "--cap-forces-std-max-eVA", "1e-9", labels=False)) == 0
    out = capsys.readouterr().out
    assert "hard cap" in out and "--cap-forces-std-max-eVA" in out


# ---------------------------------------------------------------- B11 committee-learn
@pytest.mark.parametrize("extra,text", [(["--backend", "nosuch"], "--backend"),
                                        (["--n-members", "1"], "n-members")])
def test_learn_refuses_bad_trainer_options_before_any_reference_call(extra, text, tmp_path, capsys):
    from ase.io import write

    from drivers.active_learn import main
    from test_active import synthetic_landscape

    images = synthetic_landscape(n=12)
    write(tmp_path / "land.extxyz", images, format="extxyz")
    (tmp_path / "ref.yaml").write_text("calculator: test_relax_members.FailingEMT\n")
    argv = [str(tmp_path / "land.extxyz"), "--reference", str(tmp_path / "ref.yaml"),
            "--out", str(tmp_path / "al"), "--molecules", "none", "--threshold-mev-atom", "1.0",
            "--no-progress", *extra]
    try:
        rc = main(argv)
    except SystemExit as stop:  # refused by the parser
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2 and text in err and "SCF" not in err, err
    assert not (tmp_path / "al").exists()


def test_learner_refuses_bad_sizes_before_writing(tmp_path):
    from committee_calc.active.learner import ActiveLearner
    from committee_calc.active.trainers import make_trainer
    from test_active import make_landscape, synthetic_landscape

    with pytest.raises(ConfigError, match="backend"):
        make_trainer("nosuch", ["Cu"], 4, None)
    ls = make_landscape(synthetic_landscape(n=12), molecules=None)
    for kw in ({"initial_size": -1}, {"initial_size": 0}, {"max_train_size": 0},
               {"max_iterations": -1}):
        with pytest.raises(ConfigError):
            ActiveLearner(ls, EMT(), None, tmp_path / "al", **kw)
    assert not (tmp_path / "al").exists()
