"""Structures of a QHA scan: scaled volumes, fixed-volume or fixed-pressure relaxation,
static energies and the harmonic step at one volume, all through the gate.

``run_volume_point(atoms, gate, settings)`` is the unit of work a resumable runner
does per volume: relax (optional, :class:`~committee_calc.relax.gated.GatedRelaxer`),
static energy per member, displaced supercells → forces (``gate.evaluate_many``) →
phonons.  Energies are returned per **primitive cell** of the phonopy object, matching
the normalisation of the thermal properties.

User constraints (``FixAtoms``, …) travel with every copy (scaled structures, relaxed
structures: :class:`~committee_calc.relax.gated.GatedRelaxer` keeps them); phonopy's
displacements ignore them by nature, so the phonons are those of the full structure
(a PhononWarning says so).

E(V) must come from one potential-energy surface, so the relaxation and the static
energy use the committee alone (:func:`committee_only`: the gate's hard caps still
stop it); the gate's reference fallback applies to the displaced supercells (the
force constants).

Hybrid QHA (``static_from_reference=True``; phonopy's 2026 anisotropic-QHA guidance): the
static E(V) is the reference's single point at each (committee-relaxed) volume — one labelled
reference call per volume through the gate's labeller (:func:`reference_static_energy`) — and
the phonons stay the committee's, with the gate's fallback on uncertain displaced supercells.
Every member then shares the reference E(V), so the committee spread of V(T), B(T), α(T) and
C_P(T) is the spread of the phonons alone.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from ase import Atoms

from .. import keys as K
from ..committee import max_cutoff
from ..errors import ConfigError, GateStop
from ..gate import Gate, require_gate
from ..relax.gated import GatedRelaxer
from ..structures import is_bulk
from ..units import check_positive
from .forces import compute_forces, used_members
from .harmonic import PhononResult, phonons_from_forces, warn_constraints
from .settings import PhononSettings
from .supercell import check_supercell_size, make_phonopy

RELAX_MODES = ("none", "internal", "shape")


def check_qha_structure(atoms: Atoms, what: str = "the QHA structure") -> None:
    """Raise ConfigError unless ``atoms`` is a 3-D periodic crystal (:func:`is_bulk`): the QHA
    scales (or relaxes at pressure) the volume of the crystal, which along a non-periodic
    direction would scale a slab's vacuum; a cell of rank < 3 is refused likewise."""
    if not is_bulk(atoms):
        raise ConfigError(f"{what} is not a 3-D periodic crystal (pbc={[bool(p) for p in atoms.pbc]}, "
                          f"cell rank {atoms.cell.rank}): the QHA needs one, its volume scan would "
                          "scale the vacuum of a slab or molecule; give a bulk crystal with pbc "
                          "True on every axis")


def scaled_structures(atoms: Atoms, linear_scales=None, volume_scales=None) -> list:
    """Copies of ``atoms`` with the cell scaled (atoms follow, fractional coordinates kept).

    ``linear_scales``: factors on every lattice vector (V ∝ s³);
    ``volume_scales``: factors on the volume.  Exactly one must be given.  Raises ConfigError
    (:func:`check_qha_structure`) for a structure that is not 3-D periodic.
    """
    check_qha_structure(atoms)
    if (linear_scales is None) == (volume_scales is None):
        raise ConfigError("give exactly one of linear_scales or volume_scales")
    scales = np.asarray(linear_scales if linear_scales is not None else volume_scales, float)
    for s in scales:
        check_positive("scale factor", s)
    if volume_scales is not None:
        scales = scales ** (1.0 / 3.0)
    out = []
    for s in scales:
        a = atoms.copy()
        a.calc = None
        a.set_cell(np.array(atoms.cell) * s, scale_atoms=True)
        out.append(a)
    return out


