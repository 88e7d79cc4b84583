"""committee-qha end to end: cu_emt from scratch with EMT, killed mid-loop and resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from committee_calc.qha_io import read_qha_csv

DATA = Path(__file__).parent / "data" / "qha"
ROOT = Path(__file__).resolve().parents[1]
SCALES = ["0.99", "0.995", "1.0", "1.005", "1.01", "1.015", "1.02", "1.025", "1.03"]
COMMITTEE = """members:
  - {backend: ase, calculator: ase.calculators.emt.EMT}
  - {backend: ase, calculator: ase.calculators.emt.EMT}
"""


def _argv(tmp, out, extra=()):
    return [str(tmp / "cu.extxyz"), "--committee", str(tmp / "committee.yaml"), "--out", str(out),
            "--linear-scales", *SCALES, "--relax", "none", "--supercell", "3",
            "--distance-A", "0.01", "--mesh", "20", "20", "20", "--tmin-K", "0",
            "--tmax-K", "800", "--tstep-K", "10", "--eos", "vinet", *extra]


@pytest.fixture()
def setup(tmp_path):
    bulk("Cu", "fcc", a=3.59).write(tmp_path / "cu.extxyz")
    (tmp_path / "committee.yaml").write_text(COMMITTEE)
    return tmp_path


def test_cu_emt_from_scratch_killed_and_resumed(setup):
    from drivers.qha import run

    tmp, out = setup, setup / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "drivers.qha", *_argv(tmp, out, ["--no-plots"])],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "volumes" / "01" / "volume.json"
    t0 = time.time()
    while not marker.exists() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.parent.name) for p in out.glob("volumes/*/volume.json"))
    assert 2 <= len(done) < 9, done
    stamps = {i: (out / "volumes" / f"{i:02d}" / "volume.json").stat().st_mtime_ns for i in done}

    assert run(_argv(tmp, out, ["--screen-pressures-GPa", "0", "1", "2"])) == 0
    summary = json.loads((out / "qha_summary.json").read_text())
    assert summary["computed_volumes"] == [i for i in range(9) if i not in done]
    for i, ns in stamps.items():  # finished volumes were loaded, not recomputed
        assert (out / "volumes" / f"{i:02d}" / "volume.json").stat().st_mtime_ns == ns

    # per-volume outputs: E(V) and F_vib as in the oracle
    vols = np.loadtxt(DATA / "cu_emt" / "inputs" / "volumes.csv", delimiter=",", skiprows=1)
    import yaml
    for i in range(9):
        meta = json.loads((out / "volumes" / f"{i:02d}" / "volume.json").read_text())
        assert meta["energy_eV"] == pytest.approx(vols[i, 4], abs=1e-9)
        assert meta["volume_A3"] == pytest.approx(vols[i, 3], abs=1e-9)
        got = yaml.safe_load((out / "volumes" / f"{i:02d}" / "thermal_properties.yaml").read_text())
        ref = yaml.safe_load((DATA / "cu_emt" / "inputs" / f"thermal_properties.yaml-{i:02d}").read_text())
        np.testing.assert_allclose([r["free_energy"] for r in got["thermal_properties"]],
                                   [r["free_energy"] for r in ref["thermal_properties"]], atol=1e-6)
        assert (out / "volumes" / f"{i:02d}" / "phonopy_params.yaml").exists()

    # qha.csv against the primary oracle at all 80 temperatures
    got = read_qha_csv(out / "qha.csv")
    ref = read_qha_csv(DATA / "cu_emt" / "reference" / "qha_reference.csv")
    assert len(got["T_K"]) == 80
    np.testing.assert_array_equal(got["T_K"], ref["temperatures_K"])
    for col, rcol, atol in [("V_A3", "volume_A3", 1e-5), ("G_eV", "gibbs_eV", 1e-6),
                            ("B_T_GPa", "bulk_modulus_GPa", 2e-3),
                            ("beta_V_per_K", "thermal_expansion_volumetric_per_K", 1e-8),
                            ("C_P_J_per_K_mol", "heat_capacity_P_polyfit_J_per_K_mol", 1e-3)]:
        np.testing.assert_allclose(got[col], ref[rcol], atol=atol, err_msg=col)
    # identical EMT members: per-member QHA equals the mean potential, with zero spread
    for name, unit in [("V", "A3"), ("G", "eV"), ("B_T", "GPa"), ("beta_V", "per_K")]:
        np.testing.assert_array_equal(got[f"{name}_members_mean_{unit}"], got[f"{name}_{unit}"])
        assert np.all(got[f"{name}_members_std_ddof1_{unit}"] == 0)
    for name in ("qha.png", "bands.png", "dos.png", "lattice_vs_pressure.png", "qha_pressure.csv",
                 "qha_members.csv", "imaginary_modes.csv"):
        assert (out / name).stat().st_size > 0, name
    press = read_qha_csv(out / "qha_pressure.csv")
    assert np.all(np.diff(press["V_A3"]) < 0) and np.all(np.diff(press["a_A"]) < 0)


def test_driver_bad_input_messages(setup, capsys):
    from drivers.qha import main

    tmp = setup
    argv = _argv(tmp, tmp / "o1")
    i = argv.index("--linear-scales")
    argv[i + 1:i + 10] = ["0.99", "1.0", "1.01"]
    assert main(argv) == 2
    assert "at least 5 volumes" in capsys.readouterr().err
    assert main([str(tmp / "cu.extxyz"), "--out", str(tmp / "o2")]) == 2
    assert "--committee" in capsys.readouterr().err
