"""Committee YAML specs, extxyz round trip of uncertainties, CLI helpers."""
import numpy as np
import pytest
import yaml
from ase.calculators.calculator import Calculator, CalculatorError
from ase.calculators.emt import EMT
from ase.io import read, write

from committee_calc import CommitteeCalculator, attach_uncertainties, load_committee, read_uncertainties
from committee_calc import errors as E
from committee_calc.members.ase_member import ASEMember
from helpers import cu_cell, emt_members

EMT_SPEC = {"backend": "ase", "calculator": "ase.calculators.emt.EMT"}


def write_spec(tmp_path, spec, name="committee.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec) if isinstance(spec, dict) else spec)
    return p


def test_load_committee_from_yaml(tmp_path):
    p = write_spec(tmp_path, {"members": [EMT_SPEC, {**EMT_SPEC, "parameters": {"asap_cutoff": True}}],
                              "calibration": {"energy": 1.5}})
    c = load_committee(p)
    assert isinstance(c, CommitteeCalculator) and c.n_members == 2
    assert c.calibration == {"energy": 1.5}
    atoms = cu_cell()
    atoms.calc = c
    assert np.isfinite(atoms.get_potential_energy())
    assert c.results["energy_std"] > 0


def test_path_glob_expands_to_members(tmp_path):
    from committee_calc.members import expand_paths

    for i in range(3):
        (tmp_path / f"m_{i}.model").write_text("x")
    assert [p.split("/")[-1] for p in expand_paths("m_*.model", tmp_path)] == \
        ["m_0.model", "m_1.model", "m_2.model"]
    with pytest.raises(E.ModelFileError, match="no model file matches"):
        expand_paths("nothing_*.model", tmp_path)
    with pytest.raises(E.ModelFileError, match="does not exist"):
        expand_paths("missing.model", tmp_path)


def test_extxyz_round_trip_of_uncertainties(tmp_path):
    atoms = cu_cell()
    c = CommitteeCalculator(emt_members(3))
    c.get_property("energy", atoms)
    attach_uncertainties(atoms, c.results)
    write(tmp_path / "u.extxyz", atoms, format="extxyz")
    back = read(tmp_path / "u.extxyz", format="extxyz")
    got = read_uncertainties(back)
    for k in ("energy_std", "forces_std_max", "force_uncertainty_relative", "energy_std_per_atom"):
        assert got[k] == pytest.approx(c.results[k], rel=1e-12)
    for k in ("forces_std", "forces_std_atom", "forces_members", "energy_members",
              "stress_members", "stress_std", "energies_members"):
        np.testing.assert_allclose(got[k], c.results[k], rtol=0, atol=1e-8)  # extxyz writes 8 decimals
    assert got["forces_members"].shape == (3, len(atoms), 3)


class NaNCalc(Calculator):
    implemented_properties = ("energy", "forces", "stress")

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": np.nan, "forces": np.full((len(atoms), 3), np.nan),
                        "stress": np.zeros(6)}


def test_nonfinite_member_is_flagged_infinitely_uncertain():
    from committee_calc.uncertainty import UNCERTAIN

    c = CommitteeCalculator([EMT(), EMT(asap_cutoff=True), NaNCalc()])
    atoms = cu_cell()
    e = c.get_property("energy", atoms)
    assert np.isfinite(e)
    r = c.results
    assert r["n_nonfinite"] == 1
    assert r["energy_std"] == UNCERTAIN and r["forces_std_max"] == UNCERTAIN
    assert np.isfinite(r["forces"]).all()
    with pytest.raises(E.NonFiniteOutputError, match="non-finite"):
        CommitteeCalculator([NaNCalc(), NaNCalc()]).get_property("energy", atoms)


def test_errors_share_one_hierarchy_rooted_in_ase():
    for name in E.__all__:
        assert issubclass(getattr(E, name), CalculatorError)


@pytest.mark.parametrize("members, exc, match", [
    ([EMT()], E.ConfigError, "at least 2 members"),
    ("same", E.ConfigError, "appears twice"),
    ([EMT(), object()], E.ConfigError, "neither"),
])
def test_bad_members_rejected_at_construction(members, exc, match):
    if members == "same":
        m = EMT()
        members = [m, m]
    with pytest.raises(exc, match=match):
        CommitteeCalculator(members)


@pytest.mark.parametrize("cal, match", [
    ({"energy": -1.0}, "finite and > 0"),
    ({"energy": float("nan")}, "finite and > 0"),
    ({"energy": "abc"}, "must be a number"),
    ({"heat": 1.0}, "unknown calibration quantity"),
    ([1.0], "mapping"),
])
def test_invalid_calibration(cal, match):
    with pytest.raises(E.CalibrationError, match=match):
        CommitteeCalculator([EMT(), EMT(asap_cutoff=True)], calibration=cal)


class EnergyOnly(Calculator):
    implemented_properties = ("energy",)


class NoStress(Calculator):
    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": np.zeros((len(atoms), 3))}


def test_member_property_mismatch():
    with pytest.raises(E.MemberPropertyError, match="do not provide 'forces'"):
        CommitteeCalculator([EMT(), EnergyOnly()])
    c = CommitteeCalculator([EMT(), NoStress()])
    assert "stress" not in c.implemented_properties
    atoms = cu_cell()
    atoms.calc = c
    atoms.get_forces()
    assert "stress" not in c.results
    with pytest.raises(E.MemberPropertyError, match="cannot compute it"):
        atoms.get_stress()


