"""NequIP member: one deployed (TorchScript) nequip 0.6.x model (``nequip-deploy build``).

YAML entry::

    - {backend: nequip, path: models/nequip_*.pth}
      # optional: species_to_type_name: {Si: Si}, device: cpu

Shared work: members with equal :meth:`NequIPMember.group_key` (same
``r_max``, type names and dtype) share one ``AtomicData`` graph (neighbour
list, shifts, type indices) per structure in :meth:`NequIPMember.predict_group`;
:meth:`NequIPMember.predict_batch` batches many structures into one graph.

Units: models trained on eV/Å data return eV, eV/Å and (with
``StressForceOutput``) eV/Å³ stress; Voigt, ASE sign, as nequip's own ASE
calculator reports it.  Models deployed without stress output give no stress.

Security: a deployed model is TorchScript plus pickled metadata; only load
files you trust.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..structures import is_bulk
from ._torch_common import check_device, check_model_file, import_framework, keeps_torch_globals, torch_env, voigt
from .base import BatchedMember


def _nequip():
    import_framework("nequip", "nequip", "nequip")
    with torch_env():
        import torch
        from nequip.data import AtomicData, AtomicDataDict
        from nequip.data.transforms import TypeMapper
        from nequip.scripts import deploy

    return torch, AtomicData, AtomicDataDict, TypeMapper, deploy


def _has_stress_output(config_yaml: str) -> bool:
    """True when the deployed model's builders include a stress output."""
    import yaml

    class _Lenient(yaml.SafeLoader):
        """Safe loading; python-object tags (dtypes, classes) become None."""

    _Lenient.add_multi_constructor("tag:yaml.org,2002:python/", lambda *a: None)
    _Lenient.add_multi_constructor("!", lambda *a: None)
    try:
        cfg = yaml.load(config_yaml, Loader=_Lenient) or {}
    except yaml.YAMLError:
        cfg = {}
    builders = cfg.get("model_builders") or []
    return any("Stress" in str(b) for b in builders)


class NequIPMember(BatchedMember):
    """One deployed NequIP model."""

    backend = "nequip"

    @keeps_torch_globals
    def __init__(self, path, name=None, device="cpu", species_to_type_name=None):
        super().__init__(name or f"nequip:{path}")
        torch, _, _, TypeMapper, deploy = _nequip()
        self.path = check_model_file(path, "nequip")
        self.device = check_device(device)
        try:
            # set_global_options=False: never change torch's process-wide defaults
            model, meta = deploy.load_deployed_model(self.path, device=self.device,
                                                     set_global_options=False)
        except Exception as exc:
            raise ModelFileError(
                f"cannot load deployed nequip model {self.path!r}: {exc}. Give a file made by "
                "`nequip-deploy build` with nequip 0.6.x (the installed version); the file may "
                "be corrupt or from another nequip version."
            ) from exc
        self.model = model
        self.meta = meta
        self.cutoff = float(meta[deploy.R_MAX_KEY])
        self.type_names = tuple(meta[deploy.TYPE_NAMES_KEY].split(" "))
        self.dtype = meta.get(deploy.MODEL_DTYPE_KEY) or "float32"
        from ase.data import chemical_symbols

        if species_to_type_name is None:
            unknown = [t for t in self.type_names if t not in chemical_symbols]
            if unknown:
                raise ConfigError(
                    f"nequip model {self.path!r} has type names {list(self.type_names)} that are "
                    "not chemical symbols; give species_to_type_name: {Si: <type name>, ...}"
                )
            species_to_type_name = {t: t for t in self.type_names}
        bad = [t for t in species_to_type_name.values() if t not in self.type_names]
        if bad:
            raise ConfigError(f"type names {bad} are not in the model's {list(self.type_names)}")
        self.species_to_type_name = dict(species_to_type_name)
        self.species = frozenset(species_to_type_name)
        index = {t: i for i, t in enumerate(self.type_names)}
        self.type_mapper = TypeMapper(chemical_symbol_to_type={
            s: index[t] for s, t in species_to_type_name.items()})
        self.has_stress = _has_stress_output(meta.get(deploy.CONFIG_KEY, ""))
        self.implemented_properties = ("energy", "forces", "energies") + \
            (("stress",) if self.has_stress else ())

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> NequIPMember:
        known = {"backend", "path", "name", "device", "species_to_type_name"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a nequip member; known: {sorted(known)}")
        if "path" not in spec:
            raise ConfigError("a nequip member needs 'path: <deployed model .pth>'")
        return cls(spec["path"], name=spec.get("name"), device=spec.get("device", "cpu"),
                   species_to_type_name=spec.get("species_to_type_name"))

    def group_key(self):
        return ("nequip", round(self.cutoff, 10), self.type_names,
                tuple(sorted(self.species_to_type_name.items())), self.dtype, self.device)

    def describe(self):
        return {"backend": "nequip", "name": self.name, "path": self.path, "r_max": self.cutoff,
                "type_names": list(self.type_names)}

    def build_graph(self, structures):
        """One batched nequip AtomicDataDict for ``structures``."""
        torch, AtomicData, AtomicDataDict, _, _ = _nequip()
        from nequip.utils.torch_geometric import Batch

        datas = []
        for a in structures:
            d = AtomicData.from_ase(atoms=a, r_max=self.cutoff)
            for k in AtomicDataDict.ALL_ENERGY_KEYS:
                if k in d:
                    del d[k]
            datas.append(self.type_mapper(d))
        batch = Batch.from_data_list(datas).to(self.device)
        return AtomicData.to_AtomicDataDict(batch)

    group_fields = "type names, dtype or device"

    @classmethod
    @keeps_torch_globals
    def predict_batch(cls, members, structures, properties=("energy", "forces")) -> list:
        """``out[i][k]``: member k on structure i (energy eV, forces (N,3) eV/Å,
        energies (N,) eV, stress (6,) eV/Å³ for 3-D periodic structures)."""
        torch, _, AtomicDataDict, _, _ = _nequip()
        members, structures = list(members), list(structures)
        cls._check_group(members)
        for a in structures:
            for m in members:
                m.check_atoms(a)
        graph = members[0].build_graph(structures)
        ptr = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
        periodic = [is_bulk(a) for a in structures]
        out = [[None] * len(members) for _ in structures]
        for k, m in enumerate(members):
            res = m.model(dict(graph))
            e = res[AtomicDataDict.TOTAL_ENERGY_KEY].detach().cpu().numpy().reshape(-1)
            f = res[AtomicDataDict.FORCE_KEY].detach().cpu().numpy()
            ea = res.get(AtomicDataDict.PER_ATOM_ENERGY_KEY)
            ea = None if ea is None else ea.detach().cpu().numpy().reshape(-1)
            st = res.get(AtomicDataDict.STRESS_KEY) if "stress" in properties else None
            st = None if st is None else st.detach().cpu().numpy().reshape(-1, 3, 3)
            for i in range(len(structures)):
                lo, hi = ptr[i], ptr[i + 1]
                p = {"energy": float(e[i]), "forces": f[lo:hi].astype(float)}
                if ea is not None and "energies" in properties:
                    p["energies"] = ea[lo:hi].astype(float)
                if st is not None and periodic[i]:
                    p["stress"] = voigt(st[i].astype(float))
                out[i][k] = p
        return out