def committee_only(gate: Gate) -> Gate:
    """The committee of ``gate`` alone: ``gate`` itself when it has no reference, else
    ``Gate(gate.committee)`` with the same hard caps and molecule count (no thresholds, no
    reference, no labels): above a cap it still stops (GateStop)."""
    require_gate(gate, "committee_only")
    return gate if gate.reference is None else gate.committee_only()


def relax_structure(atoms: Atoms, gate: Gate, mode: str = "internal", fmax_eVA: float = 0.005,
                    steps: int = 500, pressure_GPa: float | None = None) -> Atoms:
    """A relaxed copy of ``atoms`` (``atoms`` and its calc are untouched), BFGS through
    :class:`~committee_calc.relax.gated.GatedRelaxer` (policy ``fallback``).

    mode "none": as given; "internal": positions at fixed cell; "shape": positions
    and cell shape at fixed volume (``FrechetCellFilter(constant_volume=True)``).
    With ``pressure_GPa`` the full cell (volume included) is relaxed at that
    pressure [GPa] (pressure screening).  Converges on ``fmax_eVA`` [eV/Å] (generalised
    force with the cell) in at most ``steps`` steps; warns (UserWarning) when it does not.
    Raises ConfigError for an unknown mode or a non-Gate evaluator, GateStop when the
    gate's hard cap ends the relaxation.
    """
    require_gate(gate, "relax_structure")
    if mode not in RELAX_MODES:
        raise ConfigError(f"relax mode must be one of {RELAX_MODES}, got {mode!r}")
    a = atoms.copy()
    a.calc = None
    if mode == "none" and pressure_GPa is None:
        return a
    cell = pressure_GPa is not None or mode == "shape"
    res = GatedRelaxer(gate, optimizer="BFGS", fmax=fmax_eVA, max_steps=steps, cell=cell,
                       constant_volume=cell and pressure_GPa is None,
                       pressure_GPa=0.0 if pressure_GPa is None else pressure_GPa).relax(a)
    if res.status == "hard_cap":
        raise GateStop(f"relaxation stopped: {res.reason}")
    if res.status != "converged":
        where = "" if pressure_GPa is None else f" at {pressure_GPa:g} GPa"
        warnings.warn(f"relaxation of the cell of {a.get_volume() / len(a):.3f} Å³/atom{where} did "
                      f"not reach fmax={fmax_eVA} eV/Å in {steps} steps (ended at {res.fmax:.3g} "
                      f"eV/Å, {res.status}); the phonons of this structure may show imaginary modes",
                      UserWarning, stacklevel=2)
    a.set_cell(res.atoms.cell, scale_atoms=False)
    a.positions = res.atoms.positions
    return a


def reference_static_energy(atoms: Atoms, gate: Gate, info=None) -> float:
    """Static energy [eV] of ``atoms`` from the gate's reference: one single point, labelled through
    the gate (``gate.label``: counted in ``n_reference_calls``, stored in its label store, never
    computed twice for one geometry).  ConfigError for a gate without a reference."""
    require_gate(gate, "reference_static_energy")
    if gate.reference is None:
        raise ConfigError("static energies from the reference need a gate with a reference "
                          "(--reference with --static-from-reference)")
    return float(gate.label(atoms, info=dict(info or {}, qha_static=True)).results[K.ENERGY])


def static_energies(atoms: Atoms, gate: Gate) -> tuple:
    """(energy eV, energies_members eV (M,) or None) of ``atoms`` through ``gate``: the
    committee mean and members, or the reference energy for both where the gate fell back."""
    res = require_gate(gate, "static_energies").evaluate(atoms)
    energy = float(res.results[K.ENERGY])
    return energy, used_members(res, K.ENERGY_MEMBERS, energy)


@dataclasses.dataclass(frozen=True)
class VolumePoint:
    """One volume of a QHA scan, per primitive cell.

    atoms: the (relaxed) structure used; energy_eV: static E per primitive cell (mean);
    energies_members_eV: (M,) eV per primitive cell or None; phonons: PhononResult;
    lattice_A: (3,) Å lengths of the input cell vectors; volume_A3: primitive volume;
    static_source: ``"committee"`` or ``"reference"`` (hybrid QHA: E(V) from the reference).
    """

    atoms: Atoms
    energy_eV: float
    energies_members_eV: np.ndarray | None
    phonons: PhononResult
    lattice_A: np.ndarray
    volume_A3: float
    phonopy: object = dataclasses.field(default=None, compare=False, repr=False)
    static_source: str = "committee"


