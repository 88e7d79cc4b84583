"""Harmonic phonons with phonopy for any ASE calculator or a committee.

Pipeline (one structure, e.g. one volume of a QHA scan)::

    settings = PhononSettings(supercell_matrix=3, distance_A=0.01, mesh=(20, 20, 20))
    ph = make_phonopy(atoms, settings)                 # displacements generated
    forces = compute_forces(ph, committee, gate=None)  # ForceSet (per member too)
    res = run_phonons(atoms, committee, settings)      # PhononResult: mean + members

Every thermal quantity is per **primitive cell** (phonopy's normalisation):
E(V) and V given to a QHA must be on the same cell (trap 3 of the fixtures).
Internal units: eV, Å, K, eV/K; frequencies in THz (phonopy's unit).

Committee: the best-estimate force constants come from the committee mean
forces (the "mean potential"); each member also gets its own force constants
from its own forces, so every harmonic quantity has a per-member value. A
displaced supercell the gate sends to the reference uses the reference forces
for the mean *and* for every member (that supercell then adds no spread).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
from ase import Atoms

from ..errors import ConfigError
from ..units import PHONOPY_EV_TO_KJMOL, check_positive

#: eV per kJ/mol of primitive cells (phonopy's EvTokJmol)


class PhononWarning(UserWarning):
    """A physically suspicious phonon setting or result (imaginary modes, small supercell)."""


def _matrix(value, name, dtype=int):
    if value is None:
        return None
    a = np.array(value, dtype=float)
    if a.size == 1:
        a = np.eye(3) * float(a.reshape(-1)[0])
    elif a.size == 3:
        a = np.diag(a.reshape(3))
    elif a.size != 9:
        raise ConfigError(f"{name} must be a number, 3 numbers or a 3x3 matrix, got {value!r}")
    a = a.reshape(3, 3)
    if dtype is int:
        if not np.allclose(a, np.round(a)):
            raise ConfigError(f"{name} must be integer, got {value!r}")
        a = np.round(a).astype(int)
    if abs(np.linalg.det(a)) < 1e-8:
        raise ConfigError(f"{name} is singular: {value!r}")
    return tuple(tuple(r) for r in a.tolist())


def mesh_contains_gamma(mesh, is_gamma_center: bool) -> bool:
    """True when a q-mesh samples Γ: any odd number, Γ-centred, or a length mesh."""
    if np.ndim(mesh) == 0:
        return True  # length meshes are Γ-centred in phonopy
    return bool(is_gamma_center or any(int(n) % 2 == 1 for n in mesh))


@dataclasses.dataclass(frozen=True)
class PhononSettings:
    """Every phonopy setting of the harmonic step (validated at construction).

    ``exclude_gamma_acoustic="auto"`` excludes the three acoustic modes at Γ
    exactly when the mesh contains Γ (odd, Γ-centred or length mesh): their
    tiny frequencies of random sign otherwise add a large ln(ħω/kT) term to
    F_vib and shift V(T) by ~1e-2 Å³.  An even Monkhorst–Pack mesh (default)
    has no Γ and needs nothing excluded.
    """

    supercell_matrix: Any = 3
    primitive_matrix: Any = None          # None (the input cell), "auto" or 3x3
    distance_A: float = 0.01
    is_plusminus: Any = "auto"
    is_diagonal: bool = True
    mesh: Any = (20, 20, 20)
    is_gamma_center: bool = False
    exclude_gamma_acoustic: Any = "auto"
    t_min_K: float = 0.0
    t_max_K: float = 800.0
    t_step_K: float = 10.0
    symprec: float = 1e-5
    symmetrize_fc: bool = False
    imaginary_tol_THz: float = 0.05       # modes below -tol are reported

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("supercell_matrix", _matrix(self.supercell_matrix, "supercell_matrix"))
        if self.primitive_matrix is not None and self.primitive_matrix != "auto":
            set_("primitive_matrix", _matrix(self.primitive_matrix, "primitive_matrix", float))
        set_("distance_A", check_positive("distance_A", self.distance_A))
        if self.is_plusminus not in ("auto", True, False):
            raise ConfigError(f"is_plusminus must be 'auto', True or False, got {self.is_plusminus!r}")
        if np.ndim(self.mesh) == 0:
            set_("mesh", check_positive("mesh (length)", self.mesh))
        else:
            m = tuple(int(n) for n in self.mesh)
            if len(m) != 3 or min(m) < 1:
                raise ConfigError(f"mesh must be 3 positive integers or a length, got {self.mesh!r}")
            set_("mesh", m)
        if self.exclude_gamma_acoustic == "auto":
            set_("exclude_gamma_acoustic", mesh_contains_gamma(self.mesh, self.is_gamma_center))
        elif not isinstance(self.exclude_gamma_acoustic, (bool, np.bool_)):
            raise ConfigError("exclude_gamma_acoustic must be 'auto', True or False")
        elif mesh_contains_gamma(self.mesh, self.is_gamma_center) and not self.exclude_gamma_acoustic:
            warnings.warn(
                f"the q-mesh {self.mesh} (gamma_center={self.is_gamma_center}) contains Γ and "
                "exclude_gamma_acoustic=False: the acoustic modes at Γ add noise of random sign "
                "to F_vib (V(T) moves by ~1e-2 Å³). Use an even Monkhorst–Pack mesh or "
                "exclude_gamma_acoustic=True.", PhononWarning, stacklevel=3)
        check_positive("t_step_K", self.t_step_K)
        check_positive("t_min_K", self.t_min_K, allow_zero=True)
        if self.t_max_K < self.t_min_K + 2 * self.t_step_K:
            raise ConfigError(f"t_max_K={self.t_max_K} must exceed t_min_K + 2*t_step_K "
                              "(the QHA needs 3 temperatures, and uses the last for differences)")
        check_positive("symprec", self.symprec)
        check_positive("imaginary_tol_THz", self.imaginary_tol_THz, allow_zero=True)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (np.array(v).tolist() if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class ForceSet:
    """Forces on the displaced supercells of one phonopy object.

    forces          (S, N, 3) eV/Å  best estimate (committee mean, or reference where gated)
    forces_members  (M, S, N, 3) eV/Å or None  per member (reference where gated)
    forces_std_max  (S,) eV/Å or None  committee max per-atom force spread (before fallback)
    decisions       (S,) str  "committee", "reference" or "calculator"
    label_indices   (S,) int or None  label-store index of each reference label
    """

    forces: np.ndarray
    forces_members: np.ndarray | None
    forces_std_max: np.ndarray | None
    decisions: tuple
    label_indices: tuple

    @property
    def n_reference(self) -> int:
        return sum(d == "reference" for d in self.decisions)


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
    """Harmonic result of a calculator or committee at one structure.

    mean: HarmonicResult from the best-estimate forces (mean potential).
    members: tuple of HarmonicResult, one per committee member (empty otherwise).
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


