"""SchNetPack member: one trained schnetpack 2.x model file (``best_model``, a pickled
``NeuralNetworkPotential``).

YAML entry::

    - {backend: schnetpack, path: models/spk_*/best_model}
      # optional: cutoff: 5.0 (Å; read from the model when absent),
      #           energy_key: energy, forces_key: forces, stress_key: stress,
      #           energy_unit: eV, position_unit: Ang, dtype: float64, device: cpu

Shared work: members with equal :meth:`SchNetPackMember.group_key` (cutoff,
dtype, device) share one converted input batch (matscipy neighbour list) per
structure; :meth:`SchNetPackMember.predict_batch` converts many structures into
one batch.  Stress is computed when the model has a ``Forces`` module (stress
activated at load, as SchNetPack's own ASE calculator does).

Units: model outputs are converted from ``energy_unit``/``position_unit`` to
eV, eV/Å, eV/Å³.  Security: model files are pickles; only load trusted files.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..structures import is_bulk
from ._torch_common import (
    check_device,
    check_dtype,
    import_framework,
    keeps_torch_globals,
    torch_dtype,
    torch_load,
    voigt,
)
from .base import BatchedMember


def _spk():
    spk = import_framework("schnetpack", "schnetpack", "schnetpack-deps")
    import torch

    return torch, spk


def model_cutoff(model) -> float | None:
    """Largest ``cutoff`` found on the model's modules (representation, cutoff fn)."""
    found = []
    for mod in model.modules():
        c = getattr(mod, "cutoff", None)
        if c is None:
            continue
        try:
            found.append(float(c))
        except (TypeError, ValueError):
            continue
    return max(found) if found else None


class SchNetPackMember(BatchedMember):
    """One SchNetPack 2.x model."""

    backend = "schnetpack"

    @keeps_torch_globals
    def __init__(self, model, name=None, path=None, cutoff=None, energy_key="energy",
                 forces_key="forces", stress_key="stress", energy_unit="eV",
                 position_unit="Ang", dtype="float64", device="cpu", species=None):
        super().__init__(name or (f"schnetpack:{path}" if path else "schnetpack"))
        torch, spk = _spk()
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "output_modules"):
            raise ModelFileError(f"{path or model!r} is not a schnetpack model "
                                 "(NeuralNetworkPotential); give a trained 'best_model' file")
        self.path = path
        self.device = check_device(device)
        self.dtype = check_dtype(dtype) or "float64"
        self.cutoff = float(cutoff) if cutoff is not None else model_cutoff(model)
        if self.cutoff is None:
            raise ConfigError(f"cannot read the cutoff of schnetpack model {path!r}; set 'cutoff:'")
        if self.cutoff <= 0:
            raise ConfigError(f"cutoff must be > 0 Å, got {self.cutoff}")
        from schnetpack.md.utils import activate_model_stress

        self.keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
        has_stress = False
        if stress_key:
            try:
                model = activate_model_stress(model, stress_key)
                has_stress = True
            except Exception:
                has_stress = False
        self.model = model.to(torch_dtype(self.dtype)).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad = False
        self.conv = {"energy": spk.units.convert_units(energy_unit, "eV")}
        length = spk.units.convert_units(position_unit, "Ang")
        self.conv["forces"] = self.conv["energy"] / length
        self.conv["stress"] = self.conv["energy"] / length ** 3
        self.species = frozenset(species) if species else None
        self.implemented_properties = ("energy", "forces") + (("stress",) if has_stress else ())
        self._converter = None

    @classmethod
    def from_file(cls, path, **kwargs) -> SchNetPackMember:
        _spk()
        model = torch_load(path, "schnetpack", device=kwargs.get("device", "cpu"))
        return cls(model, path=str(path), **kwargs)

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> SchNetPackMember:
        opts = {"cutoff", "energy_key", "forces_key", "stress_key", "energy_unit",
                "position_unit", "dtype", "device", "species", "name"}
        unknown = set(spec) - opts - {"backend", "path"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a schnetpack member; "
                              f"known: {sorted(opts | {'backend', 'path'})}")
        if "path" not in spec:
            raise ConfigError("a schnetpack member needs 'path: <model file>'")
        return cls.from_file(spec["path"], **{k: v for k, v in spec.items() if k in opts})

    def group_key(self):
        return ("schnetpack", round(self.cutoff, 10), self.dtype, self.device)

    def describe(self):
        return {"backend": "schnetpack", "name": self.name, "path": self.path,
                "cutoff": self.cutoff}

    def converter(self):
        if self._converter is None:
            torch, spk = _spk()
            from schnetpack.interfaces import AtomsConverter
            from schnetpack.transform import MatScipyNeighborList

            self._converter = AtomsConverter(neighbor_list=MatScipyNeighborList(cutoff=self.cutoff),
                                             dtype=torch_dtype(self.dtype), device=self.device)
        return self._converter

    group_fields = "dtype or device"

    @classmethod
    @keeps_torch_globals
    def predict_batch(cls, members, structures, properties=("energy", "forces")) -> list:
        """``out[i][k]``: member k on structure i (energy eV, forces (N,3) eV/Å,
        stress (6,) eV/Å³ for 3-D periodic structures when the model has it)."""
        members, structures = list(members), list(structures)
        cls._check_group(members)
        for a in structures:
            for m in members:
                m.check_atoms(a)
        inputs = members[0].converter()([a.copy() for a in structures])
        ptr = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
        periodic = [is_bulk(a) for a in structures]
        out = [[None] * len(members) for _ in structures]
        for k, m in enumerate(members):
            res = m.model({key: v.clone() if key in ("_positions", "_cell") else v
                           for key, v in inputs.items()})
            e = res[m.keys["energy"]].detach().cpu().numpy().reshape(-1) * m.conv["energy"]
            f = res[m.keys["forces"]].detach().cpu().numpy() * m.conv["forces"]
            st = res.get(m.keys["stress"]) if ("stress" in properties and
                                              "stress" in m.implemented_properties) else None
            st = None if st is None else st.detach().cpu().numpy().reshape(-1, 3, 3) * m.conv["stress"]
            for i in range(len(structures)):
                lo, hi = ptr[i], ptr[i + 1]
                p = {"energy": float(e[i]), "forces": f[lo:hi].astype(float)}
                if st is not None and periodic[i]:
                    p["stress"] = voigt(st[i].astype(float))
                out[i][k] = p
        return out

