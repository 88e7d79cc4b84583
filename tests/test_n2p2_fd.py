"""Forces and stress of the native n2p2 evaluator equal finite differences of its energy,
including cells smaller than the cutoff (atoms see their own periodic images)."""
import os

import numpy as np
import pytest

from committee_calc.members.n2p2 import N2P2Member, read_input_data

DATA = os.path.join(os.path.dirname(__file__), "data", "n2p2")
H = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def setup(name, conf, rattle=0.0, seed=0):
    d = os.path.join(DATA, name)
    atoms = read_input_data(os.path.join(d, "input.data"))[conf - 1]
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return N2P2Member(d), atoms


def energy(member, atoms):
    return member.predict(atoms, ["energy"])["energy"]


def fd_forces(member, atoms, which):
    out = []
    for a, k in which:
        e = []
        for s in (1, -1):
            at = atoms.copy()
            at.positions[a, k] += s * H
            e.append(energy(member, at))
        out.append(-(e[0] - e[1]) / (2 * H))
    return np.array(out)


def fd_stress(member, atoms):
    vol = atoms.get_volume()
    out = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for s in (1, -1):
                eps = np.eye(3)
                eps[a, b] += s * H
                at = atoms.copy()
                at.set_cell(atoms.cell.array @ eps.T, scale_atoms=True)
                e.append(energy(member, at))
            out[a, b] = (e[0] - e[1]) / (2 * H) / vol
    out = 0.5 * (out + out.T)
    return out[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


# (fixture, conf, rattle): smallest cells first; every periodic one is smaller than 2 rc
CASES = [
    ("LJ_Ne", 6, 0.0),          # 1 atom, a = 2.1 < rc = 3: only self-images
    ("LJ_Ne", 9, 0.0),          # 2 atoms, triclinic, cell < rc
    ("Cu2S_PBE", 7, 0.05),      # 3-atom primitive fcc cell, angular SFs see self-images
    ("Cu2S_PBE", 6, 0.05),      # 12-atom cubic cell, cell < 2 rc
    ("Anisole_SCAN", 7, 0.0),   # 16 atoms in a 14x15x16 Bohr box, compact SFs 20/22, rc 15
    ("H2O_RPBE-D3", 6, 0.0),    # 48 atoms, triclinic with negative off-diagonals
]


@pytest.mark.parametrize("name,conf,rattle", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_forces_and_stress_equal_finite_differences(name, conf, rattle):
    member, atoms = setup(name, conf, rattle)
    res = member.predict(atoms, ["energy", "forces", "stress"])
    rng = np.random.default_rng(1)
    atoms_idx = rng.choice(len(atoms), size=min(len(atoms), 3), replace=False)
    which = [(int(a), k) for a in atoms_idx for k in range(3)]
    fd = fd_forces(member, atoms, which)
    an = np.array([res["forces"][a, k] for a, k in which])
    assert np.abs(fd - an).max() < 1e-5
    assert np.abs(res["forces"].sum(0)).max() < 1e-9 * max(1.0, np.abs(res["forces"]).max()) + 1e-10
    np.testing.assert_allclose(res["stress"], fd_stress(member, atoms), atol=1e-5, rtol=0)
    assert np.abs(res["stress"]).max() > 1e-8  # a non-trivial check


def test_non_periodic_cluster_forces():
    member, atoms = setup("Cu2S_PBE", 9)
    res = member.predict(atoms, ["energy", "forces"])
    which = [(0, 0), (5, 1), (29, 2)]
    assert np.abs(fd_forces(member, atoms, which) - [res["forces"][a, k] for a, k in which]).max() < 1e-5
