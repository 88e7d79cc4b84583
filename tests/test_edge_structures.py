"""Edge-case structures: one-atom labels and periodic structures without a usable cell."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.io import write

from committee_calc import CommitteeCalculator
from committee_calc.errors import CellError
from committee_calc.gate import Gate
from committee_calc.io import attach_uncertainties, read_uncertainties
from committee_calc.structures import check_cell, read_structures


def _one_cu():
    return Atoms("Cu", positions=[[6, 6, 6]], cell=[12, 12, 12], pbc=True)


def test_one_atom_label_is_stored_with_its_atom_axis(tmp_path):
    """An isolated atom (an E0 reference) through a gate: the label is stored, per-atom arrays keep
    their atom axis: REF_forces (1, 3), forces_std (1, 3), forces_members (M, 1, 3)."""
    com = CommitteeCalculator([EMT(), LennardJones(sigma=2.3, epsilon=0.4, rc=6.0)])
    gate = Gate(com, EMT(), thresholds={"energy_std": 1e-6}, label_store=tmp_path / "l.extxyz")
    res = gate.evaluate(_one_cu())
    assert res.decision == "reference" and res.label_index == 0
    (frame,) = gate.label_store.read()
    assert frame.arrays["REF_forces"].shape == (1, 3)
    u = read_uncertainties(frame)
    assert u["forces"].shape == (1, 3) and u["forces_std"].shape == (1, 3)
    assert u["forces_std_atom"].shape == (1,)
    assert u["forces_members"].shape == (2, 1, 3)
    np.testing.assert_allclose(u["forces_members"], res.committee_results["forces_members"], atol=1e-8)


def test_one_atom_round_trip_through_extxyz(tmp_path):
    atoms = _one_cu()
    atoms.calc = CommitteeCalculator([EMT(), LennardJones(sigma=2.3, epsilon=0.4, rc=6.0)])
    atoms.get_forces()
    out = attach_uncertainties(atoms.copy(), atoms.calc.results)
    write(tmp_path / "a.extxyz", out)
    back = read_uncertainties(read_structures(tmp_path / "a.extxyz")[0])
    assert back["forces_members"].shape == (2, 1, 3) and back["energies_members"].shape == (2, 1)


@pytest.mark.parametrize("cell,match", [
    ([0, 0, 0], "no lattice vector"),
    ([[5, 0, 0], [0, 5, 0], [0, 0, 0]], "no lattice vector"),
    ([[5, 0, 0], [5, 0, 0], [0, 0, 5]], "degenerate"),
])
def test_periodic_structure_without_usable_cell_is_refused(tmp_path, cell, match):
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=cell, pbc=True)
    atoms = dimer.copy()
    atoms.calc = CommitteeCalculator([EMT(), EMT()])
    with pytest.raises(CellError, match=match):      # at evaluation, before any member runs
        atoms.get_potential_energy()
    path = tmp_path / "dimer.extxyz"
    path.write_text(f"2\nLattice=\"{' '.join(str(float(x)) for x in np.ravel(np.array(dimer.cell)))}\" "
                    "Properties=species:S:1:pos:R:3 pbc=\"T T T\"\nCu 0 0 0\nCu 0 0 2.5\n")
    with pytest.raises(CellError, match=match):      # at read time, in the drivers' reader
        read_structures(path)
    check_cell(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]))  # non-periodic: no cell needed
