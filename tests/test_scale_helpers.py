"""Inputs for the scale-out tests (no tests here): a small Cu pool, committee and reference YAMLs,
and :class:`KillOnceEMT`, an EMT member that kills the worker process evaluating it once.

Workers of a LocalCluster import this module (``tests/`` is put on their ``PYTHONPATH``)."""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "calculator: ase.calculators.emt.EMT\nparameters: {}\n"


def committee_yaml(kill_marker=None) -> str:
    first = ("{backend: ase, calculator: ase.calculators.emt.EMT, species: [Cu]}" if kill_marker is None else
             "{backend: ase, calculator: test_scale_helpers.KillOnceEMT, "
             f"parameters: {{marker: '{kill_marker}', parent_pid: {os.getpid()}}}, species: [Cu]}}")
    return ("members:\n  - " + first + "\n"
            "  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {asap_cutoff: true}, species: [Cu]}\n")


def pool(n=9, seed=3) -> list:
    """``n`` rattled, strained cubic Cu cells (4 atoms) named p00, p01, ..."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.58 + 0.08 * rng.random(), cubic=True)
        a.rattle(0.05 + 0.1 * rng.random(), seed=int(rng.integers(1e9)))
        a.info["name"] = f"p{k:02d}"
        out.append(a)
    return out


def make_inputs(d, n=9, kill_marker=None) -> dict:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    write(d / "pool.extxyz", pool(n))
    (d / "committee.yaml").write_text(committee_yaml(kill_marker))
    (d / "ref.yaml").write_text(REFERENCE)
    return {"pool": str(d / "pool.extxyz"), "committee": str(d / "committee.yaml"), "reference": str(d / "ref.yaml")}


def relax_argv(inputs, out, labels, *extra) -> list:
    return [inputs["pool"], "--committee", inputs["committee"], "--reference", inputs["reference"],
            "--labels", str(labels), "--out", str(out), "--threshold-forces-std-max-eVA", "0.02",
            "--max-steps", "30", "--fmax-eVA", "0.05", "--no-progress", *map(str, extra)]


class KillOnceEMT(EMT):
    """EMT that SIGKILLs the process evaluating it when ``marker`` exists (claimed by renaming it,
    so only one process dies, once) and that process is not ``parent_pid`` (the test)."""

    def __init__(self, marker=None, parent_pid=None, **kw):
        super().__init__(**kw)
        self.marker, self.parent_pid = marker, parent_pid

    def calculate(self, *a, **kw):
        if self.marker and os.getpid() != self.parent_pid and os.path.exists(self.marker):
            try:
                os.rename(self.marker, self.marker + ".claimed")
            except OSError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(*a, **kw)


@contextmanager
def two_worker_cluster():
    """(scheduler address, Client) of a LocalCluster of 2 single-threaded worker processes that
    import ``tests/`` and the repo (PYTHONPATH), with ``allowed-failures = 0`` as
    :func:`~committee_calc.scale.executors.open_executor` starts it: a lost worker's task comes back
    as KilledWorker."""
    import dask
    import distributed

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT), old]))
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
                distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                         dashboard_address=":0") as lc, distributed.Client(lc) as client:
            yield lc.scheduler_address, client
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
