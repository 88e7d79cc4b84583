"""Reference runner: failures and timeouts are reported and saved, never labelled; GPAW label."""
import os
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from committee_calc import CommitteeCalculator
from committee_calc.errors import ConfigError, ReferenceCalculationError
from committee_calc.gate import Gate
from committee_calc.labels import LabelStore
from committee_calc.reference import Reference, default_reference, load_reference, reference_from_dict

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


class Broken(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("SCF did not converge in 300 iterations")


class Sleepy(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(60)
        super().calculate(atoms, properties, system_changes)


class NaNForces(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["forces"] = self.results["forces"] * np.nan


def _uncertain_gate(reference, store):
    com = CommitteeCalculator([LennardJones(sigma=2.3 + 0.05 * i, epsilon=0.3, rc=4.5)
                               for i in range(2)])
    return Gate(com, reference, thresholds={"forces_std_max": 1e-6}, label_store=store)


def _cu():
    a = bulk("Cu", cubic=True)
    a.rattle(0.05, seed=3)
    return a


@pytest.mark.parametrize("reference,reason", [
    (Broken(), "SCF did not converge"),
    (NaNForces(), "forces not finite"),
])
def test_failing_reference_is_reported_and_saved(tmp_path, reference, reason):
    store = LabelStore(tmp_path / "labels.extxyz")
    store.append(_cu(), {"energy": 1.0})
    before = store.path.read_bytes()
    atoms = _cu()
    atoms.calc = _uncertain_gate(reference, store)
    with pytest.raises(ReferenceCalculationError, match=reason) as err:
        atoms.get_potential_energy()
    assert store.path.read_bytes() == before and len(store) == 1
    saved = list((tmp_path / "failed").glob("*/structure.extxyz"))
    assert len(saved) == 1 and str(saved[0].parent) in str(err.value)
    from ase.io import read

    s = read(saved[0])
    np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-7)
    assert reason.split()[0] in s.info["failure_reason"]
    assert atoms.calc.n_labels == 0


def test_reference_timeout_kills_the_call(tmp_path):
    store = LabelStore(tmp_path / "labels.extxyz")
    ref = Reference(Sleepy(), timeout_s=2.0, workdir=tmp_path / "work")
    assert ref.isolation == "process"
    gate = _uncertain_gate(ref, store)
    t0 = time.monotonic()
    with pytest.raises(ReferenceCalculationError, match="timeout after 2.0 s"):
        gate.evaluate(_cu())
    assert time.monotonic() - t0 < 30
    assert len(store) == 0
    folders = list((tmp_path / "failed").iterdir())
    assert len(folders) == 1 and (folders[0] / "structure.extxyz").exists()
    assert "timeout" in (folders[0] / "error.txt").read_text()
    assert not list((tmp_path / "work").iterdir())  # per-call working dir cleaned up


def test_process_isolation_gives_the_same_numbers(tmp_path):
    atoms = _cu()
    inline = Reference(EMT()).compute(atoms, ["energy", "forces", "stress"])
    spec = reference_from_dict({"calculator": "ase.calculators.emt.EMT", "timeout_s": 60})
    proc = Reference(spec, failed_dir=tmp_path / "failed").compute(atoms, ["energy", "forces", "stress"])
    assert proc["energy"] == pytest.approx(inline["energy"], abs=1e-12)
    np.testing.assert_allclose(proc["forces"], inline["forces"], atol=1e-12)
    np.testing.assert_allclose(proc["stress"], inline["stress"], atol=1e-12)
    assert atoms.calc is None


def test_fresh_instance_per_call():
    calc = EMT()
    ref = Reference(calc)
    a, b = _cu(), bulk("Cu", cubic=True)
    ea = ref.compute(a)["energy"]
    eb = ref.compute(b)["energy"]
    assert ea != eb and calc.atoms is None  # the given instance itself was never used
    assert ref.n_calls == 2


def test_spec_validation_and_hash(tmp_path):
    with pytest.raises(ConfigError):
        reference_from_dict({"parameters": {}})
    with pytest.raises(ConfigError, match="unknown reference keys"):
        reference_from_dict({"calculator": "gpaw.GPAW", "ecut": 300})
    with pytest.raises(ConfigError):
        reference_from_dict({"calculator": "gpaw.GPAW", "timeout_s": 10, "isolation": "inline"})
    with pytest.raises(ConfigError):
        reference_from_dict({"calculator": "gpaw.GPAW", "timeout_s": -1})
    a = reference_from_dict({"calculator": "gpaw.GPAW", "parameters": {"xc": "PBE"}})
    b = reference_from_dict({"calculator": "gpaw.GPAW", "parameters": {"xc": "PBE"}})
    c = reference_from_dict({"calculator": "gpaw.GPAW", "parameters": {"xc": "LDA"}})
    assert a.hash == b.hash != c.hash
    ex = load_reference(os.path.join(EXAMPLES, "reference_gpaw.yaml"))
    assert ex.calculator == "gpaw.GPAW" and ex.parameters["mode"]["name"] == "pw"
    assert default_reference().parameters["xc"] == "PBE"


def test_gpaw_reference_appends_a_real_dft_label(tmp_path):
    pytest.importorskip("gpaw")
    spec = reference_from_dict({
        "calculator": "gpaw.GPAW",
        "parameters": {"mode": {"name": "pw", "ecut": 250}, "xc": "PBE", "kpts": [2, 2, 2],
                       "convergence": {"energy": 1e-4}, "txt": "{workdir}/gpaw.txt"}})
    store = LabelStore(tmp_path / "labels.extxyz")
    com = CommitteeCalculator([LennardJones(sigma=2.2 + 0.05 * i, epsilon=0.3, rc=4.0)
                               for i in range(2)])
    gate = Gate(com, spec, thresholds={"forces_std_max": 1e-6}, label_store=store,
                provenance={"driver": "gpaw-test"})
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=1)
    atoms.calc = gate
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    assert gate.results["gate_decision"] == "reference" and gate.n_labels == 1
    assert -12.0 < e < -9.0  # PBE Si2 is about -10.8 eV in GPAW's reference-atom convention
    assert np.allclose(f.sum(axis=0), 0.0, atol=1e-2)  # translational invariance of DFT forces
    label = store.read()[0]
    assert label.info["REF_energy"] == pytest.approx(e)
    np.testing.assert_allclose(label.arrays["REF_forces"], f, atol=1e-7)
    assert label.info["REF_stress"].shape == (6,)
    assert label.info["prov_reference_hash"] == spec.hash
    assert label.info["prov_reference"] == "gpaw.GPAW"
