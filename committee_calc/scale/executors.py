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
an unknown ``kind``, a missing field, a ``memory`` that :func:`dask.utils.parse_bytes` cannot read,
a batch submit command (``sbatch``, ``qsub``, ``bsub``) not on the PATH, no batch job worker
connected within ``timeout_s``, a scheduler that refuses the connection (at once) or is not reached
within ``timeout_s``).  Dask's own log lines (workers added, removed, restarted; tasks it marks
failed before :func:`~.tasks.map_tasks` retries them) are hidden unless ``verbose``.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import shutil
import socket
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
    timeout_s: connecting to a scheduler, or waiting for the first batch job's worker, gives up
    after this long [s].
    verbose: show Dask's log lines below CRITICAL (``--verbose``).
    """

    kind: str = "inprocess"
    workers: int | None = None
    address: str | None = None
    cluster_config: str | None = None
    retries: int = 2
    timeout_s: float = 30.0
    verbose: bool = False

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
    from dask.utils import parse_bytes

    try:
        parse_bytes(str(cfg["memory"]))
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: memory {cfg['memory']!r} is not a size; write it like 16GB "
                          "(a number and a unit: kB, MB, GB, GiB ...)") from None
    scaling = cfg.get("scaling") or {"jobs": 1}
    if not isinstance(scaling, dict) or not (set(scaling) <= {"jobs"} or set(scaling) <= {"minimum", "maximum"}) \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in scaling.values()):
        raise ConfigError(f"{where}: scaling must be {{jobs: N}} or {{minimum: N, maximum: M}} with "
                          f"whole numbers, got {scaling!r}")
    return dict(cfg, scaling=scaling)


def check_submit_command(cfg: dict) -> str:
    """The batch submit command of a checked config (``sbatch``, ``qsub``, ``bsub``: its
    dask-jobqueue class's ``submit_command``); ConfigError when it is not on the PATH (this node
    cannot submit jobs).  Not needed for :func:`dry_run`."""
    import dask_jobqueue

    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[cfg["kind"]])
    command = (getattr(cls.job_cls, "submit_command", None) or "").split()[:1]
    if command and shutil.which(command[0]) is None:
        raise ConfigError(f"--cluster-config kind {cfg['kind']!r} submits jobs with {command[0]!r}, which is not "
                          "on the PATH of this node; run the driver where jobs can be submitted (a login node), "
                          "or use --workers N / --scheduler ADDRESS")
    return command[0] if command else ""


def build_jobqueue_cluster(cfg: dict):
    """The dask-jobqueue cluster object of a checked config (no job is submitted; its scheduler
    runs in this process)."""
    import dask_jobqueue

    kwargs = {k: v for k, v in cfg.items() if k not in ("kind", "scaling")}
    kwargs.setdefault("processes", cfg["cores"])
    kwargs.setdefault("silence_logs", "error")
    kwargs.setdefault("scheduler_options", {"dashboard_address": ":0"})
    return getattr(dask_jobqueue, JOBQUEUE_CLASSES[cfg["kind"]])(**kwargs)


#: loggers of Dask and its event loop (asyncio: "Task exception was never retrieved" of a failed job submission)
_DASK_LOGGERS = ("distributed", "tornado", "bokeh", "asyncio")


def _dask_filter(verbose: bool):
    """A log filter: Dask's records below WARNING (verbose) or below CRITICAL (default: workers
    removed or restarted, tasks marked failed before map_tasks retries them, lost connections, which
    the run reports itself) are dropped."""
    level = logging.WARNING if verbose else logging.CRITICAL

    def keep(record) -> bool:
        return not (record.name.split(".")[0] in _DASK_LOGGERS and record.levelno < level)
    return keep


@contextmanager
def _quiet_dask(verbose: bool = False):
    """Dask's log lines out of the log (:func:`_dask_filter`): a filter on the root handlers and
    on the handlers of the ``distributed`` logger (Dask's loggers set their own levels)."""
    keep = _dask_filter(verbose)
    handlers = list(logging.getLogger().handlers) + list(logging.getLogger("distributed").handlers)
    for h in handlers:
        h.addFilter(keep)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(keep)


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


def _tcp_target(address: str):
    """(host, port) of a ``tcp://``/``tls://`` address or a scheduler file's address, or None."""
    if os.path.isfile(address):
        try:
            address = json.loads(Path(address).read_text()).get("address", "")
        except (ValueError, OSError, AttributeError):
            raise ConfigError(f"--scheduler {address!r} is not a Dask scheduler file (JSON with its address); "
                              "give the file that `dask scheduler --scheduler-file FILE` writes") from None
    scheme, _, rest = str(address).rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        return None
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_scheduler(address: str, timeout_s: float) -> None:
    """A plain TCP connection to the scheduler ``address`` (or that of a scheduler file), so that a
    wrong address fails before any output: ConfigError at once when the connection is refused,
    after ``timeout_s`` [s] when the host does not answer; the message names the OSError."""
    _scheduler_target(address)
    target = _tcp_target(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except ConnectionRefusedError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler {address}: connection refused ({type(exc).__name__}: "
                          f"{exc}); check the address or scheduler file and that the scheduler runs") from None
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler {address} within {timeout_s:g} s ({type(exc).__name__}: "
                          f"{exc or 'timed out'}); check the address or scheduler file and that the scheduler "
                          "runs (--scheduler-timeout-s sets the wait)") from None


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
    stack.enter_context(_quiet_dask(spec.verbose))
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
            check_submit_command(cfg)
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
            check_scheduler(spec.address, spec.timeout_s)
            try:
                client = distributed.Client(**_scheduler_target(spec.address), timeout=spec.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot reach the Dask scheduler {spec.address} within {spec.timeout_s:g} s "
                                  f"({type(exc).__name__}); check the address or scheduler file and that "
                                  "the scheduler runs") from None
            print(f"dask: connected to {spec.address}; dashboard {client.dashboard_link}", flush=True)
        try:
            if spec.kind == "jobqueue":
                _first_worker(client, cfg, spec)
            yield client
        finally:
            try:
                client.close(timeout=spec.timeout_s)
            except Exception as exc:  # noqa: BLE001 - a lost scheduler: nothing left to close
                log.debug("closing the Dask client: %s", exc)
    finally:
        if cluster is not None:
            cluster.close()
        stack.close()


def _first_worker(client, cfg: dict, spec: ExecutorSpec) -> None:
    """Wait (at most ``spec.timeout_s``) for the first worker of the batch jobs started now
    (``scaling`` with jobs or a minimum ≥ 1); ConfigError when none connects."""
    if not cfg["scaling"].get("jobs", cfg["scaling"].get("minimum", 0)):
        return  # adaptive from zero: jobs are submitted when tasks arrive
    try:
        client.wait_for_workers(1, timeout=spec.timeout_s)
    except (TimeoutError, OSError) as exc:
        raise ConfigError(f"no worker of the batch jobs of {spec.cluster_config} connected within "
                          f"{spec.timeout_s:g} s ({type(exc).__name__}); check that the jobs were accepted and "
                          "run (squeue/qstat: account, queue, walltime, memory), or wait longer with "
                          "--scheduler-timeout-s") from None


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
        ex.client, ex.capture_warnings = client, True  # worker warnings come back (tasks.captured)
        ex.address = getattr(client.scheduler, "address", None) or spec.address
        yield ex


__all__ = ["ExecutorSpec", "InProcessExecutor", "JOBQUEUE_CLASSES", "KINDS", "build_jobqueue_cluster",
           "check_scheduler", "check_submit_command", "dry_run", "load_cluster_config", "open_executor"]
