"""Running a reference safely: fresh instance per call, timeout, failure capture.

See :mod:`committee_calc.reference` for the strategies.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from ase.io import write

from ..errors import ConfigError, ReferenceCalculationError
from ..units import check_positive
from .runner import compute as _compute
from .runner import run_in_process
from .spec import ReferenceSpec, load_reference


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

