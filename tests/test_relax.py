"""Gated relaxation: policies, pool accuracy/cost, resume, kill/restart, bad input."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.io import read
from ase.optimize import FIRE

from committee_calc import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.relax.gated import GatedRelaxer
from test_relax_members import MEMBER_EPS, Harmonic, PerturbedEMT, cu_pool, perturbed_members, write_inputs

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = ["--threshold-energy-std-per-atom-meV", "4", "--threshold-forces-std-max-eVA", "0.2"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _driver(tmp_path, *extra, out="out"):
    from drivers.relax import main

    return main([str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
                 "--reference", str(tmp_path / "reference.yaml"), "--labels",
                 str(tmp_path / "labels.extxyz"), "--out", str(tmp_path / out), "--no-progress",
                 *THRESHOLDS, *extra])


# ---------------------------------------------------------------- stop policy (Hessmann)
def _harmonic_committee():
    centres = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0.3]], float)
    shifts = [[0.04, 0, 0], [-0.03, 0.02, 0], [0, -0.03, 0.01], [-0.01, 0.01, -0.01]]
    members = [Harmonic(centres, s, k=2.0) for s in shifts]
    start = Atoms("Ar3", positions=centres + np.array([[0.6, -0.4, 0.2], [-0.3, 0.5, 0.1], [0.2, 0.2, -0.5]]))
    return members, start


def _u_independent(members, atoms):
    """U = max_i ‖σ_F,i‖ / max_i ‖F̄_i‖, recomputed from the members with numpy."""
    F = []
    for m in members:
        a = atoms.copy()
        a.calc = m
        F.append(a.get_forces())
    F = np.array(F)  # (M, N, 3)
    sigma_atom = np.sqrt((np.std(F, axis=0, ddof=1) ** 2).sum(axis=1))
    return sigma_atom.max() / np.linalg.norm(F.mean(axis=0), axis=1).max()


def test_stop_policy_is_the_relative_force_uncertainty_criterion():
    members, start = _harmonic_committee()
    u_max = 0.3
    res = GatedRelaxer(Gate(CommitteeCalculator(members)), policy="stop", u_max=u_max, fmax=1e-4,
                       optimizer="FIRE").relax(start)
    assert res.status == "uncertain"
    u = [_u_independent(members, f) for f in res.trajectory]
    assert all(x <= u_max for x in u[:-1]) and u[-1] > u_max
    assert res.force_uncertainty_relative == pytest.approx(u[-1], rel=1e-10)
    assert [f.info["committee_force_uncertainty_relative"] for f in res.trajectory] == \
        pytest.approx(u, rel=1e-10)
    assert res.n_reference_calls == 0 and res.steps == len(res.trajectory) - 1
    # strictly "exceeds": with U_max equal to the value that fired, the same path goes on
    res2 = GatedRelaxer(Gate(CommitteeCalculator(members)), policy="stop", u_max=u[-1], fmax=1e-4,
                        optimizer="FIRE").relax(start)
    assert res2.steps > res.steps
    np.testing.assert_allclose(res2.trajectory[res.steps].positions, res.atoms.positions)
    assert start.calc is None  # the user's atoms are left alone


def test_policy_validation():
    members, _ = _harmonic_committee()
    with pytest.raises(ConfigError, match="u_max"):
        GatedRelaxer(Gate(CommitteeCalculator(members)), policy="stop")
    with pytest.raises(ConfigError, match="policy"):
        GatedRelaxer(Gate(CommitteeCalculator(members)), policy="sometimes")
    with pytest.raises(ConfigError, match="reference"):
        GatedRelaxer(Gate(CommitteeCalculator(members)), policy="stop_and_label", u_max=0.1)


def test_stop_and_label_labels_the_last_structure_and_cell_relaxation(tmp_path):
    from committee_calc.labels import LabelStore

    store = LabelStore(tmp_path / "labels.extxyz")
    gate = Gate(CommitteeCalculator([PerturbedEMT(e) for e in MEMBER_EPS]), EMT(),
                thresholds={"force_uncertainty_relative": 0.05}, label_store=store)
    atoms = cu_pool(3)[2]
    res = GatedRelaxer(gate, policy="stop_and_label", u_max=0.05, fmax=0.01, cell=True).relax(atoms)
    assert res.status == "uncertain" and res.n_labels == 1 == len(store)
    np.testing.assert_allclose(store.read()[0].positions, res.atoms.positions, atol=1e-6)
    assert res.force_uncertainty_relative > 0.05
    # fallback with a cell filter converges the stress too; the committee's stress at its minimum
    # is 0.2 GPa off the reference's: verified only after polishing
    gate = Gate(CommitteeCalculator([PerturbedEMT(e) for e in MEMBER_EPS]), EMT(),
                thresholds={"forces_std_max": 0.2})
    res = GatedRelaxer(gate, fmax=0.02, cell=True, polish=20).relax(atoms)
    assert res.status == "converged" and res.verified and res.n_polish_steps > 0
    assert np.abs(res.atoms.get_stress()).max() * res.atoms.get_volume() < 0.05
    assert res.reference_stress_GPa <= 0.1 and res.reference_fmax < 0.02


def test_relaxer_takes_exactly_one_evaluator_a_gate():
    members, start = _harmonic_committee()
    for not_a_gate in (CommitteeCalculator(members), EMT(), None):
        with pytest.raises(ConfigError, match=r"Gate\(committee\)"):
            GatedRelaxer(not_a_gate, policy="stop", u_max=0.3)
    # a Gate over a plain calculator has no spread: the stop policies say so clearly
    with pytest.raises(ConfigError, match="relative force uncertainty"):
        GatedRelaxer(Gate(Harmonic(members[0].centres, [0, 0, 0])), policy="stop",
                     u_max=0.3).relax(start)


def test_hard_cap_ends_the_relaxation_and_counts_the_call():
    members, start = _harmonic_committee()
    gate = Gate(CommitteeCalculator(members), hard_cap={"forces_std_max": 1e-3})
    res = GatedRelaxer(gate, fmax=1e-3).relax(start)
    assert res.status == "hard_cap" and res.atoms is None and "hard cap" in res.reason
    assert res.n_committee_calls == 1 == gate.n_committee_calls and res.n_reference_calls == 0


def test_policy_thresholds_are_explicit_and_pure():
    from committee_calc.relax.gated import policy_thresholds

    given = {"forces_std_max": 0.2, "force_uncertainty_relative": 0.3}
    assert policy_thresholds("fallback", given) == (given, 0.3)
    assert policy_thresholds("stop", given) == ({"forces_std_max": 0.2}, 0.3)
    assert policy_thresholds("stop", {"force_uncertainty_relative": 0.3}) == ({}, 0.3)
    assert policy_thresholds("stop_and_label", {"forces_std_max": 0.2}, u_max=0.1) == (
        {"forces_std_max": 0.2, "force_uncertainty_relative": 0.1}, 0.1)
    assert policy_thresholds("stop_and_label", given, u_max=0.3) == (given, 0.3)  # the same value twice
    assert given == {"forces_std_max": 0.2, "force_uncertainty_relative": 0.3}  # not modified
    with pytest.raises(ConfigError, match="U_max"):
        policy_thresholds("stop_and_label", {"forces_std_max": 0.2})
    # no thresholds: a plain committee relaxation (README: omit --reference for committee-only)
    assert policy_thresholds("fallback", {}) == ({}, None)
    with pytest.raises(ConfigError, match="given twice"):
        policy_thresholds("stop", {"force_uncertainty_relative": 0.3}, u_max=0.2)


@pytest.mark.parametrize("policy,extra", [
    ("stop_and_label", ["--u-max", "0.1"]),
    ("stop", ["--threshold-force-uncertainty-relative", "0.3"]),
    ("stop", ["--u-max", "0.3", "--threshold-forces-std-max-eVA", "0.2"]),
    ("fallback", ["--threshold-forces-std-max-eVA", "0.2"]),
])
def test_driver_builds_the_policy_gate_without_mutating_args(tmp_path, policy, extra):
    from drivers.relax import build_parser, make_relaxer

    write_inputs(tmp_path, n=1)
    args = build_parser().parse_args([
        str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
        "--reference", str(tmp_path / "reference.yaml"), "--labels", str(tmp_path / "labels.extxyz"),
        "--out", str(tmp_path / "out"), "--policy", policy, *extra])
    committee = CommitteeCalculator(perturbed_members())
    before = dict(vars(args))
    gates = [make_relaxer(args, committee).gate for _ in range(2)]
    assert vars(args) == before
    th = {"stop_and_label": {"force_uncertainty_relative": 0.1},
          "stop": {"forces_std_max": 0.2} if "--threshold-forces-std-max-eVA" in extra else {},
          "fallback": {"forces_std_max": 0.2}}[policy]
    for gate in gates:
        assert isinstance(gate, Gate) and gate.thresholds == pytest.approx(th)
        # the options' reference, label store and caps reach every policy's gate; without
        # thresholds (policy stop) the committee answers every step (no fallback)
        assert gate.reference is not None and gate.label_store is not None
    assert not (tmp_path / "out").exists() and not (tmp_path / "labels.extxyz").exists()


def test_stop_and_label_labels_through_the_gate_once(tmp_path):
    """No threshold on U in the gate: the stop policy labels via gate.label; a rerun of the
    same path finds the label in the store and pays no reference call."""
    from committee_calc.labels import LabelStore

    store = LabelStore(tmp_path / "labels.extxyz")
    gate = Gate(CommitteeCalculator(perturbed_members()), EMT(), label_store=store)
    atoms = cu_pool(3)[2]
    relaxer = GatedRelaxer(gate, policy="stop_and_label", u_max=0.05, fmax=0.01)
    res = relaxer.relax(atoms, info={"candidate": "c2"})
    assert res.status == "uncertain" and res.decision == "committee"
    assert res.n_reference_calls == 1 == res.n_labels == len(store) == gate.n_labels
    label = store.read()[0]
    np.testing.assert_allclose(label.positions, res.atoms.positions, atol=1e-6)
    assert label.info["prov_reason"] == "stop_and_label" and label.info["prov_candidate"] == "c2"
    assert label.info["prov_step"] == res.steps
    again = relaxer.relax(atoms, info={"candidate": "c2"})
    assert again.steps == res.steps and len(store) == 1
    assert again.n_reference_calls == 0 == again.n_labels


# ---------------------------------------------------------------- pool (acceptance)
def test_pool_fallback_matches_reference_with_few_calls_and_rerun_does_nothing(tmp_path, capsys):
    write_inputs(tmp_path, n=10)
    assert _driver(tmp_path, "--cluster") == 0
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert len(rows) == 10 and {r["status"] for r in rows} == {"converged"}
    ref_steps, errors = 0, []
    for a, row in zip(cu_pool(10), rows):
        b = a.copy()
        b.calc = EMT()
        opt = FIRE(b, logfile=None)
        opt.run(fmax=0.05, steps=500)
        ref_steps += opt.nsteps + 1
        errors.append((float(row["energy_eV"]) - b.get_potential_energy()) / len(a))
    n_ref = sum(int(r["reference_calls"]) for r in rows)
    assert max(abs(e) for e in errors) < 0.005, errors
    assert 0 < n_ref <= 0.2 * ref_steps, (n_ref, ref_steps)
    labels = read(tmp_path / "labels.extxyz", ":")
    assert len(labels) == n_ref
    relaxed = read(tmp_path / "out" / "relaxed.extxyz", ":")
    assert [a.info["candidate"] for a in relaxed] == [r["id"] for r in rows]
    assert all("committee_energy_std" in a.info and "committee_forces_std" in a.arrays for a in relaxed)
    assert (tmp_path / "out" / "landscape.png").stat().st_size > 1000
    clusters = _rows(tmp_path / "out" / "clusters.csv")
    assert clusters and clusters[0]["rank"] == "1"
    assert float(clusters[0]["relative_energy_meV_atom"]) == 0.0  # plain numbers, not "np.float64(...)"
    assert all(np.isfinite(float(c["energy_per_atom_eV"])) for c in clusters)
    assert sum(int(c["n_members"]) for c in clusters) == 10
    # every committee minimum was checked by a reference single point, recorded per candidate
    assert {r["verified"] for r in rows} == {"yes"}
    for a, row in zip(relaxed, rows):
        b = a.copy()
        b.calc = EMT()
        assert float(row["reference_energy_eV"]) == pytest.approx(b.get_potential_energy(), abs=1e-6)
        assert float(row["reference_fmax_eVA"]) < 0.05 and np.isfinite(float(row["committee_energy_eV"]))
        assert row["reference_stress_max_GPa"] == ""  # fixed cell: no stress test
    import pandas

    table = pandas.read_csv(tmp_path / "out" / "summary.csv")
    for col in ("energy_eV", "committee_energy_eV", "reference_energy_eV", "reference_fmax_eVA",
                "fmax_eVA", "steps", "reference_calls", "surface_switches"):
        assert pandas.api.types.is_numeric_dtype(table[col]), col
    # the same command again: nothing new
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in (out / "trajectories").iterdir()}
    summary = (out / "summary.csv").read_bytes()
    capsys.readouterr()
    assert _driver(tmp_path) == 0
    assert (out / "summary.csv").read_bytes() == summary
    assert {p.name: p.read_bytes() for p in (out / "trajectories").iterdir()} == before
    assert len(read(tmp_path / "labels.extxyz", ":")) == n_ref


def test_killed_pool_resumes_without_repeating_work(tmp_path):
    write_inputs(tmp_path, n=6, slow_reference_s=0.15)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    cmd = [sys.executable, "-m", "drivers.relax", str(tmp_path / "candidates.extxyz"),
           "--committee", str(tmp_path / "committee.yaml"), "--reference",
           str(tmp_path / "reference.yaml"), "--labels", str(tmp_path / "labels.extxyz"),
           "--out", str(tmp_path / "out"), "--no-progress",
           "--threshold-energy-std-per-atom-meV", "1.5"]   # many reference calls: slow
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    summary = tmp_path / "out" / "summary.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if summary.exists() and len(_rows(summary)) >= 1:
            trajs = list((tmp_path / "out" / "trajectories").glob("*.extxyz"))
            if len(trajs) >= 2 and trajs[-1].stat().st_size > 0:
                break
        time.sleep(0.05)
    time.sleep(0.4)
    assert proc.poll() is None, "driver finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {r["id"] for r in _rows(summary)}
    assert 1 <= len(done_before) < 6
    steps_before = {p.stem: [f.info["relax_step"] for f in read(p, ":")]
                    for p in (tmp_path / "out" / "trajectories").glob("*.extxyz") if p.stat().st_size}
    rc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    rows = _rows(summary)
    assert sorted(r["id"] for r in rows) == [f"cu{k:02d}" for k in range(6)]  # each once
    for p in (tmp_path / "out" / "trajectories").glob("*.extxyz"):
        steps = [f.info["relax_step"] for f in read(p, ":")]
        # one continuous path: a resumed candidate continues, a finished one is untouched
        assert steps[:len(steps_before.get(p.stem, []))] == steps_before.get(p.stem, [])
        assert all(b >= a for a, b in zip(steps, steps[1:])), steps
        assert len(steps) - len(set(steps)) <= 2  # only the final frame (and a resume frame) repeat
    labels = read(tmp_path / "labels.extxyz", ":")
    hashes = [f.info["label_hash"] for f in labels]
    assert len(hashes) == len(set(hashes)) > 0
    assert sum(int(r["reference_calls"]) for r in rows) >= len(labels) - 1


def test_summary_of_an_earlier_version_is_extended_and_resumed(tmp_path):
    """A summary.csv with the earlier columns gets the new (empty) ones; its rows stay finished."""
    from committee_calc.relax.pool import SUMMARY_COLUMNS, RelaxPool

    old_cols = SUMMARY_COLUMNS[:15]
    assert old_cols[-1] == "reason"
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text(",".join(old_cols) + "\n" + "cu00,converged,3,4,1,1,-0.1,"
                                     "-0.025,0.01,0.05,0.1,0.01,8.9,4,done\n")
    gate = Gate(CommitteeCalculator(perturbed_members()), EMT(), thresholds={"forces_std_max": 0.2})
    rows = RelaxPool(GatedRelaxer(gate), out, progress=False).run(cu_pool(2))
    assert [r["id"] for r in rows] == ["cu00", "cu01"]
    assert rows[0]["steps"] == "3" and rows[0]["verified"] == "" and rows[1]["verified"] == "yes"
    assert (out / "summary.csv").read_text().splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    assert not (out / "trajectories" / "cu00.extxyz").exists()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["unreadable", "missing_model", "reference_not_installed", "species"])
def test_bad_input_fails_cleanly_without_labels(tmp_path, case, capsys):
    write_inputs(tmp_path, n=2, species=["Al"] if case == "species" else None)
    if case == "unreadable":
        (tmp_path / "candidates.extxyz").write_text("this is not\na structure file\n")
    elif case == "missing_model":
        (tmp_path / "committee.yaml").write_text(
            "members:\n  - {backend: mace, path: models/missing_*.model}\n")
    elif case == "reference_not_installed":
        (tmp_path / "reference.yaml").write_text("calculator: not_a_dft_code.Calculator\n")
    rc = _driver(tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:")
    assert {"unreadable": "cannot read", "missing_model": "model file",
            "reference_not_installed": "not_a_dft_code", "species": "Cu"}[case] in err
    assert not (tmp_path / "labels.extxyz").exists()
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_committee_only_relaxation_with_the_defaults(tmp_path, capsys):
    """No --reference and no thresholds: the default policy relaxes on the committee alone (no
    label store, no reference call); the summary says the minima are not verified."""
    from drivers.relax import main

    write_inputs(tmp_path, n=2)
    rc = main([str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert len(rows) == 2 and all(r["reference_calls"] == "0" for r in rows)
    assert {r["verified"] for r in rows} == {"not verified"}
    assert not (tmp_path / "labels.extxyz").exists()
