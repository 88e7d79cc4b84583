"""Molecule identification from connectivity (covalent radii)."""
from __future__ import annotations

import numpy as np
from ase.neighborlist import NeighborList, natural_cutoffs
from scipy.sparse.csgraph import connected_components


def molecule_labels(atoms, mult: float = 1.1) -> tuple:
    """Return ``(n_molecules, labels)``: connected components of the bond graph.

    Two atoms are bonded when closer than ``mult`` × the sum of their natural
    (covalent) radii, across periodic boundaries.  ``labels[i]`` is the
    molecule index of atom i.
    """
    if len(atoms) == 0:
        return 0, np.zeros(0, dtype=int)
    nl = NeighborList(natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True)
    nl.update(atoms)
    n, labels = connected_components(nl.get_connectivity_matrix(sparse=True), directed=False)
    return int(n), labels


def count_molecules(atoms, mult: float = 1.1) -> int:
    """Number of molecules (connected components) in ``atoms``."""
    return molecule_labels(atoms, mult)[0]
