"""Read n2p2 ``input.data`` files into ASE Atoms (positions/cell in the file's units).

Format: ``begin`` / ``comment ...`` / 0 or 3 ``lattice ax ay az`` rows /
``atom x y z El q e fx fy fz`` / ``energy E`` / ``charge Q`` / ``end``.
Reference energy and forces go to ``info["energy"]`` and ``arrays["ref_forces"]``.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms

from ...errors import StructureReadError


def read_input_data(path: str) -> list:
    """All structures of an n2p2 ``input.data`` file, in file order."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise StructureReadError(f"cannot read n2p2 structure file {path!r}: {exc}") from exc
    out, cur = [], None
    for lineno, raw in enumerate(lines, 1):
        tok = raw.split()
        if not tok:
            continue
        key = tok[0]
        if key == "begin":
            cur = {"lattice": [], "pos": [], "sym": [], "forces": [], "energy": 0.0, "comment": ""}
        elif cur is None:
            raise StructureReadError(f"{path}:{lineno}: {key!r} outside a begin/end block")
        elif key == "comment":
            cur["comment"] = raw.split("comment", 1)[1].strip()
        elif key == "lattice":
            cur["lattice"].append([float(t) for t in tok[1:4]])
        elif key == "atom":
            if len(tok) < 10:
                raise StructureReadError(f"{path}:{lineno}: atom lines need 10 columns")
            cur["pos"].append([float(t) for t in tok[1:4]])
            cur["sym"].append(tok[4])
            cur["forces"].append([float(t) for t in tok[7:10]])
        elif key == "energy":
            cur["energy"] = float(tok[1])
        elif key == "end":
            if len(cur["lattice"]) not in (0, 3):
                raise StructureReadError(f"{path}:{lineno}: need 0 or 3 lattice lines")
            periodic = len(cur["lattice"]) == 3
            atoms = Atoms(cur["sym"], positions=cur["pos"],
                          cell=cur["lattice"] if periodic else None, pbc=periodic)
            atoms.info["energy"] = cur["energy"]
            atoms.info["comment"] = cur["comment"]
            atoms.arrays["ref_forces"] = np.array(cur["forces"], dtype=float).reshape(-1, 3)
            out.append(atoms)
            cur = None
    if not out:
        raise StructureReadError(f"{path} holds no complete begin/end structure")
    return out
