"""Start structures of threshold-MC chains: the lowest-energy structure of a landscape,
then farthest point sampling in descriptor space (so chains start in distinct regions of
the landscape; see :func:`committee_calc.analysis.select.farthest_point_sampling`)."""
from __future__ import annotations

import numpy as np

from .. import keys as K
from ..analysis.select import farthest_point_sampling
from ..descriptors import standardise, structure_descriptors
from ..errors import ConfigError


def gate_energies(structures, gate) -> np.ndarray:
    """(n,) energies [eV] of ``structures`` through ``gate.evaluate_many`` (one batched
    committee call); a structure whose committee output is non-finite (and that the gate
    has no reference for) gets NaN instead of ending the whole evaluation."""
    return np.array([np.nan if r is None else r.energy
                     for r in gate.evaluate_many(structures, nonfinite="none")])


def select_starts(structures, n: int, energies=None, gate=None, descriptors=None) -> list:
    """Indices of ``n`` start structures: farthest point sampling in descriptor space,
    starting from the lowest-energy structure.

    energies: (n_structures,) [eV]; default ``info["energy"]`` of every structure,
        else :func:`gate_energies` through ``gate`` (a committee-only ``Gate(committee)``
        ranks by the committee alone; a gate with a reference labels untrusted ones).
    descriptors: (n_structures, d); default
        :func:`committee_calc.descriptors.structure_descriptors` (the gate's committee
        features when its members expose them, else SOAP / pair fingerprint), standardised.
    Returns ``min(n, n_structures)`` distinct indices, the lowest-energy one first.
    Raises ConfigError (no structures, n < 1, no energies, shape mismatch, all NaN).
    """
    structures = list(structures)
    if not structures:
        raise ConfigError("no structures to choose start structures from")
    if int(n) < 1:
        raise ConfigError(f"the number of start structures must be >= 1, got {n}")
    n = min(int(n), len(structures))
    if energies is None:
        if all(K.ENERGY in a.info for a in structures):
            energies = [a.info[K.ENERGY] for a in structures]
        elif gate is not None:
            energies = gate_energies(structures, gate)
        else:
            raise ConfigError("start-structure selection needs energies: info['energy'] on "
                              "every structure, or a gate to evaluate them")
    energies = np.asarray(energies, dtype=float)
    if energies.shape != (len(structures),):
        raise ConfigError(f"got {energies.shape} energies for {len(structures)} structures")
    if not np.isfinite(energies).any():
        raise ConfigError("no structure has a finite energy to start from")
    start = int(np.nanargmin(energies))
    if n == 1:
        return [start]
    if descriptors is None:
        committee = gate.committee if gate is not None else None
        descriptors = standardise(structure_descriptors(structures, committee=committee))
    X = np.asarray(descriptors, dtype=float)
    return [int(i) for i in farthest_point_sampling(X, n, start=start)]


__all__ = ["select_starts", "gate_energies"]