def per_primitive(ph, atoms: Atoms) -> float:
    """Factor that turns a per-``atoms``-cell quantity into per-primitive-cell."""
    return len(ph.primitive) / len(atoms)


def run_volume_point(atoms: Atoms, gate: Gate, settings: PhononSettings, relax: str = "none",
                     fmax_eVA: float = 0.005, steps: int = 500, pressure_GPa: float | None = None,
                     info=None, static_from_reference: bool = False, on_relaxed=None) -> VolumePoint:
    """Relax (optional), static energies, displaced-supercell forces and phonons at one volume.

    relax: a mode of :func:`relax_structure`; with ``pressure_GPa`` [GPa] the full cell is
    relaxed at that pressure instead.  Relaxation and static energies use the committee
    alone (:func:`committee_only`), the displaced supercells go through ``gate`` (labels
    get ``info`` as provenance); with ``static_from_reference`` the static energy is the
    reference's (:func:`reference_static_energy`, every member gets it).  Warns when the
    supercell is thinner than twice the committee cutoff, and when ``atoms`` has ASE
    constraints: the relaxation keeps them, the phonons are those of the full structure.
    ``on_relaxed(atoms)`` is called after the relaxation (progress reporting).
    Returns a :class:`VolumePoint` (per primitive cell).
    Raises ConfigError for a structure that is not 3-D periodic (:func:`check_qha_structure`).
    """
    check_qha_structure(atoms)
    warn_constraints(atoms, "the QHA structure")
    committee = committee_only(gate)
    relaxed = relax_structure(atoms, committee, relax, fmax_eVA, steps, pressure_GPa=pressure_GPa)
    if on_relaxed is not None:
        on_relaxed(relaxed)
    ph = make_phonopy(relaxed, settings)
    check_supercell_size(ph, max_cutoff(gate.committee))
    factor = per_primitive(ph, relaxed)
    if static_from_reference:
        e = reference_static_energy(relaxed, gate, info)
        m = getattr(gate.committee, "n_members", None)
        em = None if m is None else np.full(m, e)
    else:
        e, em = static_energies(relaxed, committee)
    result = phonons_from_forces(ph, compute_forces(ph, gate, info=info), settings)
    return VolumePoint(atoms=relaxed, energy_eV=e * factor,
                       energies_members_eV=None if em is None else em * factor,
                       phonons=result, lattice_A=np.array(relaxed.cell.lengths()),
                       volume_A3=float(ph.primitive.volume), phonopy=ph,
                       static_source="reference" if static_from_reference else "committee")


def volume_point_from_forces(atoms: Atoms, settings: PhononSettings, energy_eV: float,
                             energies_members_eV, force_set, dataset=None) -> VolumePoint:
    """Rebuild a VolumePoint from stored energies and forces (no calculator calls)."""
    ph = make_phonopy(atoms, settings, generate=dataset is None)
    if dataset is not None:
        ph.dataset = dataset
    n = len(ph.supercells_with_displacements)
    if force_set.forces.shape[0] != n:
        raise ConfigError(f"stored forces hold {force_set.forces.shape[0]} supercells but the "
                          f"settings give {n}: the outputs belong to different phonon settings")
    result = phonons_from_forces(ph, force_set, settings)
    return VolumePoint(atoms=atoms, energy_eV=float(energy_eV),
                       energies_members_eV=None if energies_members_eV is None
                       else np.asarray(energies_members_eV, float),
                       phonons=result, lattice_A=np.array(atoms.cell.lengths()),
                       volume_A3=float(ph.primitive.volume), phonopy=ph)
