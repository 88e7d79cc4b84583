"""Settings of the harmonic step: :class:`PhononSettings` (every phonopy option, validated
at construction) and :class:`PhononWarning`.

Units: Å (``distance_A``), K (temperatures), THz (``imaginary_tol_THz``).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..units import check_positive


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
