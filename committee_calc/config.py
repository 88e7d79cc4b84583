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
trust: {forces_std_max: 0.12}                          # optional: calibrated thresholds (domain)
domain: {elements: [Si], volume_per_atom_A3: [17, 24], pressure_GPa: [-8, 14]}  # optional (domain)
```
``trust:`` and ``domain:`` are checked by :mod:`committee_calc.domain` in committee-only runs;
:func:`write_domain` records the domain of a training set into a spec file.
Relative paths are resolved against the YAML file's folder.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .committee import CommitteeCalculator
from .delta import build_delta
from .domain import parse_domain, parse_trust, record_domain
from .errors import ConfigError, ModelFileError
from .fileio import atomic_write_text
from .members import build_members

KNOWN_KEYS = {"members", "calibration", "molecules", "stress", "baseline", "delta", "name", "training",
              "energy_offsets", "trust", "domain"}


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
    # the recorded domain and trust (checked once committee_calc.domain.watch switches them on)
    committee.domain, committee.trust = parse_domain(spec.get("domain")), parse_trust(spec.get("trust"))
    baseline = spec.get("baseline")
    if baseline:
        return build_delta(committee, baseline, spec.get("delta") or {}, base_dir)
    return committee


def load_committee(path, **overrides):
    """Load a committee from a YAML spec file (see module docstring)."""
    path = Path(path)
    spec = read_yaml(path)
    return build_committee(spec, base_dir=path.parent, **overrides)


def training_file(path) -> Path:
    """The ``training.train_file`` of the committee YAML at ``path`` (resolved); ConfigError when
    the spec names none or it does not exist."""
    path = Path(path)
    train = (read_yaml(path).get("training") or {}).get("train_file")
    if not train:
        raise ConfigError(f"{path} has no training.train_file to record the domain from; "
                          "pass the training frames")
    train_path = path.parent / train
    if not train_path.is_file():
        raise ConfigError(f"training file {str(train_path)!r} of {path} does not exist")
    return train_path


def write_domain(path, frames=None, stress_key: str = "REF_stress", source: str | None = None,
                 trust: dict | None = None) -> dict:
    """Record the domain of training ``frames`` (:func:`committee_calc.domain.record_domain`; None:
    the spec's ``training.train_file``) and write it as ``domain:`` (and ``trust``, checked by
    :func:`~committee_calc.domain.parse_trust`, as ``trust:``) into the committee YAML at ``path``,
    other keys unchanged.  Returns the domain block.  Raises ConfigError (no frames, no
    training file), ModelFileError (no spec file)."""
    from ase.io import read

    path = Path(path)
    spec = read_yaml(path)
    if frames is None:
        train_path = training_file(path)
        frames = read(str(train_path), ":")
        source = f"{source or spec['training']['train_file']} ({len(frames)} frames)"
    block = record_domain(frames, stress_key=stress_key, source=source)
    parse_domain(block)
    spec["domain"] = block
    if trust:
        spec["trust"] = {**parse_trust(trust), **({"source": str(trust["source"])} if "source" in trust else {})}
    write_yaml_atomic(path, spec)
    return block
