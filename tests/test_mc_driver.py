"""committee-mc driver: outputs, kill-and-resume on the same Markov chain, bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import read, write

from drivers.threshold_mc import main
from test_mc_moves import water_crystal

ROOT = Path(__file__).resolve().parents[1]
COMMITTEE = """members:
  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {}}
  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {asap_cutoff: true}}
"""


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "committee.yaml").write_text(COMMITTEE)
    (tmp_path / "ref.yaml").write_text("calculator: ase.calculators.emt.EMT\n")
    write(tmp_path / "start.extxyz", water_crystal(a=4.0))
    return tmp_path


def args(d, out, steps, extra=()):
    return [str(d / "start.extxyz"), "--committee", str(d / "committee.yaml"), "--out", str(d / out),
            "--steps", str(steps), "--lid-kjmol", "5", "--reference", str(d / "ref.yaml"),
            "--labels", str(d / (out + "_labels.extxyz")), "--seed", "3",
            "--threshold-energy-std-per-molecule-kjmol", "0.06", "--no-plots", *extra]


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_and_plots(inputs):
    assert main(args(inputs, "a", 25)[:-1]) == 0  # with plots
    chain = inputs / "a" / "chain_000"
    r = rows(chain / "steps.csv")
    assert [int(x["step"]) for x in r] == list(range(26))
    traj = read(chain / "trajectory.extxyz", ":")
    assert len(traj) == 1 + sum(int(x["accepted"]) for x in r[1:])
    assert all("committee_energy_std" in a.info and "mc_lid_eV" in a.info for a in traj)
    assert all(a.info["mc_energy_eV"] < a.info["mc_lid_eV"] for a in traj)
    n_ref = sum(x["gate_decision"] == "reference" for x in r)
    assert n_ref > 0 and len(read(inputs / "a_labels.extxyz", ":")) == n_ref
    assert (chain / "energy.png").stat().st_size > 1000 and (chain / "uncertainty.png").exists()


def test_kill_and_resume_continues_same_chain(inputs):
    steps = 120
    assert main(args(inputs, "full", steps)) == 0
    full = rows(inputs / "full" / "chain_000" / "steps.csv")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "drivers.threshold_mc", *args(inputs, "cut", steps)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csvp = inputs / "cut" / "chain_000" / "steps.csv"
    t0 = time.time()
    while time.time() - t0 < 120:
        if csvp.exists() and csvp.read_bytes().count(b"\n") > 30:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(rows(csvp))
    assert 0 < killed_at < steps, "the run was not interrupted mid-way"
    assert main(args(inputs, "cut", steps)) == 0  # rerun = resume
    got = rows(csvp)
    assert [int(x["step"]) for x in got] == list(range(steps + 1))
    for a, b in zip(full, got):
        for k in ("move", "accepted", "gate_decision", "label_index"):
            assert a[k] == b[k], (a["step"], k)
        assert float(a["trial_energy_eV"]) == pytest.approx(float(b["trial_energy_eV"]), abs=1e-9)
    la, lb = read(inputs / "full_labels.extxyz", ":"), read(inputs / "cut_labels.extxyz", ":")
    hashes = [f.info["label_hash"] for f in lb]
    assert len(hashes) == len(set(hashes)) == len(la)  # no duplicated labels
    assert sorted(hashes) == sorted(f.info["label_hash"] for f in la)
    ta = read(inputs / "full" / "chain_000" / "trajectory.extxyz", ":")
    tb = read(inputs / "cut" / "chain_000" / "trajectory.extxyz", ":")
    assert len(ta) == len(tb)
    # a second rerun of a finished run changes nothing
    assert main(args(inputs, "cut", steps)) == 0
    assert len(rows(csvp)) == steps + 1 and len(read(inputs / "cut_labels.extxyz", ":")) == len(la)


def test_bad_input_clear_errors(inputs, capsys):
    assert main(args(inputs, "b", 5, ["--lid-kjmol", "0"])) == 2
    assert "lid_kjmol must be > 0" in capsys.readouterr().err
    assert main(args(inputs, "b", 5, ["--lid-kjmol", "-3"])) == 2
    assert "> 0" in capsys.readouterr().err
    assert main(args(inputs, "b", 5, ["--moves", ""])) == 2
    assert "move set is empty" in capsys.readouterr().err
    assert main(args(inputs, "b", 5, ["--moves", "translate=0"])) == 2
    assert "empty" in capsys.readouterr().err
    assert main(args(inputs, "b", 5, ["--lid-raise-kjmol", "1"])) == 2
    assert "--lid-every" in capsys.readouterr().err
    (inputs / "bad_ref.yaml").write_text("calculator: no_such_package.Calculator\n")
    assert main(args(inputs, "b", 5, ["--reference", str(inputs / "bad_ref.yaml")])) == 2
    assert "no_such_package" in capsys.readouterr().err
    assert not (inputs / "b").exists()  # every input is checked before the first output
    write(inputs / "cu.extxyz", bulk("Cu", cubic=True))
    a = args(inputs, "c", 5)
    a[0] = str(inputs / "cu.extxyz")
    assert main(a) == 2
    assert "MoleculeError" in capsys.readouterr().err
    assert not (inputs / "c").exists()
    assert main(args(inputs, "d", 5, ["--threshold-energy-std-per-molecule-kjmol", "0.001",
                                      "--cap-energy-std-per-molecule-kjmol", "0.002"])) == 2
    err = capsys.readouterr().err
    assert "GateStop" in err and "start structure already exceeds the hard" in err


def test_resume_repairs_torn_trajectory_and_csv(inputs):
    assert main(args(inputs, "t", 10)) == 0
    chain = inputs / "t" / "chain_000"
    with open(chain / "trajectory.extxyz", "a") as fh:  # a frame and a row torn by a kill
        fh.write('12\nLattice="4.0 0.0 0.0 0.4 3.8')
    with open(chain / "steps.csv", "a") as fh:
        fh.write("11,translate,1,11.2")
    assert main(args(inputs, "t", 15)) == 0
    r = rows(chain / "steps.csv")
    assert [int(x["step"]) for x in r] == list(range(16))
    traj = read(chain / "trajectory.extxyz", ":")
    assert len(traj) == 1 + sum(int(x["accepted"]) for x in r[1:])


def test_resume_with_another_seed_is_refused_before_writing(inputs, capsys):
    assert main(args(inputs, "s", 3)) == 0
    before = (inputs / "s" / "chain_000" / "steps.csv").read_bytes()
    assert main(args(inputs, "s", 6, ["--seed", "4"])) == 2
    assert "--seed 3" in capsys.readouterr().err
    assert (inputs / "s" / "chain_000" / "steps.csv").read_bytes() == before


def test_committee_only_run_goes_through_the_gate(inputs):
    """Output change (issue 13): committee-only steps are gate decisions ("committee", reason
    "no thresholds") and the gate counts the committee calls in summary.json."""
    a = [str(inputs / "start.extxyz"), "--committee", str(inputs / "committee.yaml"),
         "--out", str(inputs / "co"), "--steps", "8", "--lid-kjmol", "5", "--no-plots"]
    assert main(a) == 0
    r = rows(inputs / "co" / "chain_000" / "steps.csv")
    assert [x["gate_decision"] for x in r] == ["committee"] * 9
    assert {x["gate_reason"] for x in r} == {"no thresholds"} and {x["label_index"] for x in r} == {""}
    summary = json.loads((inputs / "co" / "summary.json").read_text())
    assert summary["n_committee_calls_this_session"] == 9 and summary["n_reference_calls_this_session"] == 0


def test_atomwise_units_run_a_network_solid(inputs, capsys):
    """Issue 17 item 3: a metal (or network solid) runs from the command line with
    --units atoms: every atom its own unit, no molecule detection, per-atom energies."""
    write(inputs / "cu.extxyz", bulk("Cu", cubic=True) * (2, 1, 1))
    base = [str(inputs / "cu.extxyz"), "--committee", str(inputs / "committee.yaml"), "--steps", "12",
            "--moves", "displace=1:0.05,cell_volume=0.2:0.01", "--lid-kjmol", "5", "--no-plots"]
    assert main(base + ["--out", str(inputs / "mol")]) == 2
    assert "periodic image" in capsys.readouterr().err and not (inputs / "mol").exists()
    out = inputs / "atoms"
    assert main(base + ["--out", str(out), "--units", "atoms"]) == 0
    r = rows(out / "chain_000" / "steps.csv")
    assert [int(x["step"]) for x in r] == list(range(13)) and {x["move"] for x in r[1:]} <= {"displace", "cell_volume"}
    for x in r:  # per-molecule values are per atom (8 atoms), the lid is 5 kJ/mol per atom
        assert float(x["energy_std_per_molecule_kjmol"]) == pytest.approx(
            float(x["energy_std_per_atom_meV"]) * 1e-3 * 96.485332, rel=1e-6)
        assert float(x["lid_eV"]) - float(r[0]["energy_eV"]) == pytest.approx(8 * 5 / 96.485332, rel=1e-5)
    assert json.loads((out / "run.json").read_text())["units"] == "atoms"
    assert main(base + ["--out", str(out)]) == 2  # resuming with other units is refused
    assert "--units atoms" in capsys.readouterr().err
    assert main(base + ["--out", str(inputs / "x"), "--units", "atoms", "--molecules", "2"]) == 2
    assert "--molecules does not apply" in capsys.readouterr().err and not (inputs / "x").exists()
    assert main(base + ["--out", str(inputs / "x"), "--units", "atoms", "--moves", "rotate=1"]) == 2
    assert "rotate" in capsys.readouterr().err and not (inputs / "x").exists()
    no_moves = [a for a in base if a not in ("--moves", "displace=1:0.05,cell_volume=0.2:0.01")]
    assert main(no_moves + ["--out", str(inputs / "d"), "--units", "atoms"]) == 0  # atom-wise defaults
    assert {x["move"] for x in rows(inputs / "d" / "chain_000" / "steps.csv")[1:]} <= {
        "displace", "cell_length", "cell_angle", "cell_volume"}
