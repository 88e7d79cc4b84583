"""CommitteeCalculator: an ASE calculator over an ensemble of models.

Drop-in: ``atoms.calc = CommitteeCalculator([calc_a, calc_b, ...])`` and every
ASE optimiser, filter and MD integrator sees the committee mean under the
standard keys; spreads and per-member values sit beside them (schema in
:mod:`committee_calc.uncertainty`).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from . import keys as K
from .calibration_maps import CALIBRATION_KEYS, parse_calibration, scale_view  # noqa: F401
from .calibration_offsets import apply_offsets, parse_offsets
from .errors import ConfigError, MemberPropertyError, NonFiniteOutputError
from .members.ase_member import ASEMember
from .members.base import Member
from .molecules import count_molecules
from .progress import Progress
from .structures import check_cell, is_bulk
from .uncertainty import aggregate

_BASE = (
    K.ENERGY, K.FREE_ENERGY, K.FORCES, K.ENERGY_MEMBERS, K.FORCES_MEMBERS, K.ENERGY_STD,
    K.ENERGY_STD_PER_ATOM, K.FORCES_STD, K.FORCES_STD_ATOM, K.FORCES_STD_MAX,
    K.FORCE_UNCERTAINTY_RELATIVE, K.N_NONFINITE,
)
_STRESS = (K.STRESS, K.STRESS_MEMBERS, K.STRESS_STD)
_ENERGIES = (K.ENERGIES, K.ENERGIES_MEMBERS, K.ENERGIES_STD)


def validate_calibration(calibration) -> dict:
    """Check a ``calibration:`` block (:mod:`committee_calc.calibration_maps`): known quantities,
    α finite and > 0, valid conformal/isotonic maps.  Returns {quantity: α float, or the
    Calibrator of a conformal/isotonic map}; raises CalibrationError."""
    return scale_view(parse_calibration(calibration))


def _as_member(obj, i) -> Member:
    if isinstance(obj, Member):
        return obj
    if hasattr(obj, "get_property"):
        return ASEMember(obj, name=f"member{i}")
    raise ConfigError(f"committee member {i} ({obj!r}) is neither a Member nor an ASE calculator")


class CommitteeCalculator(Calculator):
    """Committee mean and spread of M ≥ 2 members.

    Parameters
    ----------
    members:
        ASE calculators and/or :class:`~committee_calc.members.base.Member`
        adapters (see :func:`committee_calc.load_committee` for YAML specs).
    calibration:
        α factors ``{"energy": α_E, "forces": α_F, "stress": α_S}`` that
        scale the spreads (never the means), or calibrator maps (split-conformal,
        isotonic: :mod:`committee_calc.calibration_maps`); default 1.
        ``calibrators`` holds them all as Calibrator objects.
    energy_offsets:
        per-member, per-element energy offsets (:mod:`committee_calc.calibration_offsets`)
        subtracted from each member's energy before aggregation; None: none.
    molecules:
        molecule count for per-molecule uncertainty: an int, ``"auto"``
        (connectivity via covalent radii, recomputed when atomic numbers
        change) or None (no per-molecule key).
    stress:
        ``"auto"`` computes stress for 3-D periodic cells when every member
        supports it; ``True`` always (error on non-periodic); ``False`` never.
    require:
        properties every member must provide (checked at construction).
    """

    implemented_properties = _BASE + _STRESS + _ENERGIES + ("energy_std_per_molecule",)
    default_parameters: dict = {}

    def __init__(self, members, calibration=None, molecules=None, stress="auto",
                 require=("energy", "forces"), energy_offsets=None, **kwargs):
        super().__init__(**kwargs)
        members = list(members)
        if len(members) < 2:
            raise ConfigError(
                f"a committee needs at least 2 members, got {len(members)}; a spread "
                "over one model is undefined"
            )
        ids = [id(getattr(m, "calc", m)) for m in members]
        if len(set(ids)) != len(ids):
            raise ConfigError("the same calculator object appears twice in the committee; "
                              "give each member its own instance")
        self.members = [_as_member(m, i) for i, m in enumerate(members)]
        for p in require:
            lacking = [m.name for m in self.members if p not in m.implemented_properties]
            if lacking:
                raise MemberPropertyError(
                    f"committee members {lacking} do not provide {p!r}; every member must"
                )
        self.calibration = validate_calibration(calibration)
        self.energy_offsets = parse_offsets(energy_offsets, [m.name for m in self.members])
        if stress not in ("auto", True, False):
            raise ConfigError(f"stress must be 'auto', True or False, got {stress!r}")
        self.stress_mode = stress
        if molecules is not None and molecules != "auto":
            if not isinstance(molecules, (int, np.integer)) or molecules < 1:
                raise ConfigError(f"molecules must be a positive int or 'auto', got {molecules!r}")
        self.molecules = molecules
        self._n_molecules = None if molecules == "auto" else molecules
        common = set.intersection(*(set(m.implemented_properties) for m in self.members))
        props = list(_BASE)
        if "stress" in common:
            props += _STRESS
        props += _ENERGIES  # only present in results when every member returns them
        if molecules is not None:
            props.append("energy_std_per_molecule")
        # a fresh tuple per instance: never mutate the class-level declaration
        self.implemented_properties = tuple(props)
        self.member_properties = tuple(sorted(common))
        self.n_calls = 0
        self.member_calls = [0] * len(self.members)
        self._groups = self._make_groups()

    # ------------------------------------------------------------------
    @property
    def calibration(self) -> dict:
        """{quantity: α} (a Calibrator for a conformal/isotonic map); set it with a calibration block."""
        return self._calibration

    @calibration.setter
    def calibration(self, value) -> None:
        self.calibrators = parse_calibration(value)
        self._calibration = scale_view(self.calibrators)

    def _aligned(self, preds, atoms) -> list:
        """Member predictions with the energy offsets applied (before aggregation)."""
        getattr(self, "domain_watch", None) and self.domain_watch(atoms, preds, self)  # see domain.watch
        return apply_offsets(preds, atoms.numbers, self.energy_offsets)

    def _make_groups(self):
        groups: OrderedDict = OrderedDict()
        for i, m in enumerate(self.members):
            key = m.group_key()
            groups.setdefault((type(m), key) if key is not None else ("solo", i), []).append(i)
        return list(groups.values())

    @property
    def n_members(self) -> int:
        return len(self.members)

    def _want_stress(self, atoms, properties) -> bool:
        periodic = is_bulk(atoms)
        has = "stress" in self.member_properties
        asked = any(p.startswith("stress") for p in properties)
        if asked and not has:
            lacking = [m.name for m in self.members if "stress" not in m.implemented_properties]
            raise MemberPropertyError(
                f"stress requested but members {lacking} cannot compute it; use members "
                "with stress or do not ask for it (e.g. no cell filter)"
            )
        if self.stress_mode is False:
            if asked:
                raise MemberPropertyError("stress requested but the committee was built with stress=False")
            return False
        if asked and not periodic:
            raise MemberPropertyError("stress requested for a structure that is not 3-D periodic")
        if self.stress_mode is True:
            return True
        return has and periodic

    def evaluate_members(self, atoms, properties=("energy", "forces")) -> list:
        """Raw per-member predictions (list of M dicts) for ``atoms``."""
        check_cell(atoms)
        for m in self.members:
            m.check_atoms(atoms)
        preds = [None] * len(self.members)
        for idx in self._groups:
            group = [self.members[i] for i in idx]
            copy = atoms.copy()
            copy.calc = None
            out = type(group[0]).predict_group(group, copy, properties) if len(group) > 1 \
                else [group[0].predict(copy, properties)]
            for i, p in zip(idx, out):
                preds[i] = p
                self.member_calls[i] += 1
        return preds

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        props = ["energy", "forces"]
        if self._want_stress(atoms, properties):
            props.append("stress")
        if "energies" in self.member_properties or any(p.startswith("energies") for p in properties):
            props.append("energies")
        preds = self._aligned(self.evaluate_members(atoms, props), atoms)
        self.n_calls += 1
        self.results = aggregate(preds, self.calibrators)
        if self.molecules is not None:
            if self._n_molecules is None or "numbers" in system_changes:
                self._n_molecules = (count_molecules(atoms) if self.molecules == "auto"
                                     else self.molecules)
            self.results[K.ENERGY_STD_PER_MOLECULE] = self.results[K.ENERGY_STD] / self._n_molecules
            self.results[K.N_MOLECULES] = self._n_molecules

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name.startswith("stress") and "stress" not in self.member_properties:
            self._want_stress(self.atoms, [name])  # raises, naming the members
        if name not in self.implemented_properties:
            raise MemberPropertyError(
                f"property {name!r} is not available from this committee; available: "
                f"{list(self.implemented_properties)}"
            )
        if name.startswith("stress"):
            self._want_stress(atoms if atoms is not None else self.atoms, [name])
        return super().get_property(name, atoms, allow_calculation)

    # ------------------------------------------------------------------
    def predict(self, structures, batch_size: int | None = None, properties=None,
                progress: bool = False, desc: str = "predict") -> list:
        """Committee results (schema dicts) for many structures.

        Does not touch ``self.results``; each structure is evaluated once.
        Backends that can batch several structures implement
        ``Member.predict_batch``; others are looped.  ``batch_size`` structures
        (default 16) per batched call; ``progress``: a tqdm bar on a terminal,
        else one plain ``progress:`` line per batch (:class:`~committee_calc.
        progress.Progress`, ``desc`` names the work).
        """
        structures = list(structures)
        bsize = 16 if batch_size is None else int(batch_size)
        if bsize < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        out = []
        chunks = [structures[i:i + bsize] for i in range(0, len(structures), bsize)]
        with Progress(len(structures), desc, unit="structures", enabled=progress) as bar:
            for chunk in chunks:
                out.extend(self._predict_chunk(chunk, properties))
                bar.update(len(chunk), postfix=f"batch of {len(chunk)}", force=True)
        return out

    def _predict_chunk(self, chunk, properties) -> list:
        """Aggregated committee results of one batch (see :meth:`predict`)."""
        out = []
        for atoms, preds in zip(chunk, self._evaluate_chunk(chunk, properties)):
            self.n_calls += 1
            try:
                out.append(aggregate(self._aligned(preds, atoms), self.calibrators))
            except NonFiniteOutputError:
                if properties is not None and "raise" in properties:
                    raise
                out.append({"n_nonfinite": len(preds), "energy": float("nan")})
        return out

    def _evaluate_chunk(self, chunk, properties) -> list:
        """Per-structure lists of member predictions; groups whose member class has
        ``predict_batch(members, structures, properties)`` get one batched call."""
        props = []
        for atoms in chunk:
            p = ["energy", "forces"]
            if self._want_stress(atoms, properties or ()):
                p.append("stress")
            if "energies" in self.member_properties:
                p.append("energies")
            props.append(p)
            check_cell(atoms)
            for m in self.members:
                m.check_atoms(atoms)
        union = sorted(set().union(*props)) if props else []
        preds = [[None] * len(self.members) for _ in chunk]
        for idx in self._groups:
            group = [self.members[i] for i in idx]
            batch_fn = getattr(type(group[0]), "predict_batch", None)
            if batch_fn is not None and len(chunk) > 1:
                copies = []
                for atoms in chunk:
                    c = atoms.copy()
                    c.calc = None
                    copies.append(c)
                rows = batch_fn(group, copies, union)
            else:
                rows = [self.evaluate_members_subset(group, atoms, p) for atoms, p in zip(chunk, props)]
            for s, row in enumerate(rows):
                for i, pr in zip(idx, row):
                    pr = {k: v for k, v in pr.items() if k in props[s]}
                    preds[s][i] = pr
                    self.member_calls[i] += 1
        return preds

    @staticmethod
    def evaluate_members_subset(group, atoms, properties) -> list:
        copy = atoms.copy()
        copy.calc = None
        if len(group) > 1:
            return type(group[0]).predict_group(group, copy, properties)
        return [group[0].predict(copy, properties)]

    def with_calibration(self, calibration) -> CommitteeCalculator:
        """Same members, new α factors (a new calculator; members shared)."""
        new = CommitteeCalculator.__new__(CommitteeCalculator)
        new.__dict__.update(self.__dict__)
        new.calibration = validate_calibration(calibration)
        new.results = {}
        new.atoms = None
        return new

    def with_offsets(self, energy_offsets) -> CommitteeCalculator:
        """Same members and calibration, new energy offsets (None: none); members shared."""
        new = self.with_calibration(self.calibrators)
        new.energy_offsets = parse_offsets(energy_offsets, [m.name for m in self.members])
        return new

    def __repr__(self):
        names = ", ".join(m.name for m in self.members)
        return f"CommitteeCalculator(M={len(self.members)}: {names})"


def max_cutoff(committee) -> float | None:
    """Largest member cutoff [Å] of a committee (``cutoff`` of its ``members``), or None when no
    member states one (e.g. plain ASE calculators)."""
    cuts = [getattr(m, "cutoff", None) for m in getattr(committee, "members", None) or []]
    cuts = [float(c) for c in cuts if c]
    return max(cuts) if cuts else None


def require_stress(calc, needed: bool = True, what: str = "this run") -> None:
    """Refuse, before any work, a run that changes the cell (``needed``) on a calculator that
    cannot compute stress.

    calc: a :class:`CommitteeCalculator` (every member must provide ``stress``, and it must not
        be built with ``stress=False``), a :class:`~committee_calc.gate.Gate`-like object with a
        ``committee``, or any ASE calculator (its ``implemented_properties``).
    what: the option that asks for the cell change, e.g. ``"--cell"``, named in the message.
    Raises MemberPropertyError (a CommitteeError: exit 2 in the drivers) naming the members.
    """
    if not needed:
        return
    calc = getattr(calc, "committee", calc) if not hasattr(calc, "members") else calc
    members = getattr(calc, "members", None)
    if members is not None:
        lacking = [m.name for m in members if "stress" not in m.implemented_properties]
        if getattr(calc, "stress_mode", "auto") is False:
            raise MemberPropertyError(f"{what} changes the cell, which needs stress, but the "
                                      "committee was built with stress=False")
    else:
        props = getattr(calc, "implemented_properties", ())
        lacking = [] if "stress" in props else [type(calc).__name__]
    if lacking:
        raise MemberPropertyError(
            f"{what} changes the cell, which needs stress, but committee members {lacking} cannot "
            "compute stress; use members that provide stress or run without changing the cell")
