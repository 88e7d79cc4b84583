"""Reference (e.g. DFT) calculations: YAML spec, fresh instance per call, timeout, failure capture.

```yaml
# reference.yaml
calculator: gpaw.GPAW                       # import path of any ASE calculator
parameters:                                 # passed to the constructor; "{workdir}" in a string
  mode: {name: pw, ecut: 400}               # is replaced by the per-call working directory
  xc: PBE
  kpts: {density: 3.0, gamma: true}
  txt: "{workdir}/gpaw.txt"
dispersion: {calculator: dftd3.ase.DFTD3, parameters: {method: PBE, damping: d3bj}}  # optional
timeout_s: 3600          # optional wall-clock limit per call (implies isolation: process)
isolation: inline        # inline | process
workdir: null            # base folder of the per-call working directories (default: system tmp)
failed_dir: null         # where failed structures go (default: <label store folder>/failed)
keep_workdirs: false     # keep the working directory of successful calls
```

Execution strategy (:class:`Reference`)
    * **inline** (default without a timeout): each call builds a *fresh*
      calculator from the spec (an instance given directly is deep-copied,
      or ``reset()`` if it cannot be copied) on a private copy of the atoms,
      in its own working directory (``directory=`` for calculators that take
      one, ``{workdir}`` substitution for any string parameter).  The process
      working directory is never changed.
    * **process** (always used with ``timeout_s``): the job (atoms, spec or
      pickled calculator, properties) is pickled into the per-call working
      directory and run by ``python -m committee_calc._reference_runner <dir>``
      in a new session; on timeout the whole process group gets SIGTERM, then
      SIGKILL after 5 s (:mod:`committee_calc._reference_runner`).  The child sees the parent's ``sys.path``.  Threads
      are not used: a Python thread cannot be stopped, a process can.

A failure (exception, non-convergence error, timeout, crash of the child,
missing or non-finite energy/forces) raises
:class:`~committee_calc.errors.ReferenceCalculationError` after saving
``structure.extxyz`` (with ``failure_reason``), ``error.txt`` and the working
directory's files into a new folder under ``failed_dir``.  Nothing is ever
returned (so nothing can be labelled) from a failed call.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._reference_runner import compute as _compute
from ._reference_runner import kill_group as _kill_group  # noqa: F401 (old private name)
from ._reference_runner import run_in_process
from ._reference_runner import worker as _worker
from .errors import ConfigError, ReferenceCalculationError

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
    from .members.ase_member import import_object

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
            from .units import check_positive

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
    from .config import read_yaml

    path = Path(path)
    return reference_from_dict(read_yaml(path), base_dir=path.parent)


def default_reference(**overrides) -> ReferenceSpec:
    """GPAW plane-wave PBE (400 eV, k-point density 3/Å⁻¹) as a ReferenceSpec."""
    d = copy.deepcopy(GPAW_DEFAULT)
    d.update(overrides)
    return reference_from_dict(d)


# ---------------------------------------------------------------------- running


class Reference:
    """Runs a reference calculator safely (see module docstring).

    ``calc``: a :class:`ReferenceSpec`, a path to a reference YAML, or an ASE
    calculator instance.  Keyword arguments override the spec's settings.
    """

    def __init__(self, calc, timeout_s=None, isolation=None, workdir=None, failed_dir=None,
                 keep_workdirs=None):
        if isinstance(calc, (str, os.PathLike)):
            calc = load_reference(calc)
        self.spec = calc if isinstance(calc, ReferenceSpec) else None
        self.calc = None if self.spec else calc
        if self.calc is not None and not hasattr(self.calc, "get_property"):
            raise ConfigError(f"reference {calc!r} is neither an ASE calculator nor a ReferenceSpec")
        s = self.spec
        self.timeout_s = timeout_s if timeout_s is not None else (s.timeout_s if s else None)
        isolation = isolation or (s.isolation if s else None)
        if self.timeout_s is not None:
            from .units import check_positive

            self.timeout_s = check_positive("reference timeout_s", self.timeout_s)
            if isolation == "inline":
                raise ConfigError("a reference timeout needs isolation='process'")
            isolation = "process"
        self.isolation = isolation or "inline"
        if self.isolation not in ("inline", "process"):
            raise ConfigError(f"isolation must be 'inline' or 'process', got {self.isolation!r}")
        if self.isolation == "process" and self.calc is not None:
            try:
                pickle.dumps(self.calc)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"isolation='process' (needed for a timeout) must send the "
                                  f"calculator to a child process, but {type(self.calc).__name__} "
                                  f"cannot be pickled ({exc}); describe it as a ReferenceSpec YAML"
                                  ) from None
        self.workdir = workdir or (s.workdir if s else None)
        self.failed_dir = failed_dir or (s.failed_dir if s else None)
        self.keep_workdirs = bool(keep_workdirs if keep_workdirs is not None
                                  else (s.keep_workdirs if s else False))
        self.n_calls = 0
        self.n_failures = 0
        self.last_failure_dir = None

    @property
    def hash(self) -> str:
        if self.spec:
            return self.spec.hash
        params = getattr(self.calc, "parameters", {}) or {}
        blob = json.dumps({"calculator": type(self.calc).__module__ + "." + type(self.calc).__name__,
                           "parameters": dict(params)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        if self.spec:
            return self.spec.name or self.spec.calculator
        return type(self.calc).__name__

    def _fresh_calc(self, workdir):
        if self.spec:
            return self.spec.build(workdir)
        try:
            return copy.deepcopy(self.calc)
        except Exception:  # noqa: BLE001 - not copyable: reuse, but forget old results
            self.calc.reset()
            return self.calc

    def compute(self, atoms, properties=("energy", "forces")) -> dict:
        """Reference energy [eV], free_energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³]."""
        props = [p for p in dict.fromkeys(["energy", "forces", *properties])
                 if p in ("energy", "free_energy", "forces", "stress")]
        self.n_calls += 1
        base = self.workdir or tempfile.gettempdir()
        os.makedirs(base, exist_ok=True)
        jobdir = tempfile.mkdtemp(prefix="committee_ref_", dir=base)
        clean = atoms.copy()
        clean.calc = None
        try:
            if self.isolation == "process":
                res = self._run_process(clean, props, jobdir)
            else:
                try:
                    res = _compute(self._fresh_calc(jobdir), clean, props)
                except Exception as exc:  # noqa: BLE001 - any reference failure is reported
                    self._fail(clean, f"{type(exc).__name__}: {exc}", traceback.format_exc(), jobdir)
            self._check(clean, res, props, jobdir)
        except BaseException:
            shutil.rmtree(jobdir, ignore_errors=True)
            raise
        if not self.keep_workdirs:
            shutil.rmtree(jobdir, ignore_errors=True)
        else:
            res["workdir"] = jobdir
        return res

    def _check(self, atoms, res, props, jobdir):
        n = len(atoms)
        problems = []
        for p in props:
            if p not in res or res[p] is None:
                problems.append(f"{p} missing")
            elif not np.all(np.isfinite(res[p])):
                problems.append(f"{p} not finite")
        if "forces" in res and np.shape(res["forces"]) != (n, 3):
            problems.append(f"forces shape {np.shape(res['forces'])} != ({n}, 3)")
        if problems:
            self._fail(atoms, "invalid output: " + ", ".join(problems), "", jobdir)

    def _run_process(self, atoms, props, jobdir) -> dict:
        job = {"atoms": atoms, "properties": props,
               "spec": self.spec.to_dict() if self.spec else None,
               "calc": None if self.spec else self.calc}
        result = run_in_process(job, jobdir, self.timeout_s)
        if not result["ok"]:
            self._fail(atoms, result["error"], result["traceback"], jobdir)
        return result["results"]

    def _fail(self, atoms, reason: str, tb: str, jobdir):
        from ase.io import write

        self.n_failures += 1
        root = Path(self.failed_dir or Path.cwd() / "failed")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        folder = root / f"{stamp}_{os.getpid()}_{self.n_failures}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            saved = atoms.copy()
            saved.calc = None
            saved.info["failure_reason"] = reason.replace("\n", " ")[:500]
            write(folder / "structure.extxyz", saved, format="extxyz")
            (folder / "error.txt").write_text(f"reference: {self.name} (hash {self.hash})\n"
                                              f"reason: {reason}\n\n{tb}")
            if jobdir and os.path.isdir(jobdir):
                shutil.copytree(jobdir, folder / "workdir", dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("job.pkl"))
            where = f"structure saved to {folder}"
        except OSError as exc:
            where = f"could not save the structure ({exc})"
        self.last_failure_dir = str(folder)
        raise ReferenceCalculationError(
            f"reference calculation ({self.name}) failed: {reason}; {where}. Check the "
            "reference settings (convergence, timeout_s) and inspect the saved files")

    def __repr__(self):
        return f"Reference({self.name}, isolation={self.isolation}, timeout_s={self.timeout_s})"


def as_reference(obj, failed_dir=None) -> Reference:
    """A :class:`Reference` from a Reference, ReferenceSpec, YAML path or ASE calculator."""
    ref = obj if isinstance(obj, Reference) else Reference(obj)
    if ref.failed_dir is None and failed_dir is not None:
        ref.failed_dir = str(failed_dir)
    return ref


if __name__ == "__main__":  # pragma: no cover - the old child entry, kept for compatibility
    sys.exit(_worker(sys.argv[1]))
