"""Committee YAML specs: ``load_committee(path)`` and atomic spec updates.

```yaml
members:
  - {backend: mace, path: models/mace_*.model}        # a glob: several members
  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {}}
calibration: {energy: 1.0, forces: 1.0}                # optional α factors, or maps:
#   forces: {method: conformal, coverage: 0.95, quantile: 3.9}   (calibration_maps)
energy_offsets: [{member: m0, eV_per_atom: {Si: 0.0}}, ...]     # optional, calibration_offsets
molecules: auto                                        # optional: int or auto
baseline: {calculator: ase.calculators.lj.LennardJones, parameters: {}}  # Δ-learning
```
Relative paths are resolved against the YAML file's folder.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .committee import CommitteeCalculator
from .delta import build_delta
from .errors import ConfigError, ModelFileError
from .fileio import atomic_write_text
from .members import build_members

KNOWN_KEYS = {"members", "calibration", "molecules", "stress", "baseline", "delta", "name", "training",
              "energy_offsets"}


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"spec file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def write_yaml_atomic(path, data: dict) -> None:
    """Write YAML via a temporary file + rename: never a half-written spec."""
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def build_committee(spec: dict, base_dir=None, **overrides):
    """Build a CommitteeCalculator (or a Δ-learning calculator) from a spec dict."""
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"unknown committee keys {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    entries = spec.get("members")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("the committee spec needs a non-empty 'members' list")
    members = []
    for entry in entries:
        members.extend(build_members(entry, base_dir))
    kwargs = {k: spec[k] for k in ("calibration", "molecules", "stress", "energy_offsets")
              if spec.get(k) is not None}
    kwargs.update(overrides)
    committee = CommitteeCalculator(members, **kwargs)
    baseline = spec.get("baseline")
    if baseline:
        return build_delta(committee, baseline, spec.get("delta") or {}, base_dir)
    return committee


def load_committee(path, **overrides):
    """Load a committee from a YAML spec file (see module docstring)."""
    path = Path(path)
    spec = read_yaml(path)
    return build_committee(spec, base_dir=path.parent, **overrides)
