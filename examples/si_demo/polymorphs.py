"""Known silicon polymorphs as 8-atom cells: the start of the polymorph-ranking demo.

``polymorphs()`` returns ``{name: Atoms}`` for diamond (Fd-3m, 227), lonsdaleite (P6_3/mmc, 194),
BC8 (Ia-3, 206, primitive cell), β-Sn (I4_1/amd, 141) and simple hexagonal (P6/mmm, 191), each
repeated to 8 atoms so that the demo's fixed 2×2×2 k-point GPAW settings treat them alike.  Lattice
parameters are near their PBE/experimental values (Å): diamond a = 5.47; lonsdaleite a = 3.84,
c = 6.35; BC8 a = 6.64, x(16c) = 0.1003 (Kasper & Richards 1964); β-Sn a = 4.81, c = 2.65;
simple hexagonal a = 2.64, c = 2.48.  Volumes per atom: 20.5, 20.3, 18.3, 15.3, 15.0 Å³.
"""
from __future__ import annotations

from ase.build import bulk
from ase.spacegroup import crystal

#: name -> international space-group number
SPACE_GROUPS = {"diamond": 227, "lonsdaleite": 194, "bc8": 206, "beta_sn": 141, "simple_hexagonal": 191}


def polymorphs() -> dict:
    """{name: 8-atom Atoms} of the known Si polymorphs (see module docstring)."""
    hexagonal = [90, 90, 120]
    cells = {
        "diamond": bulk("Si", "diamond", a=5.47, cubic=True),
        "lonsdaleite": crystal("Si", [(1 / 3, 2 / 3, 0.0625)], spacegroup=194,
                               cellpar=[3.84, 3.84, 6.35, *hexagonal]).repeat((1, 1, 2)),
        "bc8": crystal("Si", [(0.1003, 0.1003, 0.1003)], spacegroup=206, cellpar=[6.64] * 3 + [90] * 3,
                       primitive_cell=True),
        "beta_sn": crystal("Si", [(0, 0, 0)], spacegroup=141, setting=1,
                           cellpar=[4.81, 4.81, 2.65, 90, 90, 90]).repeat((1, 1, 2)),
        "simple_hexagonal": crystal("Si", [(0, 0, 0)], spacegroup=191,
                                    cellpar=[2.64, 2.64, 2.48, *hexagonal]).repeat((2, 2, 2)),
    }
    for name, atoms in cells.items():
        atoms.info["name"] = name
        atoms.info["space_group"] = SPACE_GROUPS[name]
    return cells
