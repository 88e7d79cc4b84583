"""Where tasks run: in-process, a local Dask cluster, an existing Dask scheduler, or batch jobs.

::

    spec = ExecutorSpec("local", workers=2)                 # --workers 2
    spec = ExecutorSpec("scheduler", address="tcp://node1:8786")   # --scheduler ADDRESS|FILE
    spec = ExecutorSpec("jobqueue", cluster_config="slurm.yaml")   # --cluster-config FILE
    with open_executor(spec) as executor:                   # a concurrent.futures.Executor
        futures = [executor.submit(fn, item) for item in items]
    print(dry_run("slurm.yaml"))                            # the batch script, no scheduler needed

The library only sees a :class:`concurrent.futures.Executor` (any one works, e.g. a
``ProcessPoolExecutor``); Dask (``distributed``, ``dask-jobqueue``) is imported only here and only
when a cluster is asked for.  ``inprocess`` (the default) runs every task at once in the calling
process (:class:`InProcessExecutor`), exactly as without an executor.

Cluster config (``--cluster-config``, YAML; dask-jobqueue's keyword names)::

    kind: slurm            # slurm | pbs | lsf | sge
    cores: 8               # per job
    memory: 16GB           # per job
    walltime: "02:00:00"
    queue: compute         # optional (SLURM partition)
    account: myproject     # optional
    job_extra_directives: ["--constraint=cpu"]   # optional
    processes: 8           # optional: worker processes per job (default: cores, one thread each)
    scaling: {jobs: 4}     # or {minimum: 1, maximum: 10} (adaptive)

Errors: :class:`~committee_calc.errors.ConfigError` naming the option and the fix (``--workers 0``,
an unknown ``kind``, a missing field, an unreachable scheduler within ``timeout_s``).
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError

log = logging.getLogger("committee_calc.scale")

KINDS = ("inprocess", "local", "scheduler", "jobqueue")
#: cluster-config ``kind`` -> dask-jobqueue class name
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster"}
REQUIRED_FIELDS = ("kind", "cores", "memory", "walltime")
OPTIONAL_FIELDS = ("queue", "account", "job_extra_directives", "processes", "scaling", "interface",
                   "local_directory", "log_directory", "job_script_prologue", "name")


class InProcessExecutor(cf.Executor):
    """Runs each task at once, in the calling process (the default executor: as without one)."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported through the future, as any executor does
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            fut.set_exception(exc)
        return fut


@dataclass(frozen=True)
class ExecutorSpec:
    """Which executor to open (checked at construction; see the module docstring).

    kind: ``inprocess`` | ``local`` | ``scheduler`` | ``jobqueue``.
    workers: worker processes of a ``local`` cluster (≥ 1, one thread each).
    address: ``scheduler``: a scheduler address (``tcp://host:8786``) or a scheduler file (JSON).
    cluster_config: ``jobqueue``: the YAML above (validated here, before any output).
    retries: resubmissions of a failed task before it is reported failed (≥ 0).
    timeout_s: connecting to a scheduler gives up after this long [s].
    """

    kind: str = "inprocess"
    workers: int | None = None
    address: str | None = None
    cluster_config: str | None = None
    retries: int = 2
    timeout_s: float = 30.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown executor kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "local":
            if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
                raise ConfigError(f"--workers must be a whole number >= 1, got {self.workers!r} "
                                  "(omit it to run in this process)")
        if self.kind == "scheduler" and not self.address:
            raise ConfigError("--scheduler needs an address (tcp://host:8786) or a scheduler file")
        if self.kind == "jobqueue":
            if not self.cluster_config:
                raise ConfigError("--cluster-config needs a YAML file (see examples/cluster/slurm.yaml)")
            load_cluster_config(self.cluster_config)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, got {self.retries!r}")
        if not (isinstance(self.timeout_s, int | float) and self.timeout_s > 0):
            raise ConfigError(f"timeout_s must be > 0 seconds, got {self.timeout_s!r}")

    @property
    def distributed(self) -> bool:
        """True when tasks leave this process."""
        return self.kind != "inprocess"

    def describe(self) -> str:
        return {"inprocess": "in this process", "local": f"local Dask cluster of {self.workers} workers",
                "scheduler": f"Dask scheduler {self.address}",
                "jobqueue": f"batch jobs from {self.cluster_config}"}[self.kind]


