"""QHA layer: phonopy-qha reproduction, committee aggregation (cu_emt_committee), bad input."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.mixing import LinearCombinationCalculator

from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.phonons.qha import QHAInputs, QHAWarning, inputs_from_points, run_committee_qha, run_qha_arrays
from committee_calc.phonons.qha_io import inputs_from_phonopy_files, read_qha_csv
from committee_calc.phonons.settings import PhononSettings
from committee_calc.phonons.volumes import run_volume_point, scaled_structures
from committee_calc.units import PHONOPY_EV_A3_TO_GPA, PHONOPY_EV_TO_JMOL

DATA = Path(__file__).parent / "data" / "qha"
SCALES = [0.99, 0.995, 1.0, 1.005, 1.01, 1.015, 1.02, 1.025, 1.03]
pytestmark = pytest.mark.filterwarnings("ignore:Half-grid shift")
#: cu_emt tolerances: (our attribute, reference key, factor to reference unit, atol)
TOL = [("volume_A3", "volume_A3", 1.0, 1e-5), ("gibbs_eV", "gibbs_eV", 1.0, 1e-6),
       ("bulk_modulus_eV_A3", "bulk_modulus_GPa", PHONOPY_EV_A3_TO_GPA, 2e-3),
       ("thermal_expansion_per_K", "thermal_expansion_volumetric_per_K", 1.0, 1e-8),
       ("heat_capacity_P_eV_per_K", "heat_capacity_P_polyfit_J_per_K_mol", PHONOPY_EV_TO_JMOL, 1e-3)]


def _cu_emt_inputs(idx=range(9)):
    d = DATA / "cu_emt" / "inputs"
    idx = list(idx)
    full = inputs_from_phonopy_files(d / "e-v.dat", [d / f"thermal_properties.yaml-{i:02d}"
                                                     for i in range(9)])
    return QHAInputs(full.volumes_A3[idx], full.energies_eV[idx], full.temperatures_K,
                     full.free_energy_eV[:, idx], full.entropy_eV_per_K[:, idx],
                     full.heat_capacity_eV_per_K[:, idx])


@pytest.mark.parametrize("case,efe", [("reference", False), ("reference_efe", True)])
def test_cu_qha_phonopy_example_via_driver(tmp_path, case, efe):
    from drivers.qha import run

    d = DATA / "cu_qha_vasp_phonopy_example"
    argv = ["--ev", str(d / "inputs" / "e-v.dat"), "--thermal-properties",
            *[str(d / "inputs" / f"thermal_properties.yaml-{i:02d}") for i in range(11)],
            "--out", str(tmp_path), "--qha-tmax-K", "1300", "--no-plots"]
    if efe:
        argv += ["--efe", str(d / "inputs" / "fe-v.dat")]
    assert run(argv) == 0
    got = read_qha_csv(tmp_path / "qha.csv")
    assert len(got["T_K"]) == 131 and got["T_K"][-1] == 1300
    checks = [("V_A3", "volume-temperature", 1e-6), ("G_eV", "gibbs-temperature", 1e-7),
              ("B_T_GPa", "bulk_modulus-temperature", 1e-4),
              ("beta_V_per_K", "thermal_expansion", 1e-10),
              ("C_P_numerical_J_per_K_mol", "Cp-temperature", 1e-4)]
    if not efe:
        checks.append(("C_P_J_per_K_mol", "Cp-temperature_polyfit", 1e-4))
    for col, name, atol in checks:
        ref = np.loadtxt(d / case / f"{name}.dat")
        n = min(len(ref), len(got["T_K"]))
        np.testing.assert_allclose(got["T_K"][:n], ref[:n, 0])
        np.testing.assert_allclose(got[col][:n], ref[:n, 1], atol=atol, err_msg=col)


def test_cu_emt_qha_layer_from_thermal_yaml():
    """The 7-decimal yaml of cu_emt -> QHA within the cu_emt tolerances (80 temperatures)."""
    ref = json.loads((DATA / "cu_emt" / "reference" / "qha_summary.json").read_text())
    r = run_qha_arrays(_cu_emt_inputs())
    assert len(r.temperatures_K) == 80
    np.testing.assert_array_equal(r.temperatures_K, np.arange(0, 800, 10))
    for attr, key, f, atol in TOL:
        np.testing.assert_allclose(getattr(r, attr) * f, ref[key], atol=atol, err_msg=attr)


def test_too_few_volumes_and_unbracketed_range():
    with pytest.raises(ConfigError, match="at least 5 volumes"):
        _cu_emt_inputs(range(4))
    # volumes 3..8 lie above the E(V) minimum (index 2): warn with the fitted minimum
    with pytest.warns(QHAWarning, match=r"do not bracket the minimum.*fitted minimum is V0 = 11\.5"):
        run_committee_qha(_cu_emt_inputs(range(3, 9)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", QHAWarning)
        run_committee_qha(_cu_emt_inputs(), t_max_K=300)


@pytest.fixture(scope="module")
def committee_qha():
    com = CommitteeCalculator([LinearCombinationCalculator([EMT()], [w]) for w in (0.97, 1.0, 1.03)])
    settings = PhononSettings(supercell_matrix=3, distance_A=0.01, mesh=(20, 20, 20),
                              t_min_K=0, t_max_K=800, t_step_K=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pts = [run_volume_point(a, Gate(com), settings, relax="none")
               for a in scaled_structures(bulk("Cu", "fcc", a=3.59), linear_scales=SCALES)]
    inputs = inputs_from_points([(p.energy_eV, p.phonons) for p in pts],
                                np.array([p.energies_members_eV for p in pts]).T)
    return run_committee_qha(inputs, eos="vinet", ddof=1), pts


def test_cu_emt_committee_members_and_both_aggregations(committee_qha):
    res, pts = committee_qha
    d = DATA / "cu_emt_committee" / "reference"
    members = json.loads((d / "committee_members.json").read_text())
    stats = json.loads((d / "committee_stats.json").read_text())
    cu = json.loads((DATA / "cu_emt" / "reference" / "qha_summary.json").read_text())
    np.testing.assert_allclose([p.energies_members_eV for p in pts],
                               np.array([members[k]["energies_eV"] for k in members]).T, atol=1e-9)
    for k, key in enumerate(["0.97", "1.0", "1.03"]):
        for attr, rkey, f, atol in TOL:
            np.testing.assert_allclose(getattr(res.members[k], attr) * f, members[key][rkey],
                                       atol=atol, err_msg=f"member {key} {attr}")
    for attr, rkey, f, atol in TOL:
        np.testing.assert_allclose(res.stats[attr]["mean"] * f, stats[rkey]["mean"], atol=atol)
        np.testing.assert_allclose(res.stats[attr]["std"] * f, stats[rkey]["std_ddof1"],
                                   atol=np.sqrt(2) * atol)
        # the mean potential (mean w = 1) is plain EMT: cu_emt
        np.testing.assert_allclose(getattr(res.mean_potential, attr) * f, cu[rkey], atol=atol)
    # the two strategies differ by more than the tolerance (QHA is nonlinear in w)
    i300 = 30
    assert abs(res.mean_potential.volume_A3[i300] - res.stats["volume_A3"]["mean"][i300]) > 1e-4


def test_fixed_volume_relaxation_keeps_volume_and_caller_atoms():
    from committee_calc.phonons.volumes import relax_structure

    at = bulk("Cu", "fcc", a=3.6, cubic=True)
    at.rattle(0.05, seed=1)
    at.set_cell(at.cell * [1.02, 1.0, 0.98], scale_atoms=True)
    before = at.positions.copy()
    calc = Gate(EMT())
    for mode in ("internal", "shape"):
        r = relax_structure(at, calc, mode, fmax_eVA=0.01)
        r.calc = EMT()
        assert np.abs(r.get_forces()).max() < 0.011
        assert r.get_volume() == pytest.approx(at.get_volume(), rel=1e-8)
    np.testing.assert_array_equal(at.positions, before)
    assert at.calc is None
    with pytest.raises(ConfigError, match="relax mode"):
        relax_structure(at, calc, "full")


def _spread_committee():
    return CommitteeCalculator([LinearCombinationCalculator([EMT()], [w]) for w in (0.97, 1.0, 1.03)])


def test_volume_point_relaxes_and_weighs_on_the_committee_alone(tmp_path):
    """With a reference behind the gate, the relaxation and the static E(V) stay on the
    committee (one potential-energy surface for the EOS); only displaced supercells fall
    back and are labelled.  static_energies on that gate directly uses what the gate used."""
    from committee_calc.labels import LabelStore
    from committee_calc.phonons.volumes import relax_structure, static_energies

    at = bulk("Cu", "fcc", a=3.6, cubic=True)
    at.rattle(0.02, seed=3)  # forces on the atoms: relaxation needed
    s = PhononSettings(supercell_matrix=1, mesh=(4, 4, 4), t_max_K=100)
    com = _spread_committee()
    ref = LinearCombinationCalculator([EMT()], [2.0])
    gate = Gate(com, ref, thresholds={"forces_std_max_eVA": 1e-9},
                label_store=LabelStore(tmp_path / "labels.extxyz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = run_volume_point(at, gate, s, relax="internal", fmax_eVA=0.01)
        alone = run_volume_point(at, Gate(com), s, relax="internal", fmax_eVA=0.01)
    np.testing.assert_array_equal(p.atoms.positions, alone.atoms.positions)
    assert p.energy_eV == alone.energy_eV
    np.testing.assert_array_equal(p.energies_members_eV, alone.energies_members_eV)
    n = len(p.phonons.forces.decisions)
    assert set(p.phonons.forces.decisions) == {"reference"} and gate.n_labels == n
    assert relax_structure(at, gate, "none").calc is None
    e, em = static_energies(at, gate)  # untrusted: the reference energy for mean and members
    b = at.copy()
    b.calc = ref
    assert e == pytest.approx(b.get_potential_energy()) and np.all(em == e) and em.shape == (3,)


def test_hard_cap_stops_relaxation_and_supercells():
    """Hard caps of the gate stop the volume (GateStop) in the relaxation and, without
    relaxation, at the displaced supercells; formerly ignored without --reference."""
    from committee_calc.errors import GateStop

    at = bulk("Cu", "fcc", a=3.6, cubic=True)
    at.rattle(0.02, seed=3)
    s = PhononSettings(supercell_matrix=2, mesh=(4, 4, 4), t_max_K=100)
    gate = Gate(_spread_committee(), hard_cap={"forces_std_max_eVA": 1e-9})
    with pytest.raises(GateStop, match="relaxation stopped"):
        run_volume_point(at, gate, s, relax="internal")
    with pytest.raises(GateStop):
        run_volume_point(bulk("Cu", "fcc", a=3.6), gate, s, relax="none")


def test_scan_and_options_validated_before_any_output():
    from committee_calc.phonons.qha_run import QHAOptions, VolumeScan

    assert VolumeScan(scale_range=(0.98, 1.02, 5)).n_volumes == 5
    s = VolumeScan(pressures_GPa=[0, 1, 2, 3, 4], relax="none")
    structs, p = s.structures(bulk("Cu", "fcc", a=3.6))
    assert len(structs) == 5 and p == [0.0, 1.0, 2.0, 3.0, 4.0]
    for kw, match in [(dict(), "exactly one"),
                      (dict(linear_scales=SCALES, volume_scales=SCALES), "exactly one"),
                      (dict(linear_scales=SCALES[:4]), "at least 5 volumes"),
                      (dict(scale_range=(0.98, 1.02, 5.5)), "positive integer"),
                      (dict(linear_scales=SCALES, relax="full"), "relax mode"),
                      (dict(linear_scales=SCALES, fmax_eVA=0), "fmax"),
                      (dict(linear_scales=[1, 1, 1, 1, 1]), "distinct volumes"),
                      (dict(volume_scales=[0.9, 0.95, 1.0, 1.0, 1.05]), "distinct volumes"),
                      (dict(linear_scales=[-1, 0.98, 1.0, 1.01, 1.02]), "> 0"),
                      (dict(scale_range=(-1, 1.01, 5)), "0 < MIN < MAX")]:
        with pytest.raises(ConfigError, match=match):
            VolumeScan(**kw)
    with pytest.raises(ConfigError, match="unknown EOS"):
        QHAOptions(eos="bm3")
    with pytest.raises(ConfigError, match="ddof"):
        QHAOptions(ddof=2)
    with pytest.raises(ConfigError, match="band_npoints"):  # formerly only after every volume ran
        QHAOptions(band_npoints=1)


def test_slab_or_rank2_cell_refused_before_any_output(tmp_path):
    """Review E20: a slab (pbc T T F) had its vacuum scaled; like a rank-2 cell it is refused,
    by every QHA path, before the output folder exists."""
    from ase.build import fcc111

    from committee_calc.phonons.qha_run import VolumeScan, run_qha_scan

    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    flat = bulk("Cu", "fcc", a=3.6, cubic=True)
    flat.cell[2] = 0.0
    s = PhononSettings(supercell_matrix=2, mesh=(4, 4, 4), t_max_K=100)
    gate = Gate(_spread_committee())
    for atoms in (slab, flat):
        with pytest.raises(ConfigError, match="not a 3-D periodic crystal"):
            scaled_structures(atoms, linear_scales=SCALES)
        with pytest.raises(ConfigError, match="not a 3-D periodic crystal"):
            run_volume_point(atoms, gate, s, pressure_GPa=1.0)
        for scan in (VolumeScan(linear_scales=SCALES), VolumeScan(pressures_GPa=[0, 1, 2, 3, 4])):
            with pytest.raises(ConfigError, match=r"not a 3-D periodic crystal.*pbc=\[True, True"):
                run_qha_scan(atoms, gate, s, scan, tmp_path / "out")
    assert not (tmp_path / "out").exists() and gate.n_calls == 0
