"""Harmonic phonons with phonopy through the gate (committee mean and every member).

Pipeline (one structure, e.g. one volume of a QHA scan)::

    gate = Gate(committee)                             # or Gate(committee, reference, …)
    settings = PhononSettings(supercell_matrix=3, distance_A=0.01, mesh=(20, 20, 20))
    ph = make_phonopy(atoms, settings)                 # displacements generated
    forces = compute_forces(ph, gate)                  # ForceSet (per member too)
    res = run_phonons(atoms, gate, settings)           # PhononResult: mean + members

Every thermal quantity is per **primitive cell** (phonopy's normalisation):
E(V) and V given to a QHA must be on the same cell (trap 3 of the fixtures).
Internal units: eV, Å, K, eV/K; frequencies in THz (phonopy's unit).

Constraints: phonopy displaces every atom, so phonons are always those of the full
structure; ASE constraints on the input (``FixAtoms``, …) are ignored here, with a
PhononWarning (:func:`warn_constraints`).

Committee: the best-estimate force constants come from the committee mean
forces (the "mean potential"); each member also gets its own force constants
from its own forces, so every harmonic quantity has a per-member value. A
displaced supercell the gate sends to the reference uses the reference forces
for the mean *and* for every member (that supercell then adds no spread).

Modules: :mod:`.settings` (PhononSettings), :mod:`.supercell` (phonopy object,
supercell-size check), :mod:`.forces` (ForceSet, compute_forces), this module
(force constants → mesh → thermal properties).  Source: A. Togo, phonopy
(J. Phys.: Condens. Matter 35, 353001 (2023)).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import numpy as np
from ase import Atoms

from ..committee import max_cutoff
from ..gate import Gate, require_gate
from ..units import PHONOPY_EV_TO_JMOL, PHONOPY_EV_TO_KJMOL
from .forces import ForceSet, compute_forces
from .settings import PhononSettings, PhononWarning
from .supercell import check_supercell_size, make_phonopy


@dataclasses.dataclass(frozen=True)
class HarmonicResult:
    """Harmonic properties of one set of force constants, per primitive cell.

    temperatures_K          (T,)      K
    free_energy_eV          (T,)      eV per primitive cell (F_vib, incl. zero point)
    entropy_eV_per_K        (T,)      eV/K per primitive cell
    heat_capacity_eV_per_K  (T,)      eV/K per primitive cell (C_V)
    qpoints                 (Q, 3)    reduced coordinates of the primitive reciprocal cell
    weights                 (Q,)      int  q-point weights
    frequencies_THz         (Q, B)    THz  mesh frequencies (negative = imaginary)
    imaginary_modes         tuple of (q (3,), frequency_THz) below -imaginary_tol_THz
    primitive_volume_A3, n_atoms_primitive: the cell everything is normalised to.
    """

    temperatures_K: np.ndarray
    free_energy_eV: np.ndarray
    entropy_eV_per_K: np.ndarray
    heat_capacity_eV_per_K: np.ndarray
    qpoints: np.ndarray
    weights: np.ndarray
    frequencies_THz: np.ndarray
    imaginary_modes: tuple
    primitive_volume_A3: float
    n_atoms_primitive: int
    phonopy: Any = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class PhononResult:
    """Harmonic result of one structure through a gate.

    mean: HarmonicResult from the best-estimate forces (mean potential).
    members: tuple of HarmonicResult, one per committee member (empty for a plain calculator).
    forces: the ForceSet used.
    """

    mean: HarmonicResult
    members: tuple
    forces: ForceSet

    def spread(self, quantity: str = "free_energy_eV") -> np.ndarray:
        """Sample std (ddof=1) over members of a (T,) quantity; zeros without members."""
        if len(self.members) < 2:
            return np.zeros_like(getattr(self.mean, quantity))
        return np.std([getattr(m, quantity) for m in self.members], axis=0, ddof=1)


def harmonic_from_forces(ph, forces, settings: PhononSettings) -> HarmonicResult:
    """Force constants + mesh + thermal properties of ``ph`` with ``forces`` (S, N, 3) eV/Å.

    ``ph`` is copied: the caller's object keeps its state.
    """
    dataset = copy.deepcopy(ph.dataset)
    nac = ph.nac_params
    ph = ph.replicate()
    ph.dataset = dataset
    if nac is not None:
        ph.nac_params = copy.deepcopy(nac)
    ph.forces = np.asarray(forces, dtype=float)
    ph.produce_force_constants()
    if settings.symmetrize_fc:
        ph.symmetrize_force_constants()
    return harmonic_properties(ph, settings)


def harmonic_properties(ph, settings: PhononSettings) -> HarmonicResult:
    """Mesh and thermal properties of a Phonopy object with force constants."""
    ph.run_mesh(settings.mesh, is_gamma_center=settings.is_gamma_center)
    ph.run_thermal_properties(t_min=settings.t_min_K, t_max=settings.t_max_K,
                              t_step=settings.t_step_K,
                              exclude_gamma_acoustic=bool(settings.exclude_gamma_acoustic))
    tp = ph.thermal_properties
    freqs = np.array(ph.mesh.frequencies)
    q = np.array(ph.mesh.qpoints)
    imag = tuple((tuple(float(x) for x in q[iq]), float(freqs[iq, ib]))
                 for iq, ib in zip(*np.nonzero(freqs < -settings.imaginary_tol_THz)))
    return HarmonicResult(
        temperatures_K=np.array(tp.temperatures, dtype=float),
        free_energy_eV=np.array(tp.free_energy) / PHONOPY_EV_TO_KJMOL,
        entropy_eV_per_K=np.array(tp.entropy) / PHONOPY_EV_TO_JMOL,
        heat_capacity_eV_per_K=np.array(tp.heat_capacity) / PHONOPY_EV_TO_JMOL,
        qpoints=q, weights=np.array(ph.mesh.weights), frequencies_THz=freqs,
        imaginary_modes=imag, primitive_volume_A3=float(ph.primitive.volume),
        n_atoms_primitive=len(ph.primitive), phonopy=ph)


def phonons_from_forces(ph, force_set: ForceSet, settings: PhononSettings) -> PhononResult:
    """Mean-potential and per-member harmonic results from a ForceSet (no calculator calls)."""
    mean = harmonic_from_forces(ph, force_set.forces, settings)
    members = ()
    if force_set.forces_members is not None:
        members = tuple(harmonic_from_forces(ph, fm, settings) for fm in force_set.forces_members)
    return PhononResult(mean=mean, members=members, forces=force_set)


def run_phonons(atoms: Atoms, gate: Gate, settings: PhononSettings | None = None,
                info=None) -> PhononResult:
    """Harmonic phonons of ``atoms`` through ``gate`` (mean potential + every member).

    ``atoms`` (never modified) is used as given: relax it first.  Warns (PhononWarning)
    when the supercell is thinner than twice the committee cutoff, about imaginary
    modes and when ``atoms`` has constraints (phonons ignore them); ``info`` goes into
    the provenance of labels the gate appends.  Raises ConfigError for a non-Gate
    evaluator or a cell of rank < 3.
    """
    require_gate(gate, "run_phonons")
    settings = settings or PhononSettings()
    warn_constraints(atoms)
    ph = make_phonopy(atoms, settings)
    check_supercell_size(ph, max_cutoff(gate.committee))
    result = phonons_from_forces(ph, compute_forces(ph, gate, info=info), settings)
    report_imaginary(result.mean, label="structure")
    return result


def warn_constraints(atoms: Atoms, label: str = "structure") -> None:
    """Warn (PhononWarning) when ``atoms`` carries ASE constraints: phonopy displaces every
    atom of the full (super)cell, so phonons and free energies ignore them."""
    if atoms.constraints:
        names = sorted({type(c).__name__ for c in atoms.constraints})
        warnings.warn(f"{label} has constraints {names}: phonons are computed on the full "
                      "structure (phonopy displaces every atom, also fixed ones); the constraints "
                      "act only on relaxations", PhononWarning, stacklevel=3)


def report_imaginary(result: HarmonicResult, label: str) -> None:
    """Warn (PhononWarning) about imaginary modes, naming the q-point and frequency."""
    if not result.imaginary_modes:
        return
    q, f = min(result.imaginary_modes, key=lambda m: m[1])
    warnings.warn(
        f"{label}: {len(result.imaginary_modes)} imaginary mode(s) on the q-mesh, the lowest "
        f"{f:.4f} THz at q={tuple(round(x, 4) for x in q)}: the structure is not a minimum "
        "(or the supercell/displacement is too small); its free energy is unreliable.",
        PhononWarning, stacklevel=2)