def load_cluster_config(path) -> dict:
    """The cluster config YAML as a dict, checked: a known ``kind``, every required field
    (:data:`REQUIRED_FIELDS`), known fields only, a valid ``scaling``.  ConfigError naming the
    file, the field and the fix."""
    p = Path(path)
    where = f"cluster config {p} (--cluster-config)"
    if not p.is_file():
        raise ConfigError(f"{where} does not exist; give a YAML file like examples/cluster/slurm.yaml")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} must be a mapping of fields ({', '.join(REQUIRED_FIELDS)}, ...)")
    missing = [f for f in REQUIRED_FIELDS if cfg.get(f) in (None, "")]
    if missing:
        raise ConfigError(f"{where} misses the field(s) {', '.join(missing)}; add them "
                          "(e.g. kind: slurm, cores: 8, memory: 16GB, walltime: '02:00:00')")
    if cfg["kind"] not in JOBQUEUE_CLASSES:
        raise ConfigError(f"{where}: unknown scheduler kind {cfg['kind']!r}; choose one of "
                          f"{sorted(JOBQUEUE_CLASSES)}")
    unknown = sorted(set(cfg) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: "
                          f"{sorted(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    if isinstance(cfg["cores"], bool) or not isinstance(cfg["cores"], int) or cfg["cores"] < 1:
        raise ConfigError(f"{where}: cores must be a whole number >= 1, got {cfg['cores']!r}")
    scaling = cfg.get("scaling") or {"jobs": 1}
    if not isinstance(scaling, dict) or not (set(scaling) <= {"jobs"} or set(scaling) <= {"minimum", "maximum"}) \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in scaling.values()):
        raise ConfigError(f"{where}: scaling must be {{jobs: N}} or {{minimum: N, maximum: M}} with "
                          f"whole numbers, got {scaling!r}")
    return dict(cfg, scaling=scaling)


def build_jobqueue_cluster(cfg: dict):
    """The dask-jobqueue cluster object of a checked config (no job is submitted; its scheduler
    runs in this process)."""
    import dask_jobqueue

    kwargs = {k: v for k, v in cfg.items() if k not in ("kind", "scaling")}
    kwargs.setdefault("processes", cfg["cores"])
    kwargs.setdefault("silence_logs", "error")
    kwargs.setdefault("scheduler_options", {"dashboard_address": ":0"})
    return getattr(dask_jobqueue, JOBQUEUE_CLASSES[cfg["kind"]])(**kwargs)


def _not_dask_chatter(record) -> bool:
    return not (record.name.startswith("distributed") and record.levelno < logging.WARNING)


@contextmanager
def _quiet_dask():
    """Dask's INFO chatter (scheduler started, workers added, clients closed) out of the
    log: a filter on the root handlers (Dask's loggers set their own levels)."""
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(_not_dask_chatter)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(_not_dask_chatter)


def dry_run(cluster_config) -> str:
    """The batch job script the cluster config would submit (validated; nothing submitted, no
    batch scheduler needed)."""
    cfg = load_cluster_config(cluster_config)
    with _quiet_dask():
        cluster = build_jobqueue_cluster(cfg)
        try:
            return cluster.job_script()
        finally:
            cluster.close()


def _scheduler_target(address: str) -> dict:
    """``Client`` keyword for an address or a scheduler file."""
    if "://" in address or (":" in address and not os.path.exists(address)):
        return {"address": address}
    if not os.path.isfile(address):
        raise ConfigError(f"--scheduler {address!r} is neither an address (tcp://host:8786) nor an "
                          "existing scheduler file; check the path or the address")
    return {"scheduler_file": address}


@contextmanager
def _client(spec: ExecutorSpec):
    """A connected ``distributed.Client`` (and the cluster it started) for a non-inprocess spec."""
    import dask
    import distributed

    cluster = None
    stack = ExitStack()
    stack.enter_context(_quiet_dask())
    # a task whose worker died comes back as KilledWorker at once, and map_tasks resubmits it (counted,
    # up to --retries), rather than Dask rerunning it unseen (clusters started here; an existing
    # scheduler keeps its own setting)
    stack.enter_context(dask.config.set({"distributed.scheduler.allowed-failures": 0}))
    try:
        if spec.kind == "local":
            cluster = distributed.LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                                               dashboard_address=":0", silence_logs=logging.ERROR)
        elif spec.kind == "jobqueue":
            cfg = load_cluster_config(spec.cluster_config)
            cluster = build_jobqueue_cluster(cfg)
            if "jobs" in cfg["scaling"]:
                cluster.scale(jobs=cfg["scaling"]["jobs"])
            else:
                cluster.adapt(minimum_jobs=cfg["scaling"].get("minimum", 0),
                              maximum_jobs=cfg["scaling"].get("maximum", 1))
        if cluster is not None:
            client = distributed.Client(cluster, timeout=spec.timeout_s)
            print(f"dask: {spec.describe()}; dashboard {client.dashboard_link}", flush=True)
        else:
            try:
                client = distributed.Client(**_scheduler_target(spec.address), timeout=spec.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot reach the Dask scheduler {spec.address} within {spec.timeout_s:g} s "
                                  f"({type(exc).__name__}); check the address or scheduler file and that "
                                  "the scheduler runs") from None
            print(f"dask: connected to {spec.address}; dashboard {client.dashboard_link}", flush=True)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
        stack.close()


@contextmanager
def open_executor(spec: ExecutorSpec | None = None):
    """A ``concurrent.futures.Executor`` for ``spec`` (None: in-process), closed on exit with its
    cluster.  A started cluster prints its dashboard address.  ``executor.client`` is the Dask
    client (None in-process)."""
    spec = spec or ExecutorSpec()
    if not spec.distributed:
        ex = InProcessExecutor()
        ex.client = None
        yield ex
        return
    with _client(spec) as client:
        ex = client.get_executor(pure=False)
        ex.client = client
        yield ex


__all__ = ["ExecutorSpec", "InProcessExecutor", "JOBQUEUE_CLASSES", "KINDS", "build_jobqueue_cluster",
           "dry_run", "load_cluster_config", "open_executor"]
