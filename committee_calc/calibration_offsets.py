"""Per-member, per-element energy offsets: aligning committees that mix frameworks or levels of theory.

Members trained on different data (other E0 conventions, another functional, a foundation
model next to a fine-tuned one) disagree on the energy by a nearly composition-linear term,
so their energy spread measures the offset, not the uncertainty.  For member m an offset
b_m,Z [eV/atom] per element Z is fitted by least squares on shared labelled frames f::

    E_m(f) − E_ref(f) ≈ Σ_Z n_Z(f) · b_m,Z          (n_Z: atoms of element Z in frame f)

(``numpy.linalg.lstsq``, minimum-norm where the compositions do not fix every element), and
``E_m − Σ_Z n_Z b_m,Z`` is what the committee aggregates: offsets are applied to every member's
energy (and per-atom energies) *before* means and spreads are taken; forces and stress are
unchanged (a per-element constant has no gradient).  Without reference energies
(``reference=None``) the members are aligned to the committee mean instead.

YAML (``energy_offsets:``, one entry per member in committee order)::

    energy_offsets:
      - {member: mace_0, eV_per_atom: {Si: 0.0, O: 0.0}}
      - {member: chgnet_0, eV_per_atom: {Si: -0.231, O: 0.114}}
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from .errors import CalibrationError, ConfigError


class OffsetWarning(UserWarning):
    """Energy offsets are missing, incomplete or not unique."""


@dataclass(frozen=True)
class EnergyOffsets:
    """Offsets per member: ``members`` (names, committee order) and ``offsets`` (per member
    {symbol: eV per atom})."""

    members: tuple
    offsets: tuple

    def shifts(self, numbers) -> np.ndarray:
        """(M, N) eV: the offset of every member for every atom of ``numbers`` (0 where an
        element has no offset, with an OffsetWarning)."""
        symbols = [chemical_symbols[int(z)] for z in numbers]
        missing = sorted({s for s in symbols for o in self.offsets if s not in o})
        if missing:
            warnings.warn(f"no energy offsets for element(s) {missing}; their atoms are not aligned "
                          "(fit the offsets on frames that contain them)", OffsetWarning, stacklevel=3)
        return np.array([[o.get(s, 0.0) for s in symbols] for o in self.offsets], dtype=float)

    def as_spec(self) -> list:
        return [{"member": n, "eV_per_atom": {k: float(v) for k, v in o.items()}}
                for n, o in zip(self.members, self.offsets)]


def parse_offsets(spec, member_names) -> EnergyOffsets | None:
    """The ``energy_offsets:`` list (or an EnergyOffsets) checked against the member names;
    None -> None.  Raises ConfigError for a wrong count, names, elements or values."""
    if spec is None:
        return None
    names = list(member_names)
    if isinstance(spec, EnergyOffsets):
        spec = spec.as_spec()
    if not isinstance(spec, list) or len(spec) != len(names):
        raise ConfigError(f"energy_offsets must be a list with one entry per member ({len(names)}: "
                          f"{names}), got {spec!r}")
    offsets = []
    for i, (entry, name) in enumerate(zip(spec, names)):
        if not isinstance(entry, dict) or not isinstance(entry.get("eV_per_atom"), dict):
            raise ConfigError(f"energy_offsets entry {i} must be {{member: name, eV_per_atom: "
                              f"{{Si: 0.1}}}}, got {entry!r}")
        if entry.get("member", name) != name:
            raise ConfigError(f"energy_offsets entry {i} is for member {entry.get('member')!r} but member "
                              f"{i} of the committee is {name!r}; refit the offsets for this committee")
        o = {}
        for sym, v in entry["eV_per_atom"].items():
            if sym not in atomic_numbers:
                raise ConfigError(f"energy_offsets entry {i}: unknown element {sym!r}")
            try:
                o[sym] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"energy_offsets entry {i}: {sym} must be a number, got {v!r}") from None
            if not np.isfinite(o[sym]):
                raise ConfigError(f"energy_offsets entry {i}: {sym} must be finite, got {v!r}")
        offsets.append(o)
    return EnergyOffsets(tuple(names), tuple(offsets))


def apply_offsets(predictions: list, numbers, offsets: EnergyOffsets | None) -> list:
    """Member predictions (list of M dicts) with ``energy`` (and ``energies``) minus each member's
    offsets for the atoms ``numbers``; new dicts, the input is not modified."""
    if offsets is None:
        return predictions
    shift = offsets.shifts(numbers)
    out = []
    for p, s in zip(predictions, shift):
        q = dict(p)
        if "energy" in q:
            q["energy"] = float(q["energy"]) - float(s.sum())
        if "energies" in q:
            q["energies"] = np.asarray(q["energies"], float) - s
        out.append(q)
    return out


def composition_matrix(numbers_list, elements=None) -> tuple:
    """(F, E) atom counts per frame and element, and the element symbols (sorted by Z)."""
    zs = sorted({int(z) for n in numbers_list for z in n}) if elements is None else \
        [atomic_numbers[e] for e in elements]
    a = np.array([[int(np.sum(np.asarray(n) == z)) for z in zs] for n in numbers_list], dtype=float)
    return a, [chemical_symbols[z] for z in zs]


def fit_offsets(member_energies, numbers_list, member_names, reference=None) -> tuple:
    """Least-squares offsets (module docstring).

    member_energies: (F, M) eV, raw member energies of F frames; numbers_list: F arrays of
    atomic numbers; reference: (F,) eV reference energies, or None to align to the member mean.
    Returns (EnergyOffsets, report dict: elements, rank, rms spread per atom before/after [eV/atom]).
    Raises CalibrationError for fewer than 2 frames or non-finite energies.
    """
    e = np.asarray(member_energies, float)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[1] != len(member_names):
        raise CalibrationError(f"offsets need member energies of shape (frames >= 2, members="
                               f"{len(member_names)}), got {e.shape}")
    target = e.mean(axis=1) if reference is None else np.asarray(reference, float).reshape(-1)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(target))):
        raise CalibrationError("offsets need finite member and reference energies")
    a, elements = composition_matrix(numbers_list)
    b, _, rank, _ = np.linalg.lstsq(a, e - target[:, None], rcond=None)
    if rank < len(elements):
        warnings.warn(f"the frames' compositions fix only {rank} of {len(elements)} element offsets "
                      f"({elements}); the minimum-norm solution aligns members on these compositions "
                      "only: add frames of other compositions", OffsetWarning, stacklevel=2)
    natoms = a.sum(axis=1)
    aligned = e - a @ b
    before = float(np.sqrt(np.mean((e.std(axis=1, ddof=1) / natoms) ** 2)))
    after = float(np.sqrt(np.mean((aligned.std(axis=1, ddof=1) / natoms) ** 2)))
    offsets = EnergyOffsets(tuple(member_names),
                            tuple({s: float(b[j, m]) for j, s in enumerate(elements)}
                                  for m in range(len(member_names))))
    return offsets, {"elements": elements, "rank": int(rank), "n_frames": int(len(e)),
                     "target": "reference" if reference is not None else "committee mean",
                     "rms_spread_per_atom_before_eV": before, "rms_spread_per_atom_after_eV": after}


def member_backend(member) -> str:
    """The framework of a member: its ``backend``, for ASE members with the calculator class."""
    d = member.describe() if hasattr(member, "describe") else {}
    backend = d.get("backend", getattr(member, "backend", type(member).__name__))
    return f"{backend}:{d['calculator']}" if d.get("calculator") else str(backend)


def backends(committee) -> list:
    """Distinct member frameworks of a committee (or of a Δ-learning calculator's committee)."""
    committee = getattr(committee, "committee", committee)
    out = []
    for m in getattr(committee, "members", []) or []:
        b = member_backend(m)
        if b not in out:
            out.append(b)
    return out


def needs_offsets(committee) -> bool:
    """True when members come from different frameworks and no energy offsets are set."""
    inner = getattr(committee, "committee", committee)
    return len(backends(inner)) > 1 and getattr(inner, "energy_offsets", None) is None


__all__ = ["EnergyOffsets", "OffsetWarning", "parse_offsets", "apply_offsets", "fit_offsets",
           "composition_matrix", "member_backend", "backends", "needs_offsets"]
