"""The member interface every backend adapter implements.

A *member* turns a model into predictions for one structure::

    member.predict(atoms, properties) -> {"energy": float, "forces": (N,3), ...}

Units are eV, eV/Å, eV/Å³ (Voigt, ASE sign convention).  ``atoms`` passed to a
member is always the committee's private copy; members must not keep or mutate
the caller's object.

Members of one framework can share work (one neighbour list/graph per
structure, one batched forward pass).  The committee groups members with equal
non-``None`` :meth:`Member.group_key` and hands each group to
``type(member).predict_group``; the default just loops.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, CutoffMismatchError, UnknownSpeciesError

#: properties a member may return, with their shapes for N atoms
MEMBER_PROPERTIES = ("energy", "forces", "stress", "energies")


class Member:
    """Base class for committee members (one model each)."""

    backend = "base"
    #: properties this member can return
    implemented_properties: tuple = ("energy", "forces")
    #: interaction cutoff in Å, or None when unknown / not applicable
    cutoff: float | None = None
    #: chemical symbols the model knows, or None for "any"
    species: frozenset | None = None

    def __init__(self, name: str | None = None):
        self.name = name or self.backend

    # -- validation -------------------------------------------------------
    def check_atoms(self, atoms) -> None:
        """Raise :class:`UnknownSpeciesError` for elements the model lacks."""
        if self.species is None:
            return
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.species))
        if unknown:
            raise UnknownSpeciesError(
                f"member {self.name!r} ({self.backend}) has no parameters for "
                f"element(s) {unknown}; it knows {sorted(self.species)}. Remove "
                "those atoms or use a model trained on them."
            )

    # -- evaluation -------------------------------------------------------
    def predict(self, atoms, properties: Sequence[str]) -> dict:
        raise NotImplementedError

    def group_key(self):
        """Members with equal non-None keys are evaluated by ``predict_group``."""
        return None

    @classmethod
    def predict_group(cls, members: Sequence[Member], atoms, properties) -> list:
        return [m.predict(atoms, properties) for m in members]

    def describe(self) -> dict:
        return {"backend": self.backend, "name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class BatchedMember(Member):
    """A member whose class evaluates many members on many structures at once.

    Subclasses implement ``predict_batch(members, structures, properties)``
    returning ``out[structure][member]`` prediction dicts (one graph per
    structure shared by all members); single-structure calls route through it.
    """

    #: what besides the cutoff must agree for members to share one graph (for messages)
    group_fields = "dtype or device"

    @classmethod
    def predict_batch(cls, members, structures, properties) -> list:
        raise NotImplementedError

    @classmethod
    def _check_group(cls, members) -> None:
        """Members in one batched call must share a group key; name a cutoff mismatch."""
        if len({m.group_key() for m in members}) <= 1:
            return
        names = [m.name for m in members]
        cut = sorted({m.cutoff for m in members})
        if len(cut) > 1:
            raise CutoffMismatchError(
                f"{cls.backend} members {names} have different cutoffs {cut} Å; one shared graph "
                "needs one cutoff. Evaluate them in separate groups (the committee does this "
                "automatically) or retrain with one cutoff."
            )
        raise ConfigError(f"{cls.backend} members {names} differ in {cls.group_fields} and "
                          "cannot share one graph")

    @classmethod
    def predict_group(cls, members, atoms, properties=("energy", "forces")) -> list:
        """All members on one structure: one graph, M forward passes."""
        return cls.predict_batch(members, [atoms], properties)[0]

    def predict(self, atoms, properties=("energy", "forces")):
        return self.predict_batch([self], [atoms], properties)[0][0]


def as_prediction(results: dict, natoms: int, keys: Iterable[str] = MEMBER_PROPERTIES) -> dict:
    """Copy the known keys of a raw result dict into float64 numpy values."""
    out = {}
    for k in keys:
        if k not in results or results[k] is None:
            continue
        v = np.array(results[k], dtype=float, copy=True)
        if k == "energy":
            v = float(np.reshape(v, -1)[0]) if v.size else float("nan")
        elif k == "forces":
            v = v.reshape(natoms, 3)
        elif k == "stress":
            if v.shape == (3, 3):
                v = v[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            v = v.reshape(6)
        elif k == "energies":
            v = v.reshape(natoms)
        out[k] = v
    return out
