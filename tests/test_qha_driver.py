"""committee-qha end to end: cu_emt from scratch with EMT, killed mid-loop and resumed."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from committee_calc.phonons.qha_io import read_qha_csv

DATA = Path(__file__).parent / "data" / "qha"
pytestmark = pytest.mark.filterwarnings("ignore:Half-grid shift")
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


def test_driver_validates_everything_before_the_output_folder(setup, capsys):
    """Behaviour change: every input (volumes, thresholds, reference, species, phonopy-qha
    files) is checked before ``--out`` is created; formerly the folder was made first."""
    from drivers.qha import main

    tmp = setup
    (tmp / "al.yaml").write_text("members:\n" + "  - {backend: ase, calculator: ase.calculators.emt.EMT, "
                                 "species: [Al]}\n" * 2)
    (tmp / "bad_ref.yaml").write_text("calculator: no_such_module.Calculator\n")
    base = _argv(tmp, tmp / "never")
    cases = [
        (base + ["--threshold-forces-std-max-eVA", "0.05"], "no --reference"),
        (base + ["--reference", str(tmp / "bad_ref.yaml")], "no_such_module"),
        (base[:2] + [str(tmp / "al.yaml")] + base[3:], "'Cu'"),
        ([str(tmp / "cu.extxyz"), "--committee", str(tmp / "committee.yaml"), "--out",
          str(tmp / "never")], "give the volumes"),
        (["--ev", str(tmp / "missing.dat"), "--out", str(tmp / "never")], "--thermal-properties"),
        (["--ev", str(tmp / "missing.dat"), "--thermal-properties", str(tmp / "missing.yaml"),
          "--out", str(tmp / "never")], "missing"),
    ]
    for argv, match in cases:
        assert main(argv) == 2, argv
        assert match in capsys.readouterr().err, argv
        assert not (tmp / "never").exists(), argv


# --- bad input, pressures, shape relaxation and option names through the driver -------------
FAST = ["--mesh", "4", "4", "4", "--tmin-K", "0", "--tmax-K", "100", "--tstep-K", "10",
        "--no-plots"]


def _committee_yaml(path, cutoff=None):
    extra = "" if cutoff is None else f", cutoff: {cutoff}"
    path.write_text("members:\n" + "".join(
        f"  - {{backend: ase, calculator: ase.calculators.emt.EMT{extra}}}\n" for _ in range(2)))
    return path


def _stress(atoms):
    from ase.calculators.emt import EMT

    a = atoms.copy()
    a.calc = EMT()
    return a.get_stress(voigt=False), a.get_forces()


def _volume_structures(out):
    from ase.io import read

    return [read(p) for p in sorted(out.glob("volumes/*/structure.extxyz"))]


def test_driver_warns_on_supercell_below_twice_cutoff(tmp_path):
    """cutoff 6 Å on fcc Cu (primitive cell 2.07 Å thick): --supercell 2 warns, naming the
    cutoff and 6 6 6, the smallest diagonal supercell at least 12 Å thick."""
    from committee_calc.phonons.settings import PhononSettings, PhononWarning
    from committee_calc.phonons.supercell import check_supercell_size, make_phonopy
    from drivers.qha import run

    prim = bulk("Cu", "fcc", a=3.59)
    prim.write(tmp_path / "cu.extxyz")
    com = _committee_yaml(tmp_path / "c.yaml", cutoff=6.0)
    out = tmp_path / "out"
    argv = [str(tmp_path / "cu.extxyz"), "--committee", str(com), "--out", str(out),
            "--linear-scales", "0.98", "0.99", "1.0", "1.01", "1.02", "--relax", "none",
            "--supercell", "2", *FAST]
    with pytest.warns(PhononWarning) as rec:
        assert run(argv) == 0
    msgs = [str(w.message) for w in rec if "twice the committee cutoff" in str(w.message)]
    assert len(msgs) == 1, msgs  # once per run, not once per volume
    assert "cutoff (6.00 Å" in msgs[0] and "supercell 2 2 2" in msgs[0]
    assert "at least 6 6 6" in msgs[0]
    assert json.loads((out / "qha_summary.json").read_text())["supercell_warning"] == msgs[0]
    # the suggestion is the smallest one that satisfies it
    for n, warns in [(5, True), (6, False)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = check_supercell_size(make_phonopy(prim, PhononSettings(supercell_matrix=n),
                                                   generate=False), 6.0)
        assert ok is not warns and bool(caught) is warns


def test_driver_reports_imaginary_modes_per_volume(tmp_path):
    """Simple-cubic Cu (unstable under EMT at some volumes): every volume whose mean-potential
    phonons have modes below -tol is listed in imaginary_modes.csv and the summary, with a
    warning naming the volume; a larger tolerance reports none."""
    from ase.calculators.emt import EMT

    from committee_calc.gate import Gate
    from committee_calc.phonons.harmonic import run_phonons
    from committee_calc.phonons.settings import PhononSettings, PhononWarning
    from committee_calc.phonons.volumes import scaled_structures
    from drivers.qha import run

    sc = bulk("Cu", "sc", a=2.42)
    sc.write(tmp_path / "sc.extxyz")
    com = _committee_yaml(tmp_path / "c.yaml")
    scales = ["0.97", "0.98", "0.99", "1.0", "1.01", "1.02", "1.03"]
    base = [str(tmp_path / "sc.extxyz"), "--committee", str(com), "--linear-scales", *scales,
            "--relax", "none", "--supercell", "2", *FAST]
    settings = PhononSettings(supercell_matrix=2, mesh=(4, 4, 4), t_max_K=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [i for i, a in enumerate(scaled_structures(sc, linear_scales=[float(s) for s in scales]))
                    if run_phonons(a, Gate(EMT()), settings).mean.imaginary_modes]
    assert 0 < len(expected) < len(scales), expected  # a real per-volume distinction

    out = tmp_path / "out"
    with pytest.warns(PhononWarning) as rec:
        assert run(base + ["--out", str(out)]) == 0
    found = [re.match(r"volume (\d\d) .*imaginary mode", str(w.message)) for w in rec]
    warned = sorted({int(m.group(1)) for m in found if m})
    assert warned == expected
    rows = [line.split(",") for line in (out / "imaginary_modes.csv").read_text().splitlines()[1:]]
    assert sorted({int(r[0]) for r in rows if r[2] == "mean"}) == expected
    assert all(float(r[6]) < -0.05 for r in rows)
    summary = json.loads((out / "qha_summary.json").read_text())
    assert summary["volumes_with_imaginary_modes"] == expected
    # issue 17: supercell_warning holds the supercell-size warning only, not another warning
    assert summary["supercell_warning"] is None
    assert summary["n_imaginary_modes"] == len(rows)
    for i in range(len(scales)):
        assert (summary["imaginary_modes_per_volume"][f"{i:02d}"]["mean"] > 0) is (i in expected)

    out2 = tmp_path / "out_tol"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PhononWarning)
        assert run(base + ["--out", str(out2), "--imaginary-tol-THz", "2.0"]) == 0
    assert (out2 / "imaginary_modes.csv").read_text().splitlines()[1:] == []


def test_driver_volumes_from_pressures(tmp_path):
    """--pressures-GPa: each volume is a full cell relaxation at its pressure; the volumes
    fall with pressure, each relaxed stress is -p·I within the relaxation tolerance, and the
    QHA runs on those volumes (a changed pressure list is not resumed silently)."""
    from committee_calc.errors import ConfigError
    from committee_calc.units import gpa_to_ev_per_a3
    from drivers.qha import run

    bulk("Cu", "fcc", a=3.59).write(tmp_path / "cu.extxyz")
    com = _committee_yaml(tmp_path / "c.yaml")
    out = tmp_path / "out"
    pressures = [-4.0, -2.0, 0.0, 2.0, 4.0]
    fmax = 0.005
    base = [str(tmp_path / "cu.extxyz"), "--committee", str(com), "--out", str(out),
            "--supercell", "3", "--fmax-eVA", str(fmax), *FAST]
    assert run(base + ["--pressures-GPa", *map(str, pressures)]) == 0
    structs = _volume_structures(out)
    assert len(structs) == 5
    vols = np.array([a.get_volume() for a in structs])
    assert np.all(np.diff(vols) < 0), vols
    for a, p in zip(structs, pressures):
        # FrechetCellFilter converges |virial row| / N < fmax, i.e. |σ + p I| < fmax N / V
        tol = 1.2 * fmax * len(a) / a.get_volume()
        sigma, forces = _stress(a)
        np.testing.assert_allclose(sigma, -gpa_to_ev_per_a3(p) * np.eye(3), atol=tol)
        assert np.abs(forces).max() < fmax
    # p = 0 is the EMT equilibrium of fcc Cu (a = 3.5898 Å)
    assert structs[2].get_volume() == pytest.approx(3.5898 ** 3 / 4, rel=1e-3)
    for i, p in enumerate(pressures):
        meta = json.loads((out / "volumes" / f"{i:02d}" / "volume.json").read_text())
        assert meta["pressure_GPa"] == p and meta["volume_A3"] == pytest.approx(vols[i], rel=1e-12)
    got = read_qha_csv(out / "qha.csv")
    assert len(got["T_K"]) == 10 and np.all(np.isfinite(got["V_A3"]))
    assert vols.min() < got["V_A3"][0] < vols.max() and np.all(np.diff(got["V_A3"]) > 0)
    summary = json.loads((out / "qha_summary.json").read_text())
    assert summary["pressures_GPa"] == pressures
    np.testing.assert_allclose(summary["volumes_A3"], vols, rtol=1e-12)
    with pytest.raises(ConfigError, match="different settings"):
        run(base + ["--pressures-GPa", "-4", "-2", "0", "2", "5"])


def test_driver_shape_relaxation_at_fixed_volume(tmp_path):
    """--relax shape on a tetragonally strained fcc Cu cell: every volume keeps its volume and
    its cell relaxes back to cubic with a hydrostatic stress (deviator below tolerance)."""
    from drivers.qha import run

    at = bulk("Cu", "fcc", a=3.59, cubic=True)
    at.set_cell(np.array(at.cell) * [1.03, 1.03, 1 / 1.03 ** 2], scale_atoms=True)
    at.write(tmp_path / "strained.extxyz")
    fmax = 0.005
    dev = lambda s: s - np.trace(s) / 3 * np.eye(3)  # noqa: E731
    tol = 1.2 * fmax * len(at) / at.get_volume()
    sigma0, _ = _stress(at)
    assert np.abs(dev(sigma0)).max() > 20 * tol  # the strain is far from hydrostatic
    com = _committee_yaml(tmp_path / "c.yaml")
    out = tmp_path / "out"
    scales = [0.98, 0.99, 1.0, 1.01, 1.02]
    assert run([str(tmp_path / "strained.extxyz"), "--committee", str(com), "--out", str(out),
                "--linear-scales", *map(str, scales), "--relax", "shape", "--fmax-eVA", str(fmax),
                "--supercell", "2", *FAST]) == 0
    structs = _volume_structures(out)
    assert len(structs) == 5
    for a, s in zip(structs, scales):
        assert a.get_volume() == pytest.approx(at.get_volume() * s ** 3, rel=1e-8)
        sigma, forces = _stress(a)
        assert np.abs(dev(sigma)).max() < tol
        assert np.abs(forces).max() < fmax
        lengths = a.cell.lengths()
        np.testing.assert_allclose(lengths, lengths.mean(), rtol=2e-3)  # cubic again
        np.testing.assert_allclose(a.cell.angles(), 90.0, atol=0.1)
    got = read_qha_csv(out / "qha.csv")
    assert np.all(np.isfinite(got["V_A3"])) and np.all(np.isfinite(got["c_A"]))


#: options that take a physical quantity end with its unit; these are dimensionless
DIMENSIONLESS = {"--linear-scales", "--volume-scales", "--scale-range",
                 "--threshold-force-uncertainty-relative", "--cap-force-uncertainty-relative"}
UNITS = ("-eVA", "-A", "-K", "-THz", "-GPa", "-eV", "-meV", "-kjmol")


def test_option_names_carry_units():
    from committee_calc.cli import cli_limit_value
    from drivers.qha import build_parser

    floats = {}
    for action in build_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if action.type in (float, cli_limit_value) and longs:
            floats[longs[0]] = action
    assert {"--fmax-eVA", "--distance-A", "--tmin-K", "--tmax-K", "--tstep-K", "--qha-tmax-K",
            "--imaginary-tol-THz", "--pressure-GPa", "--pressures-GPa", "--screen-pressures-GPa",
            "--screen-temperature-K", "--threshold-forces-std-max-eVA"} <= set(floats)
    bad = [o for o in floats if o not in DIMENSIONLESS and not o.endswith(UNITS)]
    assert bad == [], f"float options without a unit suffix: {bad}"
    # no int option hides a physical quantity: counts and grids only
    ints = {o for a in build_parser()._actions if a.type is int for o in a.option_strings}
    assert ints <= {"--relax-steps", "--supercell", "--mesh", "--ddof", "--band-npoints",
                    "--retrain-every"}, ints


def _readme_qha_argv():
    text = (ROOT / "README.md").read_text()
    i = text.index("\ncommittee-qha ")
    line = ""
    for part in text[i + 1:].splitlines():
        line += part.rstrip("\\").strip() + " "
        if not part.rstrip().endswith("\\"):
            break
    import shlex

    argv = shlex.split(line)
    assert argv[0] == "committee-qha"
    return argv[1:]


def test_readme_example_line_is_valid(tmp_path, monkeypatch):
    """The README's committee-qha line parses as documented and runs (EMT committee and EMT
    'dft' reference), with fast phonon settings appended."""
    from drivers.qha import build_parser, main

    argv = _readme_qha_argv()
    args = build_parser().parse_args(argv)
    assert args.structure == "prim.cif" and args.committee == "c.yaml" and args.out == "qha/"
    assert args.scale_range == [0.97, 1.03, 7] and args.supercell == [3, 3, 3]
    assert args.reference == "dft.yaml" and args.labels == "labels.extxyz"
    assert args.threshold_forces_std_max_eVA == 0.05

    monkeypatch.chdir(tmp_path)
    bulk("Cu", "fcc", a=3.59).write("prim.cif")
    _committee_yaml(tmp_path / "c.yaml")
    (tmp_path / "dft.yaml").write_text("calculator: ase.calculators.emt.EMT\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv + FAST) == 0
    summary = json.loads((tmp_path / "qha" / "qha_summary.json").read_text())
    assert len(summary["volumes_A3"]) == 7 and np.all(np.diff(summary["volumes_A3"]) > 0)
    assert summary["settings"]["supercell_matrix"] == np.diag([3, 3, 3]).tolist()
    got = read_qha_csv(tmp_path / "qha" / "qha.csv")
    assert len(got["T_K"]) == 10 and np.all(np.isfinite(got["G_eV"]))
    n_labels = 0
    if (tmp_path / "labels.extxyz").exists():
        from ase.io import read

        n_labels = len(read(tmp_path / "labels.extxyz", index=":"))
    assert n_labels == summary["n_reference_supercells"]