# ---------------------------------------------------------------------------
def to_phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.array(atoms.cell),
                        scaled_positions=atoms.get_scaled_positions(wrap=False))


def to_ase_atoms(cell) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions,
                 pbc=True)


def make_phonopy(atoms: Atoms, settings: PhononSettings, generate: bool = True):
    """A Phonopy object for ``atoms`` (never modified) with displacements generated.

    ``primitive_matrix=None`` means the input cell itself (identity), whatever the phonopy
    version (phonopy >= 4 would otherwise pick 'auto', which can resolve differently at
    different volumes of a scan and change the per-primitive-cell normalisation).
    """
    from phonopy import Phonopy

    if atoms.cell.rank != 3:
        raise ConfigError("phonons need a 3-D periodic cell; the structure has "
                          f"cell rank {atoms.cell.rank}")
    ph = Phonopy(to_phonopy_atoms(atoms), supercell_matrix=settings.supercell_matrix,
                 primitive_matrix=np.eye(3) if settings.primitive_matrix is None
                 else settings.primitive_matrix, symprec=settings.symprec)
    if generate:
        ph.generate_displacements(distance=settings.distance_A, is_plusminus=settings.is_plusminus,
                                  is_diagonal=settings.is_diagonal)
    return ph


def supercell_widths(cell) -> np.ndarray:
    """Perpendicular widths (3,) Å of a cell: the largest sphere it holds has diameter min()."""
    cell = np.asarray(cell, dtype=float)
    vol = abs(np.linalg.det(cell))
    return np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
                     for i in range(3)])


def committee_cutoff(calculator) -> float | None:
    """Largest known member cutoff (Å) of a committee, or None."""
    cuts = [getattr(m, "cutoff", None) for m in getattr(calculator, "members", [])]
    cuts = [c for c in cuts if c is not None]
    return max(cuts) if cuts else None


def suggest_supercell(unitcell, cutoff_A: float) -> tuple:
    """Smallest diagonal multipliers (n1, n2, n3) of ``unitcell`` (3x3 Å) whose supercell
    is at least 2 × ``cutoff_A`` thick in every direction (width_i scales with n_i)."""
    w = supercell_widths(unitcell)
    return tuple(max(1, int(np.ceil(2.0 * cutoff_A / wi - 1e-9))) for wi in w)


