"""A committee of n2p2 model folders: YAML backend, shared SFs, mean/spread vs oracle data."""
import os

import numpy as np
import pytest
from ase.units import Bohr, Hartree

from committee_calc.config import build_committee
from committee_calc.members import build_members
from committee_calc.members.n2p2 import N2P2Member, read_input_data
from committee_calc.members.n2p2.descriptors import SFEngine

DATA = os.path.join(os.path.dirname(__file__), "data", "n2p2")
COMM = os.path.join(DATA, "H2O_RPBE-D3_committee")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def committee():
    spec = {"members": [{"backend": "n2p2", "path": "member_*", "length_unit": "Bohr",
                         "energy_unit": "Hartree"}]}
    return build_committee(spec, base_dir=COMM)


def structures_in_angstrom(confs):
    s = read_input_data(os.path.join(DATA, "H2O_RPBE-D3", "input.data"))
    out = []
    for k in confs:
        a = s[k - 1].copy()
        a.positions *= Bohr
        if a.pbc.all():
            a.set_cell(a.cell.array * Bohr)
        out.append(a)
    return out


def test_yaml_members_share_one_symmetry_function_pass(committee, monkeypatch):
    assert len(committee.members) == 3
    assert all(isinstance(m, N2P2Member) for m in committee.members)
    assert len({m.group_key() for m in committee.members}) == 1
    assert committee._groups == [[0, 1, 2]]
    calls = []
    orig = SFEngine.values
    monkeypatch.setattr(SFEngine, "values", lambda self, geo: calls.append(1) or orig(self, geo))
    (atoms,) = structures_in_angstrom([9])
    atoms.calc = committee
    atoms.get_forces()
    assert len(calls) == 1


@pytest.mark.parametrize("conf", [2, 8, 9])
def test_mean_and_spread_match_reference(committee, conf):
    e_ref = np.loadtxt(os.path.join(COMM, "committee_energy.out"), comments="#")
    f_ref = np.loadtxt(os.path.join(COMM, "committee_forces.out"), comments="#")
    e_row = e_ref[e_ref[:, 0] == conf][0]
    f_rows = f_ref[f_ref[:, 0] == conf]
    (atoms,) = structures_in_angstrom([conf])
    atoms.calc = committee
    atoms.get_forces()
    r = committee.results
    n = len(atoms)
    tol_e = max(1e-8 * abs(e_row[2]), 1e-7 * n) * Hartree
    np.testing.assert_allclose(r["energy_members"], e_row[4:7] * Hartree, rtol=0, atol=tol_e)
    assert abs(r["energy"] - e_row[2] * Hartree) < tol_e
    # reference spreads are population std (ddof=0); the committee reports ddof=1
    members = np.asarray(r["energy_members"])
    assert abs(members.std(ddof=0) - e_row[3] * Hartree) < tol_e
    assert abs(r["energy_std"] - e_row[3] * Hartree * np.sqrt(3 / 2)) < tol_e * np.sqrt(3 / 2)
    fconv = Hartree / Bohr
    np.testing.assert_allclose(r["forces"], f_rows[:, 2:5] * fconv, atol=1e-6 * fconv, rtol=0)
    fm = np.asarray(r["forces_members"])
    np.testing.assert_allclose(fm.std(axis=0, ddof=0), f_rows[:, 5:8] * fconv, atol=1e-6 * fconv)
    np.testing.assert_allclose(r["forces_std"], f_rows[:, 5:8] * fconv * np.sqrt(3 / 2),
                               atol=2e-6 * fconv)


def test_member_offsets_and_per_member_energies():
    """atom_energy offsets + normalisation: each member reproduces its own n2p2 energies."""
    s = read_input_data(os.path.join(DATA, "H2O_RPBE-D3", "input.data"))
    for k in (1, 2, 3):
        (m,) = build_members({"backend": "n2p2", "path": f"member_{k}"}, base_dir=COMM)
        ref = np.loadtxt(os.path.join(COMM, f"member_{k}", "reference_energy.out"), comments="#")
        assert m.model.atom_energy == {"H": -0.45890771, "O": -74.94518524}
        for conf in (8, 9):
            e = m.predict(s[conf - 1], ["energy"])["energy"]
            row = ref[ref[:, 0] == conf][0]
            assert abs(e - row[3]) < max(1e-8 * abs(row[3]), 1e-7 * row[1])
