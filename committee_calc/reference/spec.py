"""Reference-calculator specs: import path + parameters, read from YAML (see :mod:`committee_calc.reference`)."""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import read_yaml
from ..errors import ConfigError
from ..imports import import_object
from ..units import check_positive

SPEC_KEYS = {"calculator", "parameters", "dispersion", "timeout_s", "isolation", "workdir",
             "failed_dir", "keep_workdirs", "name"}

#: the embedded default: GPAW plane-wave PBE (see examples/reference_gpaw.yaml)
GPAW_DEFAULT = {
    "calculator": "gpaw.GPAW",
    "parameters": {"mode": {"name": "pw", "ecut": 400}, "xc": "PBE",
                   "kpts": {"density": 3.0, "gamma": True},
                   "occupations": {"name": "fermi-dirac", "width": 0.05},
                   "txt": "{workdir}/gpaw.txt"},
}


def _sub_workdir(obj, workdir: str):
    if isinstance(obj, str):
        return obj.replace("{workdir}", workdir)
    if isinstance(obj, dict):
        return {k: _sub_workdir(v, workdir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_sub_workdir(v, workdir) for v in obj)
    return obj


def _build(calculator: str, parameters: dict, workdir: str):
    factory = import_object(calculator)
    params = _sub_workdir(dict(parameters or {}), workdir)
    try:
        sig = inspect.signature(factory)
        if "directory" not in params and "directory" in sig.parameters:
            params["directory"] = workdir
    except (TypeError, ValueError):
        pass
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"cannot construct {calculator} with parameters {params}: {exc}") from exc


@dataclass(frozen=True)
class ReferenceSpec:
    """A reference calculator described by import path + parameters (see module docstring)."""

    calculator: str
    parameters: dict = field(default_factory=dict)
    dispersion: dict | None = None
    timeout_s: float | None = None
    isolation: str | None = None
    workdir: str | None = None
    failed_dir: str | None = None
    keep_workdirs: bool = False
    name: str | None = None

    def __post_init__(self):
        if not isinstance(self.calculator, str) or "." not in self.calculator.replace(":", "."):
            raise ConfigError(f"reference 'calculator' must be an import path like "
                              f"'gpaw.GPAW', got {self.calculator!r}")
        if not isinstance(self.parameters, dict):
            raise ConfigError("reference 'parameters' must be a mapping")
        if self.dispersion is not None and (not isinstance(self.dispersion, dict)
                                            or "calculator" not in self.dispersion):
            raise ConfigError("reference 'dispersion' must be {calculator: ..., parameters: {...}}")
        if self.timeout_s is not None:
            check_positive("reference timeout_s", self.timeout_s)
        if self.isolation not in (None, "inline", "process"):
            raise ConfigError(f"reference isolation must be 'inline' or 'process', got {self.isolation!r}")
        if self.isolation == "inline" and self.timeout_s is not None:
            raise ConfigError("a reference timeout needs isolation: process (an inline call "
                              "cannot be stopped); drop 'isolation' or the timeout")

    @property
    def hash(self) -> str:
        """16 hex digits identifying calculator + parameters + dispersion."""
        blob = json.dumps({"calculator": self.calculator, "parameters": self.parameters,
                           "dispersion": self.dispersion}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def build(self, workdir: str):
        """A fresh ASE calculator for one call, working in ``workdir``."""
        calc = _build(self.calculator, self.parameters, workdir)
        if self.dispersion:
            from ase.calculators.mixing import SumCalculator

            disp = _build(self.dispersion["calculator"], self.dispersion.get("parameters") or {},
                          workdir)
            calc = SumCalculator([calc, disp])
        return calc

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def reference_from_dict(data: dict, base_dir=None) -> ReferenceSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"a reference spec must be a mapping, got {data!r}")
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"unknown reference keys {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    if "calculator" not in data:
        raise ConfigError("a reference spec needs 'calculator: <import path>' (e.g. gpaw.GPAW)")
    d = dict(data)
    for key in ("workdir", "failed_dir"):
        if d.get(key) and base_dir is not None and not os.path.isabs(str(d[key])):
            d[key] = str(Path(base_dir) / d[key])
    d["parameters"] = dict(d.get("parameters") or {})
    return ReferenceSpec(**d)


def load_reference(path) -> ReferenceSpec:
    """Read a reference YAML (see module docstring)."""
    path = Path(path)
    return reference_from_dict(read_yaml(path), base_dir=path.parent)


def default_reference(**overrides) -> ReferenceSpec:
    """GPAW plane-wave PBE (400 eV, k-point density 3/Å⁻¹) as a ReferenceSpec."""
    d = copy.deepcopy(GPAW_DEFAULT)
    d.update(overrides)
    return reference_from_dict(d)
