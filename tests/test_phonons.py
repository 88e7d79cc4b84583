"""Harmonic layer: phonopy wrapper, committee forces, gate fallback, warnings."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.mixing import LinearCombinationCalculator
from ase.spacegroup import crystal

from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.members.ase_member import ASEMember
from committee_calc.phonons.forces import compute_forces
from committee_calc.phonons.harmonic import harmonic_from_forces, report_imaginary, run_phonons
from committee_calc.phonons.settings import PhononSettings, PhononWarning
from committee_calc.phonons.supercell import make_phonopy
from committee_calc.units import PHONOPY_EV_TO_JMOL, PHONOPY_EV_TO_KJMOL

DATA = Path(__file__).parent / "data" / "qha"
pytestmark = pytest.mark.filterwarnings("ignore:Half-grid shift")


def _nacl(nac: bool):
    import phonopy

    d = DATA / "nacl_harmonic_phonopy_example" / "inputs"
    return phonopy.load(d / "phonopy_disp.yaml", force_sets_filename=d / "FORCE_SETS",
                        born_filename=d / "BORN" if nac else None, is_nac=nac, produce_fc=False)


@pytest.mark.parametrize("nac", [False, True])
def test_nacl_frequencies_and_thermal_from_forces(nac):
    """NaCl FORCE_SETS -> our harmonic step -> phonopy's frequencies (1e-4 THz) and F, S, C_V."""
    ref = json.loads((DATA / "nacl_harmonic_phonopy_example" / "reference" /
                      "nacl_harmonic_summary.json").read_text())["nac" if nac else "nonac"]
    ph = _nacl(nac)
    # phonopy.load(produce_fc=True), the fixture's recipe, symmetrises the force constants
    settings = PhononSettings(supercell_matrix=2, mesh=(16, 16, 16), t_max_K=1000,
                              symmetrize_fc=True)
    res = harmonic_from_forces(ph, ph.forces, settings)
    assert res.n_atoms_primitive == 2  # per primitive cell, not the 8-atom POSCAR cell
    assert not res.imaginary_modes
    qs = {"X(0.5,0.5,0)": [0.5, 0.5, 0], "L(0.5,0.5,0.5)": [0.5, 0.5, 0.5],
          "W(0.5,0.25,0.75)": [0.5, 0.25, 0.75], "near-Gamma(0.05,0,0)": [0.05, 0, 0]}
    res.phonopy.run_qpoints([qs[k] for k in qs])
    freqs = res.phonopy.qpoints.frequencies
    for f, k in zip(freqs, qs):
        np.testing.assert_allclose(f, ref["qpoint_frequencies_THz"][k], atol=1e-4)
    for t, vals in ref["thermal_at"].items():
        i = int(np.argmin(np.abs(res.temperatures_K - float(t))))
        assert res.free_energy_eV[i] * PHONOPY_EV_TO_KJMOL == pytest.approx(vals["free_energy_kJmol"], abs=1e-6)
        assert res.entropy_eV_per_K[i] * PHONOPY_EV_TO_JMOL == pytest.approx(vals["entropy_JKmol"], abs=1e-6)
        assert res.heat_capacity_eV_per_K[i] * PHONOPY_EV_TO_JMOL == pytest.approx(vals["cv_JKmol"], abs=1e-6)


def test_settings_validation_and_gamma_trap():
    assert PhononSettings(mesh=(20, 20, 20)).exclude_gamma_acoustic is False
    assert PhononSettings(mesh=(21, 21, 21)).exclude_gamma_acoustic is True   # auto
    assert PhononSettings(mesh=(20, 20, 20), is_gamma_center=True).exclude_gamma_acoustic is True
    with pytest.warns(PhononWarning, match="contains Γ"):
        PhononSettings(mesh=(21, 21, 21), exclude_gamma_acoustic=False)
    with pytest.raises(ConfigError, match="supercell_matrix"):
        PhononSettings(supercell_matrix=[1, 2])
    with pytest.raises(ConfigError, match="singular"):
        PhononSettings(supercell_matrix=0)
    with pytest.raises(ConfigError):
        PhononSettings(distance_A=-0.01)
    with pytest.raises(ConfigError, match="t_max_K"):
        PhononSettings(t_min_K=0, t_max_K=10, t_step_K=10)


