"""The phonopy object of a structure and the supercell-size check.

* :func:`make_phonopy` — a ``Phonopy`` object for an ASE structure (displacements generated);
* :func:`to_phonopy_atoms` / :func:`to_ase_atoms` — structure conversion;
* :func:`suggest_supercell`, :func:`check_supercell_size` — warn
  when the supercell is thinner than twice the interaction cutoff (force constants aliased
  by periodic images).

Units: Å.  Cell widths come from :func:`committee_calc.structures.cell_widths`.
"""
from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms

from ..errors import ConfigError
from ..structures import cell_widths
from .settings import PhononSettings, PhononWarning


def to_phonopy_atoms(atoms: Atoms):
    """``PhonopyAtoms`` with the symbols, cell (3, 3) Å and unwrapped fractional positions."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.array(atoms.cell),
                        scaled_positions=atoms.get_scaled_positions(wrap=False))


def to_ase_atoms(cell) -> Atoms:
    """A periodic ASE ``Atoms`` of a ``PhonopyAtoms`` (e.g. a displaced supercell)."""
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions,
                 pbc=True)


def make_phonopy(atoms: Atoms, settings: PhononSettings, generate: bool = True):
    """A Phonopy object for ``atoms`` (never modified) with displacements generated.

    ``primitive_matrix=None`` means the input cell itself (identity), whatever the phonopy
    version (phonopy >= 4 would otherwise pick 'auto', which can resolve differently at
    different volumes of a scan and change the per-primitive-cell normalisation).
    Raises :class:`~committee_calc.errors.ConfigError` for a cell of rank < 3 or a supercell
    matrix whose determinant is not positive.
    """
    from phonopy import Phonopy

    if atoms.cell.rank != 3:
        raise ConfigError("phonons need a 3-D periodic cell; the structure has "
                          f"cell rank {atoms.cell.rank}")
    if np.linalg.det(np.asarray(settings.supercell_matrix, dtype=float)) <= 0:
        raise ConfigError(f"the supercell matrix {np.asarray(settings.supercell_matrix).tolist()} "
                          "(--supercell) must have a positive determinant: give positive "
                          "multiples, e.g. --supercell 3 or 2 2 2")
    ph = Phonopy(to_phonopy_atoms(atoms), supercell_matrix=settings.supercell_matrix,
                 primitive_matrix=np.eye(3) if settings.primitive_matrix is None
                 else settings.primitive_matrix, symprec=settings.symprec)
    if generate:
        ph.generate_displacements(distance=settings.distance_A, is_plusminus=settings.is_plusminus,
                                  is_diagonal=settings.is_diagonal)
    return ph


def suggest_supercell(unitcell, cutoff_A: float) -> tuple:
    """Smallest diagonal multipliers (n1, n2, n3) of ``unitcell`` (3x3 Å) whose supercell
    is at least 2 × ``cutoff_A`` thick in every direction (width_i scales with n_i)."""
    w = cell_widths(unitcell)
    return tuple(max(1, int(np.ceil(2.0 * cutoff_A / wi - 1e-9))) for wi in w)


def supercell_size_message(ph, cutoff_A: float | None) -> str | None:
    """The warning text when the supercell of ``ph`` is thinner than twice ``cutoff_A`` [Å]
    (naming the cutoff and the smallest diagonal supercell of the input cell that satisfies
    it), else None (also without a cutoff)."""
    if cutoff_A is None:
        return None
    width = float(cell_widths(ph.supercell.cell).min())
    if width >= 2.0 * cutoff_A:
        return None
    n = suggest_supercell(ph.unitcell.cell, cutoff_A)
    m = np.asarray(ph.supercell_matrix)
    current = " ".join(str(int(x)) for x in np.diag(m)) if np.allclose(m, np.diag(np.diag(m))) \
        else str(m.tolist())
    return (f"the phonon supercell {current} is {width:.2f} Å thick, less than twice the "
            f"committee cutoff ({cutoff_A:.2f} Å, so {2 * cutoff_A:.2f} Å are needed): a "
            "displaced atom interacts with its own images and the force constants are "
            f"aliased. Use a supercell of at least {n[0]} {n[1]} {n[2]} (supercell_matrix, "
            "committee-qha --supercell).")


def check_supercell_size(ph, cutoff_A: float | None) -> bool:
    """Warn (:class:`PhononWarning`) with :func:`supercell_size_message`; False when it warned."""
    msg = supercell_size_message(ph, cutoff_A)
    if msg is not None:
        warnings.warn(msg, PhononWarning, stacklevel=2)
    return msg is None
