"""Forces on the displaced supercells of a phonopy object, through the gate.

:func:`compute_forces` evaluates every displaced supercell with one batched
``gate.evaluate_many`` call: the committee mean (and every member's forces) where the
committee is trusted; the reference forces — for the mean *and* every member — where the
gate fell back to it (that supercell then adds no spread, and the gate appended it to its
label store).  A committee-only ``Gate(committee)`` trusts the committee everywhere; a
``Gate(calculator)`` over a plain ASE calculator yields no members.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import keys as K
from ..gate import Gate, require_gate
from .supercell import to_ase_atoms


@dataclasses.dataclass(frozen=True)
class ForceSet:
    """Forces on the displaced supercells of one phonopy object.

    forces          (S, N, 3) eV/Å  best estimate (committee mean, or reference where gated)
    forces_members  (M, S, N, 3) eV/Å or None  per member (reference where gated)
    forces_std_max  (S,) eV/Å or None  committee max per-atom force spread (before fallback)
    decisions       (S,) str  the gate's decision: "committee" or "reference"
    label_indices   (S,) int or None  label-store index of each reference label
    """

    forces: np.ndarray
    forces_members: np.ndarray | None
    forces_std_max: np.ndarray | None
    decisions: tuple
    label_indices: tuple

    @property
    def n_reference(self) -> int:
        return sum(d == K.REFERENCE for d in self.decisions)


def used_members(res, key: str, used):
    """Per-member values of ``key`` of a GateResult: the committee's where it answered,
    ``used`` repeated once per member where the reference did; None without members."""
    members = (res.committee_results or {}).get(key)
    if members is None:
        return None
    if res.decision == K.REFERENCE:
        return np.repeat(np.asarray(used, dtype=float)[None], len(members), axis=0)
    return np.asarray(members, dtype=float)


def compute_forces(ph, gate: Gate, info=None, batch_size=None) -> ForceSet:
    """Forces on every displaced supercell of ``ph`` through ``gate`` (one batched call).

    ph: a Phonopy object with displacements; gate: the evaluator (:class:`Gate`);
    info: provenance merged into the gate's label provenance (plus ``step`` and
    ``displacement`` = the supercell index); batch_size: structures per committee batch.
    Returns a :class:`ForceSet`.  Raises ConfigError when ``gate`` is not a Gate, and
    whatever the gate raises (GateStop on a hard cap, NonFiniteOutputError).
    """
    require_gate(gate, "compute_forces")
    supercells = [to_ase_atoms(sc) for sc in ph.supercells_with_displacements]
    infos = [dict(info or {}, step=i, displacement=i) for i in range(len(supercells))]
    results = gate.evaluate_many(supercells, infos=infos, batch_size=batch_size)
    forces = [np.array(res.results[K.FORCES], dtype=float) for res in results]
    members = [used_members(res, K.FORCES_MEMBERS, f) for res, f in zip(results, forces)]
    fm = np.stack(members, axis=1) if members and all(m is not None for m in members) else None
    std = np.array([(res.committee_results or {}).get(K.FORCES_STD_MAX, np.nan)
                    for res in results], dtype=float)
    return ForceSet(forces=np.array(forces), forces_members=fm,
                    forces_std_max=None if np.all(np.isnan(std)) else std,
                    decisions=tuple(res.decision for res in results),
                    label_indices=tuple(res.label_index for res in results))
