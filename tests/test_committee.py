"""CommitteeCalculator: drop-in use, consistency with finite differences, exact spreads."""
import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from committee_calc import CommitteeCalculator
from committee_calc.uncertainty import FORCE_FLOOR
from helpers import CountingEMT, cu_cell, emt_members, member_stack


@pytest.fixture
def committee():
    return CommitteeCalculator(emt_members(3))


def test_means_and_spreads_equal_numpy_of_members(committee):
    atoms = cu_cell()
    atoms.calc = committee
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    s = atoms.get_stress()
    members = emt_members(3)
    E = member_stack(members, atoms, "energy")
    F = member_stack(members, atoms, "forces")
    S = member_stack(members, atoms, "stress")
    r = committee.results
    assert e == pytest.approx(E.mean(), abs=0, rel=1e-14)
    np.testing.assert_array_equal(r["energy_members"], E)
    np.testing.assert_array_equal(r["forces_members"], F)
    np.testing.assert_allclose(f, F.mean(axis=0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(s, S.mean(axis=0), rtol=0, atol=1e-14)
    assert r["energy_std"] == np.std(E, ddof=1)
    np.testing.assert_array_equal(r["forces_std"], np.std(F, axis=0, ddof=1))
    np.testing.assert_array_equal(r["stress_std"], np.std(S, axis=0, ddof=1))
    fsa = np.sqrt((np.std(F, axis=0, ddof=1) ** 2).sum(axis=1))
    np.testing.assert_allclose(r["forces_std_atom"], fsa, rtol=1e-15)
    assert r["forces_std_max"] == pytest.approx(fsa.max(), rel=1e-15)
    fmax = np.linalg.norm(F.mean(axis=0), axis=1).max()
    assert r["force_uncertainty_relative"] == pytest.approx(fsa.max() / fmax, rel=1e-14)
    assert r["energy_std_per_atom"] == pytest.approx(r["energy_std"] / len(atoms))
    assert r["n_nonfinite"] == 0
    # every stored key is declared
    assert set(r) - {"n_molecules"} <= set(committee.implemented_properties)
    assert r["energy"] == r["free_energy"]


def test_forces_and_stress_are_derivatives_of_mean_energy(committee):
    atoms = cu_cell(rattle=0.1, seed=3)
    atoms.set_cell(atoms.cell * [1.01, 0.99, 1.0], scale_atoms=True)
    atoms.calc = committee
    f = atoms.get_forces()
    s = atoms.get_stress()
    fnum = calculate_numerical_forces(atoms, eps=1e-4)
    snum = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(f, fnum, atol=1e-4)
    np.testing.assert_allclose(s, snum, atol=1e-5)


def test_drop_in_bfgs_with_cell_filter(committee):
    atoms = cu_cell(rattle=0.05)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    atoms.calc = committee
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    assert opt.run(fmax=0.01, steps=200)
    assert np.abs(atoms.get_forces()).max() < 0.01
    # FrechetCellFilter converges the virial per atom: |σ|·V/N below fmax
    assert np.abs(atoms.get_stress()).max() * atoms.get_volume() / len(atoms) < 0.01
    assert atoms.calc is committee


def test_drop_in_md_verlet_and_langevin(committee):
    atoms = cu_cell(rattle=0.0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0),
                                 force_temp=True)
    atoms.calc = committee
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=2 * units.fs).run(50)
    assert abs(atoms.get_total_energy() - e0) < 2e-3 * len(atoms)
    Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02,
             rng=np.random.default_rng(1)).run(20)
    assert np.isfinite(atoms.get_potential_energy())
    assert "energy_std" in committee.results


def test_ase_caching_no_recompute():
    members = [CountingEMT(), CountingEMT(), CountingEMT()]
    from ase.calculators.mixing import LinearCombinationCalculator

    wrapped = [LinearCombinationCalculator([m], [w]) for m, w in zip(members, (0.98, 1.0, 1.02))]
    c = CommitteeCalculator(wrapped)
    atoms = cu_cell()
    atoms.calc = c
    c.get_property("energy_std", atoms)
    calls = [m.ncalc for m in members]
    assert calls == [1, 1, 1]
    atoms.get_forces()
    atoms.get_stress()
    c.get_property("forces_std_max", atoms)
    c.get_property("energy_std", atoms)
    assert [m.ncalc for m in members] == calls
    assert c.n_calls == 1
    atoms.positions[0, 0] += 0.01
    c.get_property("energy_std", atoms)
    assert [m.ncalc for m in members] == [2, 2, 2]
    assert c.member_calls == [2, 2, 2]


