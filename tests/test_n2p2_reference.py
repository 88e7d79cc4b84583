"""The native n2p2 evaluator reproduces n2p2 v2.3.0 exactly (oracle data in tests/data/n2p2)."""
import os

import numpy as np
import pytest

from committee_calc.members.n2p2 import N2P2Calculator, N2P2Member, read_input_data

DATA = os.path.join(os.path.dirname(__file__), "data", "n2p2")
#: (fixture, conf) pairs whose evaluation takes > ~5 s (256-atom anisole cells, rc = 15 Bohr)
SLOW = {("Anisole_SCAN", k) for k in (1, 2, 3, 4, 5)}
FIXTURES = {"LJ_Ne": 9, "H2O_RPBE-D3": 9, "Cu2S_PBE": 9, "Anisole_SCAN": 7}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


_cache = {}


def fixture(name):
    """(member in model units, structures, energies, forces, atomic energies) of one fixture."""
    if name not in _cache:
        d = os.path.join(DATA, name)
        ref = {k: np.loadtxt(os.path.join(d, f"reference_{k}.out"), comments="#")
               for k in ("energy", "forces", "atomic_energies")}
        _cache[name] = (N2P2Member(d), read_input_data(os.path.join(d, "input.data")), ref)
    return _cache[name]


def cases():
    for name, n in FIXTURES.items():
        for k in range(1, n + 1):
            marks = [pytest.mark.slow] if (name, k) in SLOW else []
            yield pytest.param(name, k, marks=marks, id=f"{name}-conf{k}")


@pytest.mark.parametrize("name,conf", list(cases()))
def test_matches_n2p2(name, conf):
    member, structures, ref = fixture(name)
    atoms = structures[conf - 1]
    res = member.predict(atoms, ["energy", "forces", "energies"])
    n = len(atoms)
    e_ref = ref["energy"][ref["energy"][:, 0] == conf][0]
    assert int(e_ref[1]) == n
    tol_e = max(1e-8 * abs(e_ref[3]), 1e-7 * n)
    assert abs(res["energy"] - e_ref[3]) < tol_e
    # per-atom NN energies (n2p2 prints them without mean_energy and atom_energy offsets)
    a = ref["atomic_energies"][ref["atomic_energies"][:, 0] == conf]
    idx = [member.model.elements.index(s) for s in atoms.get_chemical_symbols()]
    nn_atomic = res["energies"] - member.offsets[idx]
    assert np.all(a[:, 2] == atoms.numbers)
    np.testing.assert_allclose(nn_atomic, a[:, 6], rtol=1e-8, atol=1e-7)
    assert abs(res["energies"].sum() - res["energy"]) < 1e-9 * max(1.0, abs(res["energy"]))
    f = ref["forces"][ref["forces"][:, 0] == conf][:, 5:8]
    assert np.abs(res["forces"] - f).max() < 1e-6


@pytest.mark.parametrize("name", list(FIXTURES))
def test_symmetry_function_order_matches_n2p2(name):
    member = fixture(name)[0]
    with open(os.path.join(DATA, name, "debug_sf_order.dat")) as fh:
        rows = [line.split() for line in fh if not line.startswith("#") and line.strip()]
    assert sum(len(v) for v in member.model.symfuncs.values()) == len(rows)
    for el, eidx, sfidx, lineno, *_ in rows:
        assert member.model.elements[int(eidx) - 1] == el          # Z order
        assert member.model.symfuncs[el][int(sfidx) - 1].lineno == int(lineno)


def test_lattice_shift_and_supercell_consistency():
    member, s, _ = fixture("H2O_RPBE-D3")
    r1, r7 = member.predict(s[0], ["energy", "forces"]), member.predict(s[6], ["energy", "forces"])
    assert abs(r1["energy"] - r7["energy"]) < 1e-9 * abs(r1["energy"])
    np.testing.assert_allclose(r1["forces"], r7["forces"], atol=1e-10)
    lj, s, _ = fixture("LJ_Ne")
    assert abs(lj.predict(s[6], ["energy"])["energy"] - 8 * lj.predict(s[5], ["energy"])["energy"]) < 1e-10


def test_units_bohr_hartree_and_ase_calculator():
    """A Bohr/Hartree model in eV/Å gives E·Ha, F·Ha/Bohr; N2P2Calculator serves ASE."""
    from ase.units import Bohr, Hartree
    d = os.path.join(DATA, "H2O_RPBE-D3")
    member, s, ref = fixture("H2O_RPBE-D3")
    atoms = s[1].copy()
    raw = member.predict(atoms, ["energy", "forces"])
    atoms.set_cell(atoms.cell.array * Bohr, scale_atoms=True)
    calc = N2P2Calculator(d, length_unit="Bohr", energy_unit="Hartree")
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() - raw["energy"] * Hartree) < 1e-9 * abs(raw["energy"] * Hartree)
    np.testing.assert_allclose(atoms.get_forces(), raw["forces"] * Hartree / Bohr, atol=1e-10)
    assert atoms.get_stress().shape == (6,)
    assert calc.member.cutoff == pytest.approx(12.0 * Bohr)
    assert member.as_calculator().member is member
