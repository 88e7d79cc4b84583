"""Monte Carlo move set for molecular (and atomic) crystals.

Molecules are rigid bodies unless atom displacements are switched on:

* ``translate`` – one molecule shifted by a vector uniform in a cube of half
  edge ``step`` [Å];
* ``rotate`` – one molecule rotated about its centre of mass by an angle
  uniform in ``[-step, step]`` [degrees] about an axis uniform on the sphere;
* ``displace`` – one atom shifted by a vector uniform in a cube of half edge
  ``step`` [Å] (conformational / intramolecular freedom);
* ``cell_length`` – one lattice vector scaled by ``1 + u·step`` (``u`` uniform
  in [-1, 1]; ``step`` is a fraction);
* ``cell_angle`` – one cell angle (α, β or γ) changed by ``u·step`` degrees,
  lattice orientation kept;
* ``cell_volume`` – isotropic scaling with volume factor ``1 + u·step``.

Cell moves carry every molecule rigidly with the cell: the fractional
coordinates of its centre of mass are kept, its intramolecular geometry is not
touched.  Positions are stored *unwrapped per molecule* (each molecule whole,
its centre of mass inside the cell), so bonded atoms are always at their
direct, not minimum-image, distance.

Every move is a pure function ``(atoms, topology, rng, step) -> Atoms``;
a zero step returns an identical structure.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from ase.geometry import cell_to_cellpar, cellpar_to_cell
from ase.neighborlist import NeighborList, natural_cutoffs

from ..errors import ConfigError, MoleculeError
from ..molecules import molecule_labels

MOVE_TYPES = ("translate", "rotate", "displace", "cell_length", "cell_angle", "cell_volume")
#: default step sizes: Å, degrees, Å, fraction, degrees, fraction
DEFAULT_STEPS = {"translate": 0.3, "rotate": 10.0, "displace": 0.05,
                 "cell_length": 0.03, "cell_angle": 2.0, "cell_volume": 0.05}
CELL_MOVES = ("cell_length", "cell_angle", "cell_volume")
#: the default move set of ``committee-mc`` in the :func:`parse_moves` text form
DEFAULT_MOVES = "translate=2:0.3,rotate=2:10,cell_length=1:0.02,cell_angle=1:1.5,cell_volume=1:0.03"
#: the default when every atom is its own unit (network solids, metals): no rotations
DEFAULT_ATOM_MOVES = "displace=2:0.1,cell_length=1:0.02,cell_angle=1:1.5,cell_volume=1:0.03"


# ---------------------------------------------------------------- rotations
def random_quaternion(rng) -> np.ndarray:
    """Unit quaternion (w, x, y, z) uniform on S³ (Shoemake 1992) -> Haar-uniform SO(3)."""
    u1, u2, u3 = rng.random(3)
    a, b = np.sqrt(1.0 - u1), np.sqrt(u1)
    return np.array([b * np.cos(2 * np.pi * u3), a * np.sin(2 * np.pi * u2),
                     a * np.cos(2 * np.pi * u2), b * np.sin(2 * np.pi * u3)])


def quaternion_to_matrix(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def random_rotation(rng) -> np.ndarray:
    """A (3, 3) rotation matrix uniform on SO(3)."""
    return quaternion_to_matrix(random_quaternion(rng))


def random_unit_vector(rng) -> np.ndarray:
    z = 2.0 * rng.random() - 1.0
    phi = 2.0 * np.pi * rng.random()
    s = np.sqrt(1.0 - z * z)
    return np.array([s * np.cos(phi), s * np.sin(phi), z])


def axis_angle_matrix(axis, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix; exactly the identity for a zero angle."""
    if angle_rad == 0.0:
        return np.eye(3)
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * K + (1 - np.cos(angle_rad)) * (K @ K)


# ---------------------------------------------------------------- molecules
@dataclass(frozen=True)
class Topology:
    """Molecules of a structure: ``labels`` (N,) int molecule index per atom, ``n_molecules``."""

    labels: np.ndarray
    n_molecules: int

    def members(self, m: int) -> np.ndarray:
        return np.flatnonzero(self.labels == m)


