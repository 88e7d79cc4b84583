"""Move set of the threshold MC: rigidity, wholeness across boundaries, SO(3) uniformity."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from scipy import stats
from scipy.spatial.transform import Rotation

from committee_calc.errors import ConfigError, MoleculeError
from committee_calc.mc.moves import (
    MOVE_TYPES,
    MOVES,
    MoveSet,
    axis_angle_matrix,
    centres_of_mass,
    make_whole,
    random_rotation,
)


def water_crystal(a=6.2, shift=-1.3, seed=0):
    """4 water molecules in a triclinic-ish cell, wrapped so several straddle the boundary."""
    rng = np.random.default_rng(seed)
    w = molecule("H2O")
    cell = np.array([[a, 0, 0], [0.4, a * 0.95, 0], [-0.3, 0.2, a * 1.05]])
    atoms = Atoms(cell=cell, pbc=True)
    for f in [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]:
        m = w.copy()
        m.positions = m.positions @ random_rotation(rng).T
        m.translate(np.array(f) @ cell)
        atoms += m
    atoms.translate([shift, shift, shift])
    atoms.wrap()
    return atoms


def intra_distances(atoms, labels):
    """Direct (not minimum-image) distances within each molecule, concatenated."""
    out = []
    for m in np.unique(labels):
        p = atoms.positions[labels == m]
        out.append(np.linalg.norm(p[:, None] - p[None], axis=-1).ravel())
    return np.concatenate(out)


@pytest.fixture
def whole():
    atoms, topo = make_whole(water_crystal())
    return atoms, topo


def test_make_whole_unwraps_boundary_molecules():
    raw = water_crystal()
    # the wrapped input really has molecules split across the boundary
    d_raw = raw.get_all_distances(mic=False)
    d_mic = raw.get_all_distances(mic=True)
    assert np.max(np.abs(d_raw - d_mic)) > 1.0
    atoms, topo = make_whole(raw)
    assert topo.n_molecules == 4
    for m in range(4):
        idx = topo.members(m)
        assert len(idx) == 3
        d = atoms.get_all_distances(mic=False)[np.ix_(idx, idx)]
        dm = atoms.get_all_distances(mic=True)[np.ix_(idx, idx)]
        np.testing.assert_allclose(d, dm, atol=1e-10)
        assert d.max() < 1.7  # O-H ~0.97 Å, H-H ~1.5 Å
    frac = np.linalg.solve(atoms.cell.array.T, centres_of_mass(atoms, topo).T).T
    assert np.all(frac >= -1e-12) and np.all(frac < 1 + 1e-12)


@pytest.mark.parametrize("name", ["translate", "rotate", "cell_length", "cell_angle", "cell_volume"])
def test_rigid_moves_preserve_intramolecular_distances(whole, name):
    atoms, topo = whole
    ref = intra_distances(atoms, topo.labels)
    ms = MoveSet({name: {"probability": 1.0, "step": {"translate": 2.5, "rotate": 90.0,
                                                       "cell_length": 0.2, "cell_angle": 10.0,
                                                       "cell_volume": 0.3}[name]}})
    rng = np.random.default_rng(42)
    cur = atoms
    for _ in range(60):  # chained moves: errors would accumulate
        cur, moved, _ = ms.propose(cur, topo, rng)
        assert moved == name
        np.testing.assert_allclose(intra_distances(cur, topo.labels), ref, rtol=0, atol=1e-10)
    assert not np.allclose(cur.positions, atoms.positions)


@pytest.mark.parametrize("name", ["cell_length", "cell_angle", "cell_volume"])
def test_cell_moves_keep_molecules_whole_and_fractional_centres(whole, name):
    atoms, topo = whole
    ms = MoveSet({name: {"probability": 1.0, "step": {"cell_length": 0.2, "cell_angle": 10.0,
                                                       "cell_volume": 0.3}[name]}})
    rng = np.random.default_rng(7)
    for _ in range(20):
        new, _, _ = ms.propose(atoms, topo, rng)
        assert not np.allclose(new.cell.array, atoms.cell.array)
        f_old = np.linalg.solve(atoms.cell.array.T, centres_of_mass(atoms, topo).T).T
        f_new = np.linalg.solve(new.cell.array.T, centres_of_mass(new, topo).T).T
        dfrac = f_new - f_old
        np.testing.assert_allclose(dfrac, np.round(dfrac), atol=1e-10)  # same modulo lattice
        # molecules whole: direct intramolecular distances == minimum-image ones
        for m in range(topo.n_molecules):
            idx = topo.members(m)
            d = new.get_all_distances(mic=False)[np.ix_(idx, idx)]
            dm = new.get_all_distances(mic=True)[np.ix_(idx, idx)]
            np.testing.assert_allclose(d, dm, atol=1e-10)
        # each molecule's orientation is unchanged (pure translation of the molecule)
        rel_old = atoms.positions - centres_of_mass(atoms, topo)[topo.labels]
        rel_new = new.positions - centres_of_mass(new, topo)[topo.labels]
        np.testing.assert_allclose(rel_new, rel_old, atol=1e-10)


def test_volume_move_changes_volume_by_factor(whole):
    atoms, topo = whole
    ms = MoveSet({"cell_volume": {"probability": 1, "step": 0.1}})
    new, _, details = ms.propose(atoms, topo, np.random.default_rng(3))
    assert new.get_volume() / atoms.get_volume() == pytest.approx(details["volume_factor"], rel=1e-12)


def test_angle_move_changes_only_one_angle(whole):
    atoms, topo = whole
    ms = MoveSet({"cell_angle": {"probability": 1, "step": 5.0}})
    new, _, d = ms.propose(atoms, topo, np.random.default_rng(5))
    old_par, new_par = atoms.cell.cellpar(), new.cell.cellpar()
    np.testing.assert_allclose(new_par[:3], old_par[:3], atol=1e-10)
    diff = new_par[3:] - old_par[3:]
    assert diff[d["angle"]] == pytest.approx(d["delta_deg"], abs=1e-9)
    assert np.count_nonzero(np.abs(diff) > 1e-9) == 1


@pytest.mark.parametrize("name", MOVE_TYPES)
def test_zero_step_is_identity(whole, name):
    atoms, topo = whole
    ms = MoveSet({name: {"probability": 1.0, "step": 0.0}})
    rng = np.random.default_rng(11)
    for _ in range(10):
        new, _, _ = ms.propose(atoms, topo, rng)
        np.testing.assert_allclose(new.positions, atoms.positions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(new.cell.array, atoms.cell.array, rtol=0, atol=1e-12)
        assert new.numbers.tolist() == atoms.numbers.tolist()


def test_displace_moves_one_atom_within_step(whole):
    atoms, topo = whole
    ms = MoveSet({"displace": {"probability": 1.0, "step": 0.1}})
    new, _, d = ms.propose(atoms, topo, np.random.default_rng(1))
    moved = np.flatnonzero(np.any(new.positions != atoms.positions, axis=1))
    assert moved.tolist() == [d["atom"]]
    assert np.all(np.abs(new.positions[moved] - atoms.positions[moved]) <= 0.1)


def test_full_random_rotations_uniform_on_so3():
    rng = np.random.default_rng(2024)
    n = 20000
    R = np.array([random_rotation(rng) for _ in range(n)])
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", R, R), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    # Haar measure: rotation angle θ has CDF (θ - sin θ)/π on [0, π]
    theta = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    p_angle = stats.kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue
    # rotated z axis uniform on the sphere: z uniform on [-1, 1], azimuth uniform
    v = R[:, :, 2]
    p_z = stats.kstest(v[:, 2], stats.uniform(loc=-1, scale=2).cdf).pvalue
    p_phi = stats.kstest(np.arctan2(v[:, 1], v[:, 0]), stats.uniform(loc=-np.pi, scale=2 * np.pi).cdf).pvalue
    assert min(p_angle, p_z, p_phi) > 1e-3, (p_angle, p_z, p_phi)
    # E[R] = 0 for the Haar measure (std of each mean entry ~ 1/sqrt(3n))
    assert np.abs(R.mean(axis=0)).max() < 5 / np.sqrt(3 * n)
    # a biased sampler (uniform Euler angles) is rejected by the same angle test
    bad = Rotation.from_euler("zyz", rng.uniform(0, np.pi, size=(n, 3))).as_matrix()
    tb = np.arccos(np.clip((np.trace(bad, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(tb, lambda t: (t - np.sin(t)) / np.pi).pvalue < 1e-6


def test_small_rotation_bounded_by_step(whole):
    atoms, topo = whole
    ms = MoveSet({"rotate": {"probability": 1.0, "step": 5.0}})
    rng = np.random.default_rng(9)
    for _ in range(30):
        new, _, d = ms.propose(atoms, topo, rng)
        idx = topo.members(d["molecule"])
        a = atoms.positions[idx] - atoms.positions[idx].mean(0)
        b = new.positions[idx] - new.positions[idx].mean(0)
        rot, _ = Rotation.align_vectors(b, a)
        ang = np.degrees(rot.magnitude())
        assert ang <= 5.0 + 1e-6
    assert np.allclose(axis_angle_matrix([0, 0, 1], 0.0), np.eye(3))


def test_move_set_errors():
    with pytest.raises(ConfigError, match="empty"):
        MoveSet({})
    with pytest.raises(ConfigError, match="empty"):
        MoveSet({"translate": 0.0, "rotate": 0})
    with pytest.raises(ConfigError, match="unknown move"):
        MoveSet({"jump": 1.0})
    with pytest.raises(ConfigError, match="step"):
        MoveSet({"translate": {"probability": 1, "step": -1}})
    ms = MoveSet({"translate": 3, "rotate": 1})
    assert ms.probabilities.tolist() == [0.75, 0.25]
    assert set(MOVES) == set(MOVE_TYPES)


def test_molecules_that_cannot_be_identified():
    with pytest.raises(MoleculeError, match="periodic network"):
        make_whole(bulk("Cu", cubic=True))
    w = water_crystal()
    with pytest.raises(MoleculeError, match="labels"):
        make_whole(w, labels=[0, 1])
    # a 'molecule' made of two unbonded atoms
    labels = np.repeat(np.arange(4), 3)
    labels[[0, 3]] = labels[[3, 0]]
    with pytest.raises(MoleculeError, match="not connected"):
        make_whole(w, labels=labels)
    # atom-wise moves on a metal: one label per atom works
    cu = bulk("Cu", cubic=True)
    atoms, topo = make_whole(cu, labels=np.arange(len(cu)))
    assert topo.n_molecules == len(cu)


def test_one_atom_units_of_a_small_metal_cell_are_whole():
    """--units atoms on a primitive fcc cell (each atom bonds to its own periodic images): every
    unit is one atom and already whole (was refused as a periodic network)."""
    from ase.build import bulk

    a = bulk("Cu", "fcc", a=3.61)
    a.rattle(0.02, seed=1)
    atoms, topo = make_whole(a, labels=np.arange(len(a)))
    d = atoms.get_scaled_positions(wrap=False) - a.get_scaled_positions(wrap=False)
    np.testing.assert_allclose(d - np.round(d), 0, atol=1e-10)  # the same atom, at most wrapped
