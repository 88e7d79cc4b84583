"""Issue 18 item 4, trust from the committee file: ``domain:``/``trust:`` in committee.yaml are
recorded from a training set and checked in committee-only runs, which warn once per structure and
measure, naming the measure, the value and the recorded range."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from committee_calc import units
from committee_calc.committee import CommitteeCalculator
from committee_calc.config import build_committee, write_domain
from committee_calc.domain import DomainWarning, check_results, parse_domain, parse_trust, record_domain, watch
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "si_demo"


def _cu_frames():
    frames = []
    for s in (0.97, 1.0, 1.03):
        a = bulk("Cu", "fcc", a=3.6 * s, cubic=True)
        a.calc = EMT()
        a.info["REF_stress"] = a.get_stress()
        a.calc = None
        frames.append(a)
    return frames


def test_record_domain_gives_elements_and_ranges_in_stated_units():
    frames = _cu_frames()
    block = record_domain(frames, source="three cells")
    assert block["elements"] == ["Cu"]
    v = [a.get_volume() / len(a) for a in frames]
    assert block["volume_per_atom_A3"] == pytest.approx([min(v), max(v)], abs=1e-3)
    p = [-np.mean(a.info["REF_stress"][:3]) / units.GPA for a in frames]
    assert block["pressure_GPa"] == pytest.approx([min(p), max(p)], abs=1e-3)
    assert min(p) < 0 < max(p)  # expanded cell in tension, compressed in compression
    parsed = parse_domain(block)
    assert parsed["elements"] == {"Cu"} and parsed["volume_per_atom_A3"][0] < parsed["volume_per_atom_A3"][1]


@pytest.mark.parametrize("block, text", [
    ({"volume_per_atom_A3": [20, 10]}, "min <= max"),
    ({"pressure_GPa": "low"}, "[min, max]"),
    ({"elements": "Si"}, "list of element symbols"),
    ({"volumes": [1, 2]}, "unknown committee domain keys"),
])
def test_bad_domain_blocks_are_refused_naming_the_key(block, text):
    with pytest.raises(ConfigError, match=text.replace("[", r"\[").replace("]", r"\]")):
        parse_domain(block)


def test_bad_trust_blocks_are_refused():
    with pytest.raises(ConfigError, match="unknown trust measure"):
        parse_trust({"forces_std": 0.1})
    with pytest.raises(ConfigError, match="positive number"):
        parse_trust({"forces_std_max": -1})
    assert parse_trust({"forces_std_max": 0.2, "source": "heldout"}) == {"forces_std_max": 0.2}


def test_committee_only_gate_warns_once_per_structure_and_measure(tmp_path):
    frames = _cu_frames()
    spec = {"members": [{"backend": "ase", "calculator": "ase.calculators.emt.EMT", "parameters": {}},
                        {"backend": "ase", "calculator": "ase.calculators.emt.EMT", "parameters": {}}],
            "domain": record_domain(frames)}
    committee = build_committee(spec)
    assert watch(committee) is not None
    gate = Gate(committee)
    inside = bulk("Cu", "fcc", a=3.6, cubic=True)
    squeezed = bulk("Cu", "fcc", a=3.6 * 0.8 ** (1 / 3), cubic=True)  # 20 % less volume
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gate.evaluate(inside)
        assert not [w for w in caught if issubclass(w.category, DomainWarning)]
        for k in range(5):  # an MD-like sequence: one structure, many evaluations
            a = squeezed.copy()
            a.rattle(0.01, seed=k)
            gate.evaluate(a)
        gate.evaluate_many([squeezed, squeezed])
    said = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert len([s for s in said if "volume per atom" in s]) == 1, said
    assert len([s for s in said if "pressure" in s]) == 1, said
    vol = next(s for s in said if "volume per atom" in s)
    v = squeezed.get_volume() / len(squeezed)
    assert f"{v:.4g} Å³/atom" in vol and "training range" in vol
    named = squeezed.copy()
    named.info["candidate"] = "c0007"  # another structure of a pool: warned about on its own
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gate.evaluate(named)
    said = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert sorted(s.split(":")[0] for s in said) == ["candidate c0007"] * 2, said


def test_trust_threshold_and_unknown_element_warn():
    members = [EMT(), EMT()]
    committee = CommitteeCalculator(members)
    committee.domain, committee.trust = parse_domain({"elements": ["Cu"]}), parse_trust({"forces_std_max": 0.1})
    watch(committee)
    a = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    a.symbols[0] = "Ni"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = Gate(committee).evaluate(a).committee_results
        assert res["forces_std_max"] < 0.1  # two identical members: no spread, trusted
        assert check_results(committee, a, res) == []
        said = check_results(committee, a, {**res, "forces_std_max": 0.4})
        assert check_results(committee, a, {**res, "forces_std_max": 0.5}) == []  # once per structure
    assert said == ["Cu7Ni: max atomic force spread 0.4 eV/Å is above the committee's calibrated trust "
                    "threshold 0.1 eV/Å (committee trust: forces_std_max)"]
    msgs = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert any("elements ['Ni'] are not in the committee's training set" in s for s in msgs), msgs
    assert len(msgs) == 2, msgs


def test_write_domain_records_the_training_file_into_the_spec(tmp_path):
    from ase.io import write

    frames = _cu_frames()
    for a in frames:
        a.calc = SinglePointCalculator(a, energy=0.0, stress=a.info.pop("REF_stress"))
    write(tmp_path / "train.extxyz", frames)
    spec = tmp_path / "committee.yaml"
    spec.write_text(yaml.safe_dump({"members": [], "training": {"train_file": "train.extxyz"}}))
    block = write_domain(spec, trust={"forces_std_max": 0.3, "source": "test"})
    data = yaml.safe_load(spec.read_text())
    assert data["domain"] == block and data["domain"]["source"] == "train.extxyz (3 frames)"
    assert data["trust"] == {"forces_std_max": 0.3, "source": "test"}
    assert data["training"] == {"train_file": "train.extxyz"}  # other keys unchanged
    assert "pressure_GPa" in block  # from the stored calculator's stress


def test_example_committee_carries_domain_and_trust():
    data = yaml.safe_load((EXAMPLE / "committee.yaml").read_text())
    dom = parse_domain(data["domain"])
    assert dom["elements"] == {"Si"}
    lo, hi = dom["volume_per_atom_A3"]
    assert lo < 20.0 < hi  # diamond Si (20.0 Å³/atom) is inside the training range
    assert parse_trust(data["trust"])["forces_std_max"] > 0


@pytest.mark.skipif(not list((EXAMPLE / "models").glob("si_chgnet_*.pth.tar")), reason="example models absent")
def test_committee_only_md_outside_the_example_domain_warns_once(tmp_path):
    """The acceptance test: committee-md of the shipped example committee on diamond Si compressed by
    20 % in volume (pressure far above the training range) warns once, naming the measure."""
    pytest.importorskip("chgnet")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)  # cell heights above the 6 Å cutoff
    atoms.set_cell(atoms.cell * 0.8 ** (1 / 3), scale_atoms=True)
    atoms.write(tmp_path / "si.extxyz")
    code = "import sys; from drivers.npt_md import main; raise SystemExit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("COMMITTEE_CALC_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "si.extxyz"), "--committee",
                           str(EXAMPLE / "committee.yaml"), "--out", str(tmp_path / "md"), "--steps", "6",
                           "--ensemble", "nvt", "--temperature-K", "300", "--write-interval", "3"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [s for s in proc.stderr.splitlines() if "(committee domain:" in s]  # one "warning: ..." line
    assert len(lines) == 1, proc.stderr
    assert "Si: pressure " in lines[0] and "GPa is outside the committee's training range" in lines[0]
    assert "[-7.876, 15.14] GPa (committee domain: pressure_GPa)" in lines[0]
    assert "volume per atom" not in proc.stderr  # 16.0 Å³/atom: inside the recorded range (β-Sn frames)
    summary = (tmp_path / "md" / "summary.md").read_text()  # the warning is among the conclusions
    assert "## Warnings" in summary and "(committee domain: pressure_GPa)" in summary


def test_calibrate_record_domain_writes_domain_and_trust(tmp_path):
    """committee-calibrate --record-domain: the committee's training set's domain and the given
    force-spread threshold land in the committee YAML; a committee without a training file is
    refused before any output."""
    from driver_inputs import make_inputs
    from drivers.calibrate import main

    i = make_inputs(tmp_path, training=True)
    args = [i["structure"], "--committee", i["committee"], "--reference", i["reference"], "--out",
            str(tmp_path / "calib"), "--threshold-forces-std-max-eVA", "0.25", "--methods", "alpha",
            "--no-plots", "--record-domain"]
    assert main(args) == 0
    data = yaml.safe_load(Path(i["committee"]).read_text())
    assert data["domain"]["elements"] and "volume_per_atom_A3" in data["domain"]
    assert data["trust"] == {"forces_std_max": 0.25}
    (tmp_path / "plain").mkdir()
    plain = make_inputs(tmp_path / "plain")
    args = [plain["structure"], "--committee", plain["committee"], "--reference", plain["reference"],
            "--out", str(tmp_path / "calib2"), "--no-plots", "--record-domain"]
    assert main(args) == 2
    assert not (tmp_path / "calib2").exists()


def test_committee_only_gate_warns_once_when_the_spread_passes_the_trust_threshold():
    """Gap closed in the gate: a committee-only run (no reference) checks the aggregated spreads
    against the committee YAML's ``trust:`` thresholds, once per structure, naming the measure."""
    spec = {"members": [{"backend": "ase", "calculator": "ase.calculators.emt.EMT", "parameters": {}},
                        {"backend": "ase", "calculator": "ase.calculators.lj.LennardJones",
                         "parameters": {"sigma": 2.3, "epsilon": 0.2, "rc": 5.0}}],
            "trust": {"forces_std_max": 0.01, "source": "test"}}
    committee = build_committee(spec)
    assert watch(committee) is not None
    gate = Gate(committee)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spreads = []
        for k in range(4):  # one structure along a trajectory: warned about once
            a = atoms.copy()
            a.rattle(0.05, seed=k)
            spreads.append(gate.evaluate(a).measures["forces_std_max"])
        gate.evaluate_many([atoms, atoms])
    assert min(spreads) > 0.01
    said = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert len(said) == 1, said
    assert said[0].startswith("Cu: max atomic force spread ") and "eV/Å is above the committee's calibrated " \
        "trust threshold 0.01 eV/Å (committee trust: forces_std_max)" in said[0], said
    assert f"{spreads[0]:.4g} eV/Å" in said[0]
    ref = Gate(committee, EMT(), thresholds={"forces_std_max_eVA": 1e3})  # with a reference: the gate decides
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = atoms.copy()
        b.info["candidate"] = "c1"
        ref.evaluate(b)
    assert not [w for w in caught if issubclass(w.category, DomainWarning)]