def test_supercell_smaller_than_twice_cutoff_warns():
    com = CommitteeCalculator([ASEMember(EMT(), cutoff=5.0), ASEMember(EMT(), cutoff=5.0)])
    at = bulk("Cu", "fcc", a=3.59)
    with pytest.warns(PhononWarning, match="less than twice the committee cutoff"):
        run_phonons(at, Gate(com), PhononSettings(supercell_matrix=2, mesh=(4, 4, 4), t_max_K=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PhononWarning)
        run_phonons(at, Gate(com), PhononSettings(supercell_matrix=5, mesh=(4, 4, 4), t_max_K=100))


def test_imaginary_modes_are_reported_with_qpoint():
    at = bulk("Cu", "fcc", a=3.59)
    s = PhononSettings(mesh=(4, 4, 4), t_max_K=100)
    ph = make_phonopy(at, s)
    fs = compute_forces(ph, Gate(EMT()))
    res = harmonic_from_forces(ph, -fs.forces, s)   # an unstable (inverted) force field
    assert res.imaginary_modes and all(f < -0.05 for _, f in res.imaginary_modes)
    assert all(len(q) == 3 for q, _ in res.imaginary_modes)
    with pytest.warns(PhononWarning, match=r"volume 03.*imaginary mode.*THz at q="):
        report_imaginary(res, "volume 03")


def test_committee_members_and_mean_potential():
    """Identical members: zero spread; scaled members: frequencies scale with sqrt(w)."""
    at = bulk("Cu", "fcc", a=3.59)
    s = PhononSettings(mesh=(6, 6, 6), t_max_K=200)
    single = run_phonons(at, Gate(EMT()), s)
    same = run_phonons(at, Gate(CommitteeCalculator([EMT(), EMT()])), s)
    np.testing.assert_array_equal(same.mean.free_energy_eV, single.mean.free_energy_eV)
    assert np.all(same.spread("free_energy_eV") == 0)
    com = CommitteeCalculator([LinearCombinationCalculator([EMT()], [w]) for w in (0.97, 1.0, 1.03)])
    r = run_phonons(at, Gate(com), s)
    assert len(r.members) == 3
    np.testing.assert_allclose(r.members[0].frequencies_THz, single.mean.frequencies_THz * np.sqrt(0.97),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(r.mean.frequencies_THz, single.mean.frequencies_THz, rtol=1e-9, atol=1e-9)
    assert np.all(r.spread("free_energy_eV")[1:] > 0)


def test_gate_fallback_recomputes_exactly_uncertain_supercells(tmp_path):
    """One deliberately wrong member: only supercells above the force threshold go to the
    reference, and exactly those are appended to the label store."""
    from committee_calc.labels import LabelStore

    at = crystal(["Au", "Cu"], [(0, 0, 0), (0, 0.5, 0.5)], spacegroup=221, cellpar=3.75)
    s = PhononSettings(supercell_matrix=2, mesh=(6, 6, 6), t_max_K=200)
    com = CommitteeCalculator([EMT(), EMT(), LinearCombinationCalculator([EMT()], [2.0])])
    ph = make_phonopy(at, s)
    std = compute_forces(ph, Gate(com)).forces_std_max
    assert len(std) == 2 and abs(std[0] - std[1]) > 1e-3
    threshold = float(np.mean(std))
    above = [i for i, v in enumerate(std) if v > threshold]
    store = LabelStore(tmp_path / "labels.extxyz")
    gate = Gate(com, EMT(), thresholds={"forces_std_max": threshold}, label_store=store,
                provenance={"driver": "qha"})
    res = run_phonons(at, gate, s)
    fs = res.forces
    assert [i for i, d in enumerate(fs.decisions) if d == "reference"] == above
    assert len(store) == len(above) == gate.n_reference_calls
    ref = compute_forces(ph, Gate(EMT())).forces
    for i in above:  # reference forces used for the mean and every member
        np.testing.assert_allclose(fs.forces[i], ref[i], atol=1e-12)
        for k in range(3):
            np.testing.assert_allclose(fs.forces_members[k, i], ref[i], atol=1e-12)
    below = [i for i in range(2) if i not in above]
    for i in below:
        assert not np.allclose(fs.forces_members[2, i], ref[i])
    labels = store.read()
    np.testing.assert_allclose(labels[0].arrays["REF_forces"], ref[above[0]], atol=1e-8)
    # provenance names the displaced supercell (batched evaluation keeps step = its index)
    assert labels[0].info["prov_step"] == above[0] == labels[0].info["prov_displacement"]
    assert labels[0].info["prov_driver"] == "qha"


def test_only_a_gate_is_accepted_as_evaluator():
    """Behaviour change (issue 13): science functions take exactly one evaluator, a Gate; a
    bare calculator or committee is a ConfigError that says how to wrap it."""
    from committee_calc.phonons.volumes import relax_structure, run_volume_point, static_energies

    at = bulk("Cu", "fcc", a=3.59)
    s = PhononSettings(mesh=(4, 4, 4), t_max_K=100)
    com = CommitteeCalculator([EMT(), EMT()])
    for call in (lambda: compute_forces(make_phonopy(at, s), EMT()),
                 lambda: run_phonons(at, com, s),
                 lambda: run_volume_point(at, com, s),
                 lambda: relax_structure(at, EMT()),
                 lambda: static_energies(at, com)):
        with pytest.raises(ConfigError, match=r"Gate\(committee\)"):
            call()


def test_displaced_supercells_are_one_batched_gate_call(monkeypatch):
    """All displaced supercells go to the committee in one ``predict`` call; a plain
    calculator behind ``Gate(calc)`` gives decision "committee" (formerly "calculator"),
    no members and no spread."""
    at = crystal(["Au", "Cu"], [(0, 0, 0), (0, 0.5, 0.5)], spacegroup=221, cellpar=3.75)
    s = PhononSettings(supercell_matrix=2, mesh=(4, 4, 4), t_max_K=100)
    ph = make_phonopy(at, s)
    com = CommitteeCalculator([EMT(), EMT()])
    calls = []
    predict = com.predict
    monkeypatch.setattr(com, "predict", lambda images, **kw: calls.append(len(images)) or predict(images, **kw))
    gate = Gate(com)
    fs = compute_forces(ph, gate)
    n = len(ph.supercells_with_displacements)
    assert calls == [n] and gate.n_committee_calls == n
    assert fs.forces_members.shape == (2, n, len(ph.supercell), 3)
    plain = compute_forces(ph, Gate(EMT()))
    assert plain.decisions == ("committee",) * n and plain.n_reference == 0
    assert plain.forces_members is None and plain.forces_std_max is None
    np.testing.assert_array_equal(plain.forces, fs.forces)
