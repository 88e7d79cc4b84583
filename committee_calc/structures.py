"""Structure helpers used across the package, each defined once.

* :func:`is_bulk` — 3-D periodic with a full-rank cell (stress is defined).
* :func:`check_cell` — finite cell; periodic directions have independent lattice vectors (CellError).
* :func:`check_structure` — atoms present, finite, no duplicated atom, usable cell (read time).
* :func:`structure_hash` — identity of a geometry for de-duplication.
* :func:`read_structures` — every structure of a file or folder, with clear errors.
* :func:`cell_widths` — perpendicular widths of a cell [Å].
* :func:`density_gcm3` — mass density [g/cm³].
* :func:`atoms_to_dict` / :func:`atoms_from_dict` — JSON-able geometry (with the ASE constraints).
* :func:`same_geometry` — positions and cell equal within a tolerance [Å].
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import CellError, ConfigError, StructureReadError
from .keys import GEOMETRY_LABEL_PREFIXES
from .units import AMU_PER_A3_TO_GCM3


def is_bulk(atoms) -> bool:
    """True for a 3-D periodic structure with a full-rank cell (stress is defined)."""
    return bool(np.all(atoms.pbc)) and atoms.cell.rank == 3


def check_cell(atoms, what: str = "structure") -> None:
    """Raise :class:`~committee_calc.errors.CellError` when a periodic direction has no lattice
    vector or the periodic vectors are linearly dependent (a degenerate cell).

    A fully periodic structure needs a full-rank cell (positive volume); a partly periodic one
    needs independent, non-zero vectors along its periodic directions.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=float)
    if not np.all(np.isfinite(cell)):
        raise CellError(f"{what} has a non-finite cell ({cell.tolist()}); give finite lattice vectors "
                        "(a NaN/inf cell usually comes from a NaN pressure or a diverged simulation)")
    if not pbc.any():
        return
    vecs = cell[pbc]
    lengths = np.linalg.norm(vecs, axis=1)
    if np.any(lengths < 1e-8):
        axes = "".join("abc"[i] for i in np.flatnonzero(pbc) if np.linalg.norm(cell[i]) < 1e-8)
        raise CellError(f"{what} is periodic along {axes} but has no lattice vector there "
                        f"(cell {cell.tolist()}); give the cell (extxyz: Lattice=\"…\") or set "
                        "pbc=False along those directions")
    s = np.linalg.svd(vecs / lengths[:, None], compute_uv=False)
    if s.min() < 1e-6:
        raise CellError(f"{what} has a degenerate periodic cell (lattice vectors {vecs.tolist()} are "
                        "linearly dependent, volume ~0); fix the lattice vectors")


#: two atoms closer than this [Å] are taken as a duplicated atom (no physical structure has them)
MIN_DISTANCE_A = 0.1


def check_structure(atoms, what: str = "structure", min_distance: float = MIN_DISTANCE_A) -> None:
    """Raise when ``atoms`` cannot be a physical structure: no atoms
    (:class:`~committee_calc.errors.StructureReadError`), non-finite positions, a non-finite or
    degenerate periodic cell (:func:`check_cell`, :class:`~committee_calc.errors.CellError`), or
    two atoms closer than ``min_distance`` [Å] (minimum image along periodic directions; a
    duplicated atom), each message naming ``what`` and the fix.
    """
    if len(atoms) == 0:
        raise StructureReadError(f"{what} has no atoms; remove it from the input or give its atoms")
    pos = np.asarray(atoms.positions, dtype=float)
    bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
    if bad.size:
        raise StructureReadError(f"{what} has non-finite (NaN/inf) coordinates for atom(s) "
                                 f"{bad[:10].tolist()}; fix the positions")
    check_cell(atoms, what)
    if len(atoms) > 1 and min_distance > 0:
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, min_distance, self_interaction=False)
        if i.size:
            k = int(np.argmin(d))
            raise StructureReadError(
                f"{what} has atoms {int(i[k])} and {int(j[k])} only {float(d[k]):.3g} Å apart "
                f"(closer than {min_distance} Å: a duplicated atom); remove the duplicate or fix "
                "the positions")


def structure_hash(atoms, decimals: int = 6) -> str:
    """sha1 of atomic numbers, positions, cell (rounded to ``decimals`` Å) and pbc."""
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update((np.round(np.asarray(atoms.positions, float), decimals) + 0.0).tobytes())
    h.update((np.round(np.asarray(atoms.cell[:], float), decimals) + 0.0).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()


def cell_widths(cell) -> np.ndarray:
    """Perpendicular widths (3,) [Å] of a cell (3,3): the largest sphere it holds has diameter min()."""
    cell = np.asarray(cell, dtype=float)
    vol = abs(np.linalg.det(cell))
    return np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
                     for i in range(3)])


