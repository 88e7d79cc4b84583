"""Geometry guards: end a relaxation that blew up as ``exploded``, before the reference sees it.

::

    guard = Guards(min_distance=0.5, volume_factor=5.0, max_force_eVA=100.0)
    guard.geometry(atoms, volume0)     # None, or a sentence saying what blew up
    guard.forces(committee_forces)     # None, or a sentence

Checks (each off with None)
    ``min_distance``: two atoms i, j closer than ``min_distance × (r_i + r_j)``, with r the
    covalent radii of :data:`ase.data.covalent_radii` (Cordero et al. 2008) [Å]; 0.5 is far
    below any bond (H₂: 1.19, C≡O: 0.8 of the radii sum).  ``volume_factor``: a 3-D periodic
    cell whose volume left ``[V₀/f, V₀·f]``, V₀ the candidate's input volume.
    ``max_force_eVA``: the committee's largest mean atomic force above this [eV/Å].

The geometric checks run before a new geometry is evaluated (the committee is not called for
it); the force check runs on the committee's answer before the gate decides, so a blown-up
candidate never reaches the reference or the label store.  Distances use matscipy's neighbour
list when it is installed (microseconds for a 64-atom cell), else ASE's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .criteria import max_force


def _limit(name, value, low):
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v) or v <= low:
        raise ConfigError(f"guard {name} (--guard-{name.replace('_', '-')}) must be a number > {low:g}, "
                          f"got {value!r}; 0 on the command line (None in Python) turns it off")
    return v


@dataclass(frozen=True)
class Guards:
    """Limits of the module docstring; ``Guards(None, None, None)`` checks nothing."""

    min_distance: float | None = 0.5
    volume_factor: float | None = 5.0
    max_force_eVA: float | None = 100.0

    def __post_init__(self):
        object.__setattr__(self, "min_distance", _limit("min_distance", self.min_distance, 0))
        object.__setattr__(self, "volume_factor", _limit("volume_factor", self.volume_factor, 1))
        object.__setattr__(self, "max_force_eVA", _limit("max_force_eVA", self.max_force_eVA, 0))

    def settings(self) -> dict:
        """JSON-able limits (written to ``pool.json``)."""
        return {"guard_min_distance": self.min_distance, "guard_volume_factor": self.volume_factor,
                "guard_max_force_eVA": self.max_force_eVA}

    def geometry(self, atoms, volume0=None) -> str | None:
        """Why ``atoms`` blew up (closest pair, volume), or None.  ``volume0`` [Å³]: the start."""
        if self.min_distance is not None and len(atoms) > 1:
            hit = closest_pair(atoms, self.min_distance)
            if hit is not None:
                i, j, d, lim = hit
                return (f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are "
                        f"{d:.3g} Å apart, closer than the guard {lim:.3g} Å "
                        f"({self.min_distance:g} x the sum of their covalent radii)")
        if self.volume_factor is not None and volume0 and atoms.cell.rank == 3:
            ratio = atoms.get_volume() / volume0
            if not self.volume_factor ** -1 <= ratio <= self.volume_factor:
                return (f"the cell volume changed by a factor {ratio:.3g} from its start "
                        f"({volume0:.4g} Å³), beyond the guard {self.volume_factor:g}")
        return None

    def forces(self, forces) -> str | None:
        """Why the committee's forces (N, 3) [eV/Å] blew up, or None (non-finite: the gate's)."""
        if self.max_force_eVA is None or forces is None:
            return None
        f = max_force(forces)
        if math.isfinite(f) and f > self.max_force_eVA:
            return (f"the committee's largest force {f:.4g} eV/Å exceeds the guard "
                    f"{self.max_force_eVA:g} eV/Å")
        return None


#: the default limits (a frozen instance, shared)
DEFAULT_GUARDS = Guards()
#: (field, what it checks) of each limit, e.g. for command-line options ``--guard-<field>``
FIELDS = (("min_distance", "exploded when two atoms are closer than this factor (dimensionless) x the "
           "sum of their covalent radii"),
          ("volume_factor", "exploded when the cell volume changes by more than this factor"),
          ("max_force_eVA", "exploded when a committee force exceeds this, eV/Å"))


def closest_pair(atoms, factor) -> tuple | None:
    """``(i, j, d, limit)`` of the pair most below ``factor × (r_i + r_j)`` [Å], or None."""
    from ase.data import covalent_radii

    r = covalent_radii[atoms.numbers]
    cutoff = factor * 2 * float(r.max())
    if atoms.cell.rank == 3:
        try:
            from matscipy.neighbours import neighbour_list as nl
        except ImportError:  # pragma: no cover - matscipy comes with mace
            from ase.neighborlist import neighbor_list as nl
        i, j, d = nl("ijd", atoms, cutoff)
    elif not atoms.pbc.any():
        diff = atoms.positions[:, None, :] - atoms.positions[None, :, :]
        dist = np.sqrt((diff ** 2).sum(axis=2))
        i, j = np.triu_indices(len(atoms), 1)
        d = dist[i, j]
    else:
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, cutoff)
    if not len(d):
        return None
    lim = factor * (r[i] + r[j])
    k = int(np.argmin(d / lim))
    return (int(i[k]), int(j[k]), float(d[k]), float(lim[k])) if d[k] < lim[k] else None


__all__ = ["DEFAULT_GUARDS", "FIELDS", "Guards", "closest_pair"]