def check_supercell_size(ph, cutoff_A: float | None) -> bool:
    """Warn when the supercell is thinner than twice the interaction cutoff, naming the
    cutoff and the smallest diagonal supercell of the input cell that satisfies it."""
    if cutoff_A is None:
        return True
    width = float(supercell_widths(ph.supercell.cell).min())
    if width < 2.0 * cutoff_A:
        n = suggest_supercell(ph.unitcell.cell, cutoff_A)
        current = " ".join(str(int(x)) for x in np.diag(np.asarray(ph.supercell_matrix))) \
            if np.allclose(ph.supercell_matrix, np.diag(np.diag(ph.supercell_matrix))) \
            else str(np.asarray(ph.supercell_matrix).tolist())
        warnings.warn(
            f"the phonon supercell {current} is {width:.2f} Å thick, less than twice the "
            f"committee cutoff ({cutoff_A:.2f} Å, so {2 * cutoff_A:.2f} Å are needed): a "
            "displaced atom interacts with its own images and the force constants are "
            f"aliased. Use a supercell of at least {n[0]} {n[1]} {n[2]} (supercell_matrix, "
            "committee-qha --supercell).", PhononWarning, stacklevel=2)
        return False
    return True


def _is_committee(calculator) -> bool:
    return hasattr(calculator, "evaluate_members") and hasattr(calculator, "members")


def compute_forces(ph, calculator, gate=None, info=None) -> ForceSet:
    """Forces on every displaced supercell of ``ph`` (calculator, committee or gate)."""
    from ..uncertainty import aggregate

    supercells = [to_ase_atoms(sc) for sc in ph.supercells_with_displacements]
    committee = _is_committee(calculator)
    forces, members, stds, decisions, labels = [], [], [], [], []
    for i, sc in enumerate(supercells):
        if gate is not None:
            res = gate.evaluate(sc, step=i, info=dict(info or {}, displacement=i))
            cres = res.committee_results or {}
            f = np.array(res.results["forces"], dtype=float)
            fm = cres.get("forces_members")
            if res.decision == "reference":
                fm = None if fm is None else np.repeat(f[None], len(fm), axis=0)
            decisions.append(res.decision)
            labels.append(res.label_index)
            stds.append(cres.get("forces_std_max", np.nan))
        elif committee:
            agg = aggregate(calculator.evaluate_members(sc, ("energy", "forces")),
                            getattr(calculator, "calibration", None))
            f, fm = agg["forces"], agg["forces_members"]
            decisions.append("committee")
            labels.append(None)
            stds.append(agg["forces_std_max"])
        else:
            sc.calc = calculator
            f, fm = sc.get_forces(), None
            decisions.append("calculator")
            labels.append(None)
            stds.append(np.nan)
        forces.append(np.array(f, dtype=float))
        members.append(None if fm is None else np.array(fm, dtype=float))
    fm = None
    if members and all(m is not None for m in members):
        fm = np.stack(members, axis=1)  # (M, S, N, 3)
    std = np.array(stds, dtype=float)
    return ForceSet(forces=np.array(forces), forces_members=fm,
                    forces_std_max=None if np.all(np.isnan(std)) else std,
                    decisions=tuple(decisions), label_indices=tuple(labels))


def harmonic_from_forces(ph, forces, settings: PhononSettings) -> HarmonicResult:
    """Force constants + mesh + thermal properties of ``ph`` with ``forces`` (S, N, 3) eV/Å.

    ``ph`` is copied: the caller's object keeps its state.
    """
    import copy

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
    jmol = PHONOPY_EV_TO_KJMOL * 1000.0
    return HarmonicResult(
        temperatures_K=np.array(tp.temperatures, dtype=float),
        free_energy_eV=np.array(tp.free_energy) / PHONOPY_EV_TO_KJMOL,
        entropy_eV_per_K=np.array(tp.entropy) / jmol,
        heat_capacity_eV_per_K=np.array(tp.heat_capacity) / jmol,
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


def run_phonons(atoms: Atoms, calculator, settings: PhononSettings | None = None, gate=None,
                info=None) -> PhononResult:
    """Harmonic phonons of ``atoms`` with an ASE calculator, a committee or a gate.

    ``atoms`` and its ``calc`` are left untouched; the structure is used as given
    (relax it first).  With ``gate``, ``calculator`` must be the gate's committee.
    """
    settings = settings or PhononSettings()
    ph = make_phonopy(atoms, settings)
    check_supercell_size(ph, committee_cutoff(calculator))
    force_set = compute_forces(ph, calculator, gate=gate, info=info)
    result = phonons_from_forces(ph, force_set, settings)
    report_imaginary(result.mean, label="structure")
    return result


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
