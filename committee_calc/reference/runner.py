"""Running one reference calculation: in this process, or in a killable child process.

Used by :class:`committee_calc.reference.Reference` (see its module docstring
for the execution strategies).  ``compute`` evaluates a calculator on a copy
of the atoms; ``run_in_process`` pickles the job (atoms, spec dict or pickled
calculator, properties) into ``jobdir/job.pkl`` and runs
``python -m committee_calc.reference.runner <jobdir>`` in a new session, with
the parent's ``sys.path``.  On timeout the whole process group gets SIGTERM,
then SIGKILL after 5 s.  The child writes ``result.pkl`` atomically.

Results: ``{"energy": eV, "free_energy": eV, "forces": (N,3) eV/Å, "stress": (6,) eV/Å³}``
(the properties the calculator returned).
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import traceback

import numpy as np

from .spec import ReferenceSpec


def compute(calc, atoms, properties) -> dict:
    """Energy/free_energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³] of ``calc`` on a copy of ``atoms``."""
    a = atoms.copy()
    a.calc = calc
    out = {}
    for p in properties:
        out[p] = calc.get_property(p, a)
    res = dict(getattr(calc, "results", {}) or {})
    res.update(out)
    clean = {}
    for k in ("energy", "free_energy", "forces", "stress"):
        if res.get(k) is not None:
            clean[k] = float(np.reshape(res[k], -1)[0]) if k.endswith("energy") else np.array(res[k], float)
    clean.setdefault("free_energy", clean.get("energy"))
    return clean


def run_in_process(job: dict, jobdir: str, timeout_s: float | None) -> dict:
    """Run ``job`` in a child process; returns ``{"ok": True, "results": {...}}`` or
    ``{"ok": False, "error": str, "traceback": str}`` (a timeout or a crashed child
    included).  Other exceptions (e.g. KeyboardInterrupt) kill the child and propagate."""
    with open(os.path.join(jobdir, "job.pkl"), "wb") as fh:
        pickle.dump(job, fh)
    env = dict(os.environ)
    paths = [p for p in sys.path if p] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    log = open(os.path.join(jobdir, "worker.log"), "wb")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "committee_calc.reference.runner", jobdir],
                                cwd=jobdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return {"ok": False, "error": f"timeout after {timeout_s} s", "traceback": ""}
        except BaseException:
            kill_group(proc)
            raise
    finally:
        log.close()
    out = os.path.join(jobdir, "result.pkl")
    if not os.path.exists(out):
        return {"ok": False, "traceback": "",
                "error": f"worker process died (exit code {proc.returncode}) without a result"}
    with open(out, "rb") as fh:
        return pickle.load(fh)


def kill_group(proc) -> None:
    """SIGTERM, then SIGKILL, the process group of ``proc`` (5 s grace each)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def worker(jobdir: str) -> int:
    """Child-process entry: run job.pkl, write result.pkl atomically."""
    with open(os.path.join(jobdir, "job.pkl"), "rb") as fh:
        job = pickle.load(fh)
    try:
        calc = ReferenceSpec(**job["spec"]).build(jobdir) if job["spec"] else job["calc"]
        result = {"ok": True, "results": compute(calc, job["atoms"], job["properties"])}
    except Exception as exc:  # noqa: BLE001
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    tmp = os.path.join(jobdir, "result.pkl.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(result, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(jobdir, "result.pkl"))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(worker(sys.argv[1]))