def test_user_calc_and_atoms_untouched(committee):
    atoms = cu_cell()
    mine = EMT()
    atoms.calc = mine
    before = atoms.copy()
    committee.get_property("energy", atoms)
    committee.get_property("forces_std", atoms)
    assert atoms.calc is mine
    assert atoms == before
    np.testing.assert_array_equal(atoms.positions, before.positions)
    for m in committee.members:
        assert m.calc.atoms is not atoms


def test_energies_only_when_all_members_provide_them():
    c = CommitteeCalculator([EMT(), EMT(asap_cutoff=True)])
    atoms = cu_cell()
    c.get_property("energy", atoms)
    assert c.results["energies"].shape == (len(atoms),)
    np.testing.assert_allclose(c.results["energies"].sum(), c.results["energy"], atol=1e-10)


def test_non_periodic_structure_has_no_stress(committee):
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.set_chemical_symbols(["Cu", "Cu", "Cu"])
    atoms.positions *= 2.6
    atoms.center(vacuum=5)
    atoms.pbc = False
    assert np.isfinite(committee.get_property("energy", atoms))
    assert "stress" not in committee.results
    from committee_calc.errors import MemberPropertyError

    with pytest.raises(MemberPropertyError, match="not 3-D periodic"):
        committee.get_property("stress", atoms)


def test_relative_uncertainty_floor_at_zero_force():
    atoms = cu_cell(rattle=0.0)  # perfect fcc: forces vanish by symmetry
    c = CommitteeCalculator(emt_members(3))
    c.get_property("energy", atoms)
    assert c.results["forces_std_max"] < 1e-10
    assert c.results["force_uncertainty_relative"] == pytest.approx(
        c.results["forces_std_max"] / FORCE_FLOOR)


def test_per_molecule_uncertainty_from_connectivity():
    from ase.build import molecule
    from ase.calculators.lj import LennardJones

    from committee_calc.units import ev_to_kjmol

    atoms = molecule("H2O")
    w2 = atoms.copy()
    w2.translate([4.0, 0, 0])
    atoms += w2
    atoms.cell = [10, 10, 10]
    atoms.pbc = True
    members = [LennardJones(sigma=2.0 + 0.05 * i, epsilon=0.01, rc=4.5, smooth=True) for i in range(3)]
    c = CommitteeCalculator(members, molecules="auto")
    c.get_property("energy", atoms)
    assert c.results["n_molecules"] == 2
    per_mol = c.results["energy_std_per_molecule"]
    assert per_mol == pytest.approx(c.results["energy_std"] / 2)
    assert ev_to_kjmol(per_mol) == pytest.approx(per_mol * 96.485332, rel=1e-5)
    c2 = CommitteeCalculator([LennardJones(sigma=2.0 + 0.05 * i, epsilon=0.01, rc=4.5, smooth=True)
                              for i in range(3)], molecules=4)
    c2.get_property("energy", atoms)
    assert c2.results["energy_std_per_molecule"] == pytest.approx(c2.results["energy_std"] / 4)


def test_calibration_scales_spreads_not_means():
    atoms = cu_cell()
    raw = CommitteeCalculator(emt_members(3))
    cal = CommitteeCalculator(emt_members(3), calibration={"energy": 2.0, "forces": 3.0})
    raw.get_property("energy", atoms)
    cal.get_property("energy", atoms)
    assert cal.results["energy"] == raw.results["energy"]
    assert cal.results["energy_std"] == pytest.approx(2.0 * raw.results["energy_std"], rel=1e-14)
    np.testing.assert_allclose(cal.results["forces_std"], 3.0 * raw.results["forces_std"], rtol=1e-14)
    np.testing.assert_allclose(cal.results["stress_std"], raw.results["stress_std"], rtol=1e-14)


def test_predict_many_structures_matches_single_calls(committee):
    images = [cu_cell(seed=s) for s in range(3)]
    many = committee.predict(images)
    for atoms, res in zip(images, many):
        one = CommitteeCalculator(emt_members(3))
        one.get_property("energy", atoms)
        assert res["energy"] == pytest.approx(one.results["energy"], rel=1e-14)
        np.testing.assert_allclose(res["forces_std"], one.results["forces_std"], atol=1e-12)


def test_class_level_properties_not_mutated():
    from ase.calculators.calculator import Calculator

    before = tuple(CommitteeCalculator.implemented_properties)
    base = list(Calculator.implemented_properties)
    c = CommitteeCalculator([EMT(), EMT()], stress=False)
    assert isinstance(c.implemented_properties, tuple)
    assert CommitteeCalculator.implemented_properties == before
    assert list(Calculator.implemented_properties) == base
