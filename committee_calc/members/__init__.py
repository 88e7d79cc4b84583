"""Member adapters, one per framework, imported lazily.

``build_members(spec, base_dir)`` turns one YAML member entry into one or more
:class:`~committee_calc.members.base.Member` objects (a ``path`` glob expands
to several members, sorted by file name).
"""
from __future__ import annotations

import glob
import importlib
import os

from ..errors import ConfigError, ModelFileError
from .base import Member  # noqa: F401

#: backend name -> "module:Class"; the framework is only imported when used
BACKENDS = {
    "ase": "committee_calc.members.ase_member:ASEMember",
    "mace": "committee_calc.members.mace:MACEMember",
    "mace_llpr": "committee_calc.members.mace_llpr:LLPRMember",
    "nequip": "committee_calc.members.nequip:NequIPMember",
    "schnetpack": "committee_calc.members.schnetpack:SchNetPackMember",
    "lammps": "committee_calc.members.lammps:LAMMPSMember",
    "n2p2": "committee_calc.members.n2p2:N2P2Member",
    "chgnet": "committee_calc.members.chgnet:CHGNetMember",
}


def backend_class(name: str):
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown member backend {name!r}; choose one of {sorted(BACKENDS)}"
        ) from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def expand_paths(path: str, base_dir=None) -> list:
    """Resolve ``path`` against ``base_dir`` and expand a glob (sorted)."""
    p = os.path.expanduser(str(path))
    if base_dir is not None and not os.path.isabs(p):
        p = os.path.join(str(base_dir), p)
    if glob.has_magic(p):
        hits = sorted(glob.glob(p))
        if not hits:
            raise ModelFileError(f"no model file matches {p!r}; check the path glob")
        return hits
    if not os.path.exists(p):
        raise ModelFileError(f"model file {p!r} does not exist; check 'path' in the committee YAML")
    return [p]


def build_members(spec: dict, base_dir=None) -> list:
    """Build the member(s) described by one committee-YAML entry."""
    if not isinstance(spec, dict) or "backend" not in spec:
        raise ConfigError(f"each member needs a 'backend' key, got {spec!r}")
    cls = backend_class(spec["backend"])
    if "path" in spec:
        paths = expand_paths(spec["path"], base_dir)
        out = []
        for i, p in enumerate(paths):
            s = dict(spec, path=p)
            if len(paths) > 1 and spec.get("name"):
                s["name"] = f"{spec['name']}_{i}"
            out.extend(_as_list(cls.from_spec(s, base_dir)))
        return out
    return _as_list(cls.from_spec(spec, base_dir))


def _as_list(built) -> list:
    """A backend's ``from_spec`` may return one member or several (e.g. LLPR pseudo-members)."""
    return list(built) if isinstance(built, (list, tuple)) else [built]
