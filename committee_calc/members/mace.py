"""MACE member: one mace-torch model file (``.model``, a pickled ``torch.nn.Module``).

YAML entry::

    - {backend: mace, path: models/mace_*.model}      # glob: one member per file
      # optional: dtype: float64 | float32, device: cpu | cuda, head: Default,
      #           jit: true (TorchScript the model at load; false = eager),
      #           skin: 0.0 (Å; > 0 reuses the graph across MD/relaxation steps)

Shared work: members with equal :meth:`MACEMember.group_key` (same ``r_max``,
element table, dtype, device and head) are evaluated by
:meth:`MACEMember.predict_group`, which builds the MACE graph (neighbour list,
one-hot node attributes, shifts) **once per structure** and runs every model
on it.  :meth:`MACEMember.predict_batch` does the same for many structures in
one batched graph per model.

Units: mace-torch models trained on eV/Å data return eV, eV/Å and eV/Å³; no
conversion is applied.  Stress is returned in Voigt order, ASE sign.

Security: a ``.model`` file is a pickle; loading it can run code.  Only load
model files you trust.
"""
from __future__ import annotations

import contextlib
import io
import sys

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..structures import is_bulk
from ._torch_common import (
    check_device,
    check_dtype,
    dtype_name,
    import_framework,
    keeps_torch_globals,
    torch_dtype,
    torch_env,
    torch_load,
    torch_scope,
    voigt,
)
from .base import BatchedMember

#: atoms.info keys MACE's own calculator reads (kept identical for equal graphs)
_INFO_KEYS = {"total_spin": "spin", "total_charge": "charge", "external_field": "external_field"}
_ARRAYS_KEYS = {"Qs": "charges"}


def _model_input(atoms):
    """What the model reads of ``atoms``: numbers, positions, cell, pbc and the
    :data:`_INFO_KEYS`/:data:`_ARRAYS_KEYS` entries.  Training-only keys (``config_weight``,
    ``config_type``, …) of a structure read from a training file are dropped: MACE's
    ``config_from_atoms`` fails on a non-numeric weight, which never matters for a prediction."""
    from ase import Atoms

    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    clean.info.update({k: atoms.info[k] for k in _INFO_KEYS if k in atoms.info})
    for k in _ARRAYS_KEYS:
        if k in atoms.arrays:
            clean.arrays[k] = atoms.arrays[k]
    return clean


_MODULES = None


def _mace():
    """(torch, mace.data, mace.tools.torch_geometric, torch_tools, utils), imported once: the
    import runs in :func:`torch_env`; later calls return the cached modules (each scoped
    environment copies ``os.environ``, ~0.5 ms, which showed in every prediction's profile)."""
    global _MODULES
    if _MODULES is None:
        import_framework("mace", "mace-torch", "mace")
        printed = io.StringIO()  # mace prints a notice about optional cuequivariance on stdout
        with torch_env(), contextlib.redirect_stdout(printed):
            import torch
            from mace import data as mace_data
            from mace.tools import torch_geometric, torch_tools, utils
        rest = [ln for ln in printed.getvalue().splitlines() if ln.strip() and "cuequivariance" not in ln]
        if rest:  # anything else it printed goes to stderr: stdout stays the drivers' own
            print("\n".join(rest), file=sys.stderr)

        _MODULES = (torch, mace_data, torch_geometric, torch_tools, utils)
    return _MODULES


class Collated(dict):
    """A collated MACE batch: {key: tensor}; ``to_dict()`` as torch_geometric's ``Batch``."""

    def to_dict(self) -> dict:
        return dict(self)


def _index_key(key: str) -> bool:
    """Keys torch_geometric offsets by the node count and concatenates along the last axis."""
    return "index" in key or "face" in key


def collate(graphs, torch) -> dict:
    """``Batch.from_data_list(graphs).to_dict()`` of mace's torch_geometric, without its
    per-key ``Data.keys`` scans (measured: 11 ms of a 13 ms single-Si8 collate on CPU).

    The same rule, value for value: every non-None attribute of the first graph; ``*index*``/
    ``*face*`` tensors offset by the preceding node counts and joined along the last axis,
    other tensors along the first (0-d tensors stacked), numbers into a tensor; plus ``batch``
    (graph of each node) and ``ptr`` (node offsets, (n_graphs + 1,)).  A test compares it with
    ``Batch.from_data_list`` key by key."""
    first = vars(graphs[0])
    keys = [k for k, v in first.items() if v is not None and not (k[:2] == "__" or k[-2:] == "__")]
    counts = [int(g.num_nodes) for g in graphs]
    out = {}
    for key in keys:
        items = [vars(g)[key] for g in graphs]
        item = items[0]
        if isinstance(item, torch.Tensor):
            if _index_key(key) and item.dtype != torch.bool:
                off, shifted = 0, []
                for n, t in zip(counts, items):
                    shifted.append(t + off if off else t)
                    off += n
                items = shifted
            if item.dim() == 0:
                out[key] = torch.stack(items)
            else:
                out[key] = torch.cat(items, -1 if _index_key(key) else 0)
        elif isinstance(item, (int, float)):
            if _index_key(key):
                items = [v + sum(counts[:i]) for i, v in enumerate(items)]
            out[key] = torch.tensor(items)
    out["batch"] = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(counts)])
    out["ptr"] = torch.tensor([0] + list(np.cumsum(counts)), dtype=torch.long)
    return {k: out[k] for k in sorted(out)}