def make_whole(atoms, labels=None, mult: float = 1.1):
    """Return ``(atoms_whole, Topology)``: every molecule unwrapped (whole) across the cell.

    Molecules come from covalent connectivity (``mult`` × natural radii) unless
    ``labels`` (N,) are given.  Raises :class:`MoleculeError` when the bond graph
    is periodic (a framework/metal: no finite molecules), when given labels do
    not match (N,), or when a labelled molecule is not connected.
    """
    atoms = atoms.copy()
    atoms.calc = None
    n = len(atoms)
    if n == 0:
        raise MoleculeError("the structure has no atoms; nothing to move")
    nl = NeighborList(natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True)
    nl.update(atoms)
    if labels is None:
        _, labels = molecule_labels(atoms, mult=mult)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise MoleculeError(f"molecule labels must be {n} integers (one per atom), got shape {labels.shape}")
    _, labels = np.unique(labels, return_inverse=True)
    labels = labels.reshape(n)
    n_mol = int(labels.max()) + 1
    cell = atoms.cell.array
    pos = atoms.positions.copy()
    new = np.full((n, 3), np.nan)
    for m in range(n_mol):
        idx = np.flatnonzero(labels == m)
        root = idx[0]
        new[root] = pos[root]
        if len(idx) == 1:  # a one-atom unit (--units atoms) is whole; bonds to its images are the lattice's
            continue
        queue = deque([root])
        while queue:
            i = queue.popleft()
            nb, offs = nl.get_neighbors(i)
            for j, off in zip(nb, offs):
                if labels[j] != m:
                    continue
                pj = new[i] + pos[j] + off @ cell - pos[i]
                if np.isnan(new[j, 0]):
                    new[j] = pj
                    queue.append(j)
                elif np.linalg.norm(new[j] - pj) > 1e-6:
                    raise MoleculeError(
                        f"atoms of molecule {m} (atoms {idx[:6].tolist()}...) bond to their own "
                        "periodic image: the structure is a periodic network (framework, metal, "
                        "polymer), not molecules. Give molecule labels explicitly, or use "
                        "atom-wise moves with one label per atom"
                    )
        if np.isnan(new[idx, 0]).any():
            raise MoleculeError(
                f"labelled molecule {m} is not connected by bonds (atoms "
                f"{idx[np.isnan(new[idx, 0])][:6].tolist()} are not bonded to the rest); "
                "check the labels or the bond multiplier"
            )
    atoms.positions = new
    topo = Topology(labels=labels, n_molecules=n_mol)
    return wrap_molecules(atoms, topo), topo


def centres_of_mass(atoms, topo: Topology) -> np.ndarray:
    """(n_molecules, 3) Cartesian centres of mass [Å] of the (whole) molecules."""
    masses = atoms.get_masses()
    com = np.zeros((topo.n_molecules, 3))
    np.add.at(com, topo.labels, masses[:, None] * atoms.positions)
    tot = np.bincount(topo.labels, weights=masses, minlength=topo.n_molecules)
    return com / tot[:, None]


def _fractional(cell, xyz) -> np.ndarray:
    """(n, 3) fractional coordinates of Cartesian points ``xyz`` [Å]; a cell without a vector
    along a non-periodic direction (a slab with c = 0) is completed with a unit vector
    orthogonal to the others (:meth:`ase.cell.Cell.complete`), so no singular solve."""
    return np.linalg.solve(cell.complete().array.T, np.asarray(xyz, float).T).T


def wrap_molecules(atoms, topo: Topology):
    """Shift each whole molecule by a lattice vector so its centre of mass lies in the cell."""
    if not np.any(atoms.pbc):  # a cluster or molecule: nothing to wrap
        return atoms
    com = centres_of_mass(atoms, topo)
    frac = _fractional(atoms.cell, com)
    shift = -np.floor(frac + 1e-12) * atoms.pbc
    if np.any(shift):
        atoms.positions = atoms.positions + (shift @ atoms.cell.array)[topo.labels]
    return atoms