def density_gcm3(atoms) -> float:
    """Mass density [g/cm³] of a cell (NaN without a full-rank cell)."""
    if atoms.cell.rank != 3:
        return float("nan")
    return float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_TO_GCM3)


def _jsonable(value, what: str):
    """``value`` with numpy arrays/scalars as lists/numbers and Atoms as ``{"__atoms__": …}``."""
    if isinstance(value, Atoms):
        return {"__atoms__": atoms_to_dict(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v, what) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"{what} holds {type(value).__name__} {value!r}, which cannot be stored; "
                      "use ASE's built-in constraints (FixAtoms, FixCartesian, FixedLine, …)")


def _from_jsonable(value):
    if isinstance(value, dict):
        if set(value) == {"__atoms__"}:
            return atoms_from_dict(value["__atoms__"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def constraints_to_list(atoms) -> list:
    """The ASE constraints of ``atoms`` (FixAtoms, FixCartesian, FixSymmetry, …) as JSON-able
    dicts (``constraint.todict()``); raises ConfigError for a constraint that cannot be stored."""
    out = []
    for c in atoms.constraints:
        if not hasattr(c, "todict"):
            raise ConfigError(f"constraint {c!r} has no todict() and cannot be stored")
        out.append(_jsonable(c.todict(), f"constraint {type(c).__name__}"))
    return out


def constraints_from_list(items) -> list:
    """Inverse of :func:`constraints_to_list` (``ase.constraints.dict2constraint``)."""
    from ase.constraints import dict2constraint

    return [dict2constraint(_from_jsonable(d)) for d in items or ()]


def atoms_to_dict(atoms) -> dict:
    """numbers, positions [Å], cell [Å], pbc as JSON-able lists, and ``constraints``
    (:func:`constraints_to_list`) when the structure has any."""
    d = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
         "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}
    if atoms.constraints:
        d["constraints"] = constraints_to_list(atoms)
    return d


def atoms_from_dict(d) -> Atoms:
    """Inverse of :func:`atoms_to_dict` (the user's constraints restored)."""
    atoms = Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
    if d.get("constraints"):
        atoms.set_constraint(constraints_from_list(d["constraints"]))
    return atoms


def same_geometry(a, b, tol: float = 1e-6) -> bool:
    """Same atoms, positions and cell within ``tol`` [Å]."""
    return (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
            and np.allclose(a.positions, b.positions, atol=tol, rtol=0)
            and np.allclose(a.cell[:], b.cell[:], atol=tol, rtol=0))


def drop_labels(atoms, prefixes=GEOMETRY_LABEL_PREFIXES):
    """Remove (in place) the ``info`` and ``arrays`` entries whose key starts with one of
    ``prefixes`` (values at this geometry: reference labels, baselines, committee predictions);
    returns ``atoms``."""
    for key in [k for k in atoms.info if k.startswith(prefixes)]:
        del atoms.info[key]
    for key in [k for k in atoms.arrays if k.startswith(prefixes)]:
        del atoms.arrays[key]
    return atoms


def read_structures(path, index=":", labels: bool = True) -> list:
    """Every structure of a file (any ASE format) or of the files in a folder.

    ``labels=False`` (drivers that move atoms) drops the values that belong to the file's
    geometries (:func:`drop_labels`: ``REF_*``, ``BASE_*``, ``DELTA_*``, ``committee_*``), so no
    moved frame written later carries a stale reference label.

    Raises :class:`~committee_calc.errors.StructureReadError` when the path is
    missing, a file cannot be read, or nothing is found, and :func:`check_structure`'s errors
    for a structure with no atoms, NaN coordinates, a duplicated atom or an unusable cell.
    """
    from ase.io import read

    p = Path(path)
    if not p.exists():
        raise StructureReadError(f"structure file {str(p)!r} does not exist")
    files = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
    images = []
    for f in files:
        try:
            got = read(str(f), index=index)
        except Exception as exc:  # ASE raises many types for unreadable files
            raise StructureReadError(
                f"cannot read structures from {str(f)!r}: {type(exc).__name__}: {exc}. "
                "Check the file format (extxyz, cif, POSCAR, ASE db...)"
            ) from exc
        got = got if isinstance(got, list) else [got]
        for i, atoms in enumerate(got):
            check_structure(atoms, f"structure {i} of {str(f)!r}")
            if not labels:
                drop_labels(atoms)
        images.extend(got)
    if not images:
        raise StructureReadError(f"{str(p)!r} holds no structures")
    return images