class MACEMember(BatchedMember):
    """One MACE model.

    Parameters
    ----------
    model: a loaded MACE ``torch.nn.Module`` (or use :meth:`from_file`).
    dtype: ``"float64"``/``"float32"`` to convert the model, None keeps its dtype.
    head: model head for multi-head models (default: the only head or "Default").
    """

    backend = "mace"
    implemented_properties = ("energy", "forces", "stress", "energies")

    @keeps_torch_globals
    def __init__(self, model, name=None, path=None, device="cpu", dtype=None, head=None,
                 jit=True, skin=0.0):
        super().__init__(name or (f"mace:{path}" if path else "mace"))
        torch, _, _, _, utils = _mace()
        for attr in ("r_max", "atomic_numbers"):
            if not hasattr(model, attr):
                raise ModelFileError(
                    f"{path or model!r} is not a MACE model (no {attr!r}); give a mace-torch "
                    "'.model' file"
                )
        self.path = path
        self.device = check_device(device)
        dtype = check_dtype(dtype)
        model_dtype = dtype_name(next(model.parameters()).dtype)
        if dtype is not None and dtype != model_dtype:
            model = model.to(torch_dtype(dtype))
        self.dtype = dtype or model_dtype
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad = False
        self.model = model
        self.cutoff = float(model.r_max.cpu()) if hasattr(model.r_max, "cpu") else float(model.r_max)
        self.z = tuple(int(z) for z in model.atomic_numbers)
        self.z_table = utils.AtomicNumberTable(list(self.z))
        from ase.data import chemical_symbols

        self.species = frozenset(chemical_symbols[z] for z in self.z)
        self.heads = list(getattr(model, "heads", None) or ["Default"])
        if head is None:
            defaults = [h for h in self.heads if h.lower() == "default"]
            if len(self.heads) == 1:
                head = self.heads[0]
            elif defaults:
                head = defaults[0]
            else:
                raise ConfigError(f"MACE model {path!r} has heads {self.heads}; choose one with 'head:'")
        if head not in self.heads:
            raise ConfigError(f"head {head!r} not in the model's heads {self.heads}")
        self.head = head
        self.skin = float(skin)
        if not self.skin >= 0:
            raise ConfigError(f"skin must be >= 0 Å, got {skin!r}")
        self._graph_cache = None
        self.graph_builds = 0
        self.graph_reuses = 0
        self.jit = False
        if jit:
            # TorchScript (as mace's own *_compiled.model), frozen: same numbers, ~30 %
            # less per-call overhead on CPU; eager fallback if a model cannot be scripted
            try:
                from e3nn.util import jit as e3nn_jit

                scripted = e3nn_jit.compile(model)
                try:  # constant-fold parameters: another ~10 % on small models
                    scripted = torch.jit.freeze(scripted.eval())
                except Exception:  # pragma: no cover - model dependent
                    pass
                self.model = scripted
                self.jit = True
            except Exception as exc:  # pragma: no cover - model dependent
                import warnings

                warnings.warn(f"MACE model {path!r} could not be scripted ({exc}); running eagerly", stacklevel=2)

    @classmethod
    def from_file(cls, path, **kwargs) -> MACEMember:
        _mace()
        model = torch_load(path, "mace", device=kwargs.get("device", "cpu"))
        return cls(model, path=str(path), **kwargs)

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> MACEMember:
        known = {"backend", "path", "name", "device", "dtype", "head", "jit", "skin"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a mace member; known: {sorted(known)}")
        if "path" not in spec:
            raise ConfigError("a mace member needs 'path: <file.model>'")
        return cls.from_file(spec["path"], name=spec.get("name"), device=spec.get("device", "cpu"),
                             dtype=spec.get("dtype"), head=spec.get("head"),
                             jit=bool(spec.get("jit", True)), skin=spec.get("skin", 0.0))

    # ------------------------------------------------------------------
    def group_key(self):
        return ("mace", round(self.cutoff, 10), self.z, self.dtype, self.device, self.head,
                tuple(self.heads), self.skin)

    def describe(self):
        return {"backend": "mace", "name": self.name, "path": self.path, "r_max": self.cutoff,
                "dtype": self.dtype, "species": sorted(self.species), "jit": self.jit}

    def build_graphs(self, structures, cutoff=None) -> list:
        """One mace ``AtomicData`` per structure (edges within ``cutoff``, default r_max)."""
        torch, mace_data, _, _, _ = _mace()
        keyspec = mace_data.KeySpecification(info_keys=dict(_INFO_KEYS),
                                             arrays_keys=dict(_ARRAYS_KEYS))
        # the graph is built at the model's dtype; torch_scope restores the caller's default
        # dtype on every exit path (mace's own torch_tools.default_dtype does not on an error)
        with torch_scope(self.dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(_model_input(a), key_specification=keyspec,
                                                head_name=self.head),
                    z_table=self.z_table, cutoff=cutoff or self.cutoff, heads=self.heads)
                for a in structures
            ]
        return graphs

    def build_batch(self, structures, cutoff=None) -> Collated:
        """One MACE batch of ``structures`` (edges within ``cutoff``, default r_max) on the
        member's device: a :class:`Collated` dict equal, key by key, to mace's
        ``torch_geometric.Batch.from_data_list(...).to_dict()`` (``to_dict()``, ``["ptr"]``)."""
        torch = _mace()[0]
        bdict = collate(self.build_graphs(structures, cutoff), torch)
        if self.device != "cpu":
            bdict = {k: v.to(self.device) for k, v in bdict.items()}
        return Collated(bdict)

    def single_graph(self, atoms):
        """Graph dict and ptr for one structure, reused between calls (skin > 0).

        The graph holds every pair within r_max + skin; it is reused while the
        atomic numbers, pbc and cell are unchanged and no atom moved more than
        skin/2 since it was built (so no pair can have entered r_max unseen).
        Pairs beyond r_max contribute exactly zero in MACE (the radial cutoff
        envelope is 0 there), so results equal a fresh graph's.  Off by default:
        measured on Si64 with 6 tiny members, skin 0.5 Å was slower (47 vs
        39 ms CPU per MD step: ~1.4x more edges in every forward pass) and
        0.1 Å within noise; it pays only when neighbour search dominates.
        """
        torch = _mace()[0]
        key = (atoms.numbers.tobytes(), tuple(bool(p) for p in atoms.pbc),
               np.asarray(atoms.cell).tobytes())
        c = self._graph_cache
        if c is not None and c[0] == key and \
                np.abs(atoms.positions - c[1]).max(initial=0.0) < 0.5 * self.skin:
            bdict = dict(c[2])
            bdict["positions"] = torch.tensor(atoms.positions, dtype=torch_dtype(self.dtype),
                                              device=self.device)
            self.graph_reuses += 1
            return bdict, c[3]
        batch = self.build_batch([atoms], cutoff=self.cutoff + self.skin)
        bdict, ptr = batch.to_dict(), batch["ptr"].cpu().numpy()
        self._graph_cache = (key, atoms.positions.copy(), bdict, ptr)
        self.graph_builds += 1
        return dict(bdict), ptr

    def run_model(self, batch_dict: dict, stress: bool, batched: bool = False) -> dict:
        """Forward pass on a prepared batch dict (a shallow copy is taken).

        ``batched`` (a graph of several structures): a TorchScript model runs without the
        graph executor's shape-specialising optimisations.  Batches of a batched relaxation
        change their node and edge counts every round, and the profiling executor re-specialises
        on them; measured on CPU (4 members, 32x0e, Si8 batches of 5-8): 16.4 vs 13.1 ms per
        structure without them.  Single structures keep them (23-27 vs 28 ms with them)."""
        torch = _mace()[0]
        with torch.jit.optimized_execution(not (batched and self.jit)):
            return self.model(dict(batch_dict), compute_stress=stress, training=False)

    group_fields = "element table, dtype, device or head"

    @classmethod
    @keeps_torch_globals
    def predict_batch(cls, members, structures, properties=("energy", "forces")) -> list:
        """Predictions of every member for every structure.

        Returns ``out[i][k]``: dict for member ``k`` and structure ``i`` with
        energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³] (3-D periodic
        structures only) and energies (N,) [eV].
        """
        members = list(members)
        structures = list(structures)
        cls._check_group(members)
        for a in structures:
            for m in members:
                m.check_atoms(a)
        lead = members[0]
        if lead.skin > 0 and len(structures) == 1:
            bdict, ptr = lead.single_graph(structures[0])
        else:
            batch = lead.build_batch(structures)
            bdict, ptr = batch.to_dict(), batch["ptr"].cpu().numpy()
        periodic = [is_bulk(a) for a in structures]
        want_stress = "stress" in properties and any(periodic)
        out = [[None] * len(members) for _ in structures]
        for k, m in enumerate(members):
            res = m.run_model(bdict, want_stress, batched=len(structures) > 1)
            energy = res["energy"].detach().cpu().numpy().reshape(-1)
            forces = res["forces"].detach().cpu().numpy()
            node_e = res.get("node_energy")
            node_e = None if node_e is None else node_e.detach().cpu().numpy()
            st = res.get("stress")
            st = None if (st is None or not want_stress) else st.detach().cpu().numpy()
            for i in range(len(structures)):
                lo, hi = ptr[i], ptr[i + 1]
                p = {"energy": float(energy[i]), "forces": forces[lo:hi].astype(float)}
                if "energies" in properties and node_e is not None:
                    p["energies"] = node_e[lo:hi].astype(float)
                if st is not None and periodic[i]:
                    p["stress"] = voigt(st[i].astype(float))
                out[i][k] = p
        return out