# ---------------------------------------------------------------- moves
def _copy(atoms):
    new = atoms.copy()
    new.calc = None
    return new


def move_translate(atoms, topo, rng, step):
    new = _copy(atoms)
    m = int(rng.integers(topo.n_molecules))
    d = step * (2.0 * rng.random(3) - 1.0)
    idx = topo.members(m)
    new.positions[idx] += d
    return wrap_molecules(new, topo), {"molecule": m}


def move_rotate(atoms, topo, rng, step):
    new = _copy(atoms)
    m = int(rng.integers(topo.n_molecules))
    axis = random_unit_vector(rng)
    angle = np.radians(step) * (2.0 * rng.random() - 1.0)
    R = axis_angle_matrix(axis, angle)
    idx = topo.members(m)
    com = centres_of_mass(new, topo)[m]
    rel = new.positions[idx] - com
    new.positions[idx] += rel @ (R - np.eye(3)).T
    return new, {"molecule": m}


def move_displace(atoms, topo, rng, step):
    new = _copy(atoms)
    i = int(rng.integers(len(new)))
    new.positions[i] += step * (2.0 * rng.random(3) - 1.0)
    return new, {"atom": i}


def _apply_cell(atoms, topo, new_cell):
    """New cell, every molecule carried rigidly by its fractional centre of mass."""
    new = _copy(atoms)
    old_cell = atoms.cell.array
    com = centres_of_mass(atoms, topo)
    frac = _fractional(atoms.cell, com)
    shift = frac @ (np.asarray(new_cell) - old_cell)
    new.set_cell(new_cell, scale_atoms=False)
    new.positions = atoms.positions + shift[topo.labels]
    return new


def move_cell_length(atoms, topo, rng, step):
    k = int(rng.integers(3))
    factor = 1.0 + step * (2.0 * rng.random() - 1.0)
    cell = atoms.cell.array.copy()
    cell[k] *= factor
    return _apply_cell(atoms, topo, cell), {"axis": k, "factor": factor}


def move_cell_angle(atoms, topo, rng, step):
    k = int(rng.integers(3))
    delta = step * (2.0 * rng.random() - 1.0)
    old = atoms.cell.array
    par = cell_to_cellpar(old)
    newpar = par.copy()
    newpar[3 + k] += delta
    if delta == 0.0:
        return _copy(atoms), {"angle": k, "delta_deg": 0.0}
    std_old, std_new = cellpar_to_cell(par), cellpar_to_cell(newpar)
    # old = std_old @ Q with Q orthogonal: keep the lattice orientation
    Q = np.linalg.solve(std_old, old)
    new_cell = std_new @ Q
    if not np.all(np.isfinite(new_cell)) or abs(np.linalg.det(new_cell)) < 1e-6 * abs(np.linalg.det(old)):
        return _copy(atoms), {"angle": k, "delta_deg": 0.0, "rejected": "degenerate cell"}
    return _apply_cell(atoms, topo, new_cell), {"angle": k, "delta_deg": delta}


def move_cell_volume(atoms, topo, rng, step):
    vfac = 1.0 + step * (2.0 * rng.random() - 1.0)
    return _apply_cell(atoms, topo, atoms.cell.array * vfac ** (1.0 / 3.0)), {"volume_factor": vfac}


MOVES = {"translate": move_translate, "rotate": move_rotate, "displace": move_displace,
         "cell_length": move_cell_length, "cell_angle": move_cell_angle,
         "cell_volume": move_cell_volume}