def test_unknown_species_named():
    c = CommitteeCalculator([ASEMember(EMT(), species=["Cu"]), ASEMember(EMT(), species=["Cu", "Au"])])
    atoms = cu_cell()
    atoms[0].symbol = "Ag"
    with pytest.raises(E.UnknownSpeciesError, match=r"\['Ag'\]"):
        c.get_property("energy", atoms)


@pytest.mark.parametrize("text, exc, match", [
    ("members: [", E.ConfigError, "not valid YAML"),
    ("- 1\n- 2\n", E.ConfigError, "mapping"),
    ("members: []\n", E.ConfigError, "non-empty"),
    ("members: [{backend: nope}]\n", E.ConfigError, "unknown member backend 'nope'"),
    ("members: [{calculator: x}]\n", E.ConfigError, "needs a 'backend'"),
    ("members: [{backend: ase, calculator: no_such_pkg.Calc}, {backend: ase, calculator: x.y}]\n",
     E.BackendUnavailableError, "no_such_pkg"),
    ("members: [{backend: ase, calculator: ase.calculators.emt.NoSuch}]\n", E.ConfigError, "no attribute"),
    ("members: [{backend: ase, calculator: ase.calculators.emt.EMT}]\nsurprise: 1\n",
     E.ConfigError, "unknown committee keys"),
])
def test_bad_committee_yaml(tmp_path, text, exc, match):
    with pytest.raises(exc, match=match):
        load_committee(write_spec(tmp_path, text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(E.ModelFileError, match="does not exist"):
        load_committee(tmp_path / "none.yaml")


def test_units_and_thresholds():
    from committee_calc import units

    assert units.kjmol_to_ev(96.48533212) == pytest.approx(1.0, rel=1e-8)
    assert units.energy_factor("meV") == 1e-3
    assert units.gpa_to_ev_per_a3(160.21766) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(E.UnitError, match="unknown energy unit 'furlong'"):
        units.energy_factor("furlong")
    with pytest.raises(E.UnitError, match="> 0"):
        units.check_positive("threshold_kjmol", -1.0)
    with pytest.raises(E.UnitError, match="finite"):
        units.check_positive("threshold_kjmol", float("nan"))


def test_read_structures_and_cli_exit_code(tmp_path, capsys):
    from committee_calc.cli import run_cli
    from committee_calc.structures import read_structures

    bad = tmp_path / "bad.extxyz"
    bad.write_text("3\nnot a header\nCu 0 0\n")
    with pytest.raises(E.StructureReadError, match="bad.extxyz"):
        read_structures(bad)
    with pytest.raises(E.StructureReadError, match="does not exist"):
        read_structures(tmp_path / "none.xyz")

    def main(argv):
        read_structures(bad)

    assert run_cli(main) == 2
    assert "StructureReadError" in capsys.readouterr().err
    good = tmp_path / "good.extxyz"
    write(good, [cu_cell(seed=i) for i in range(2)])
    assert len(read_structures(good)) == 2


def test_cli_builds_one_gate_from_options(tmp_path):
    import argparse

    from committee_calc.cli import add_committee_arguments, add_gate_arguments, build_gate
    from committee_calc.units import KJMOL

    c = write_spec(tmp_path, {"members": [EMT_SPEC, {**EMT_SPEC, "parameters": {"asap_cutoff": True}}]})
    r = write_spec(tmp_path, {"calculator": "ase.calculators.emt.EMT", "parameters": {}}, "ref.yaml")
    p = argparse.ArgumentParser()
    add_committee_arguments(p)
    add_gate_arguments(p)
    base = ["--committee", str(c), "--labels", str(tmp_path / "l.extxyz")]
    args = p.parse_args(base + ["--reference", str(r), "--molecules", "4",
                                "--threshold-energy-std-per-molecule-kjmol", "2",
                                "--cap-forces-std-max-eVA", "1.5"])
    gate = build_gate(args, "test")
    assert gate.thresholds == {"energy_std_per_molecule": pytest.approx(2 * KJMOL)}
    assert gate.hard_cap == {"forces_std_max": 1.5}
    res = gate.evaluate(cu_cell())
    assert res.decision in ("committee", "reference")
    with pytest.raises(E.ConfigError, match="no --reference"):
        build_gate(p.parse_args(base + ["--threshold-forces-std-max-eVA", "0.1"]), "t")
    with pytest.raises(E.ConfigError, match="--molecules"):
        build_gate(p.parse_args(base + ["--reference", str(r),
                                                  "--threshold-energy-std-per-molecule-kjmol", "2"]), "t")
    with pytest.raises(E.UnitError, match="> 0"):
        build_gate(p.parse_args(base + ["--reference", str(r),
                                        "--threshold-forces-std-max-eVA", "-1"]), "t")
    # a measure added to the table reaches the options with no other edit
    gate = build_gate(p.parse_args(base + ["--reference", str(r),
                                           "--threshold-forces-std-mean-eVA", "0.2"]), "t")
    assert gate.thresholds == {"forces_std_mean": 0.2}
    assert "forces_std_mean" in gate.evaluate(cu_cell()).measures