class MoveSet:
    """Weighted moves with step sizes.

    Parameters
    ----------
    moves:
        ``{name: {"probability": p, "step": s}}`` or ``{name: p}`` (default
        step); names from :data:`MOVE_TYPES`; probabilities are normalised
        and must not all be zero.
    step_bounds:
        ``{name: (min, max)}`` limits for adaptive steps (defaults: 1e-3×..10×
        the initial step; cell angles at most 20°, fractions at most 0.5).
    """

    def __init__(self, moves, step_bounds=None):
        if not moves:
            raise ConfigError("the move set is empty: give at least one of "
                              f"{MOVE_TYPES} with a probability > 0")
        names, probs, steps = [], [], {}
        for name, spec in dict(moves).items():
            if name not in MOVES:
                raise ConfigError(f"unknown move {name!r}; use one of {MOVE_TYPES}")
            if isinstance(spec, dict):
                unknown = set(spec) - {"probability", "step"}
                if unknown:
                    raise ConfigError(f"move {name!r}: unknown keys {sorted(unknown)}; use probability, step")
                p, s = spec.get("probability", 1.0), spec.get("step", DEFAULT_STEPS[name])
            else:
                p, s = spec, DEFAULT_STEPS[name]
            p, s = float(p), float(s)
            if not np.isfinite(p) or p < 0:
                raise ConfigError(f"move {name!r}: probability must be finite and >= 0, got {p}")
            if not np.isfinite(s) or s < 0:
                raise ConfigError(f"move {name!r}: step must be finite and >= 0, got {s}")
            if p > 0:
                names.append(name)
                probs.append(p)
                steps[name] = s
        if not names:
            raise ConfigError(f"the move set is empty: every probability is zero ({dict(moves)})")
        self.names = tuple(names)
        self.probabilities = np.asarray(probs) / np.sum(probs)
        self.steps = steps
        hi = {"cell_length": 0.5, "cell_volume": 0.5, "cell_angle": 20.0, "rotate": 180.0}
        self.step_bounds = {n: (1e-3 * s, min(10.0 * s, hi.get(n, np.inf)) if s > 0 else 0.0)
                            for n, s in steps.items()}
        self.step_bounds.update(step_bounds or {})

    def choose(self, rng) -> str:
        return self.names[int(rng.choice(len(self.names), p=self.probabilities))]

    def propose(self, atoms, topo: Topology, rng, name: str | None = None):
        """Return ``(trial_atoms, move_name, details)``; ``atoms`` is not changed."""
        name = name or self.choose(rng)
        trial, details = MOVES[name](atoms, topo, rng, self.steps[name])
        if name in CELL_MOVES:
            trial = wrap_molecules(trial, topo)
        return trial, name, details

    def scale_step(self, name: str, factor: float) -> None:
        lo, hi = self.step_bounds[name]
        self.steps[name] = float(np.clip(self.steps[name] * factor, lo, hi))

    def as_dict(self) -> dict:
        return {n: {"probability": float(p), "step": float(self.steps[n])}
                for n, p in zip(self.names, self.probabilities)}


def parse_moves(text: str) -> dict:
    """``"translate=2:0.3,rotate=1"`` -> ``{name: {"probability": p[, "step": s]}}`` (the
    :class:`MoveSet` spec; step in the move's unit, optional).  Raises ConfigError for an
    item that is not ``NAME=PROBABILITY[:STEP]`` with numbers."""
    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, spec = item.partition("=")
        if not spec:
            raise ConfigError(f"--moves item {item!r} must be NAME=PROBABILITY[:STEP]")
        p, _, s = spec.partition(":")
        try:
            out[name.strip()] = {"probability": float(p), **({"step": float(s)} if s else {})}
        except ValueError:
            raise ConfigError(f"--moves item {item!r}: probability and step must be numbers") from None
    return out


def free_atoms(atoms) -> np.ndarray:
    """(N,) bool: the atoms a displacement can move under ``atoms``' ASE constraints (all True
    without constraints).  Found by applying the constraints to a trial displacement of every
    atom: an atom whose displacement the constraints undo entirely (``FixAtoms``, a
    ``FixCartesian`` on x, y and z) is held."""
    if not atoms.constraints:
        return np.ones(len(atoms), bool)
    probe = atoms.copy()
    probe.calc = None
    d = np.random.default_rng(0).uniform(0.5, 1.0, (len(atoms), 3))
    probe.set_positions(atoms.positions + d, apply_constraint=True)
    return np.linalg.norm(probe.positions - atoms.positions, axis=1) > 1e-9
