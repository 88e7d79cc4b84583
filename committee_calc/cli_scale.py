"""The executor of a driver run (:mod:`committee_calc.scale`), from the options of
:func:`committee_calc.cli.add_executor_arguments`; re-exported by :mod:`committee_calc.cli`.

* :func:`spec_from_args`: the checked :class:`~committee_calc.scale.executors.ExecutorSpec`
  (``--dry-run`` prints the job script and exits; the batch submit command must be on the PATH, a
  ``--scheduler`` must accept a TCP connection: both before the driver writes anything).
* :func:`executor_from_args`: the run's one executor, opened at the first call, shared by every
  later one (committee chunks, reference tasks) and closed by :func:`close_executors`
  (:func:`committee_calc.cli.run_cli` calls it at the end of every run; a run given workers that
  sent them nothing, e.g. ``committee-md --workers 2`` without ``--reference``, says so there).
* :func:`remote_committee`: the committee whose batched ``predict`` runs as chunk tasks
  (:class:`~committee_calc.scale.landscape.RemoteCommittee`), its tally printed at the end.
* :func:`reference_on_executor`: the driver's reference as an
  :class:`~committee_calc.scale.labelling.ExecutorReference` (each call a task) when the run is
  distributed (the executor opened at once: a scheduler that cannot be reached stops the driver
  before its first output); its task tally is printed when the run closes.
"""
from __future__ import annotations

import os
from contextlib import ExitStack

from .errors import ConfigError
from .reference import Reference
from .scale.executors import (
    ExecutorSpec,
    check_scheduler,
    check_submit_command,
    dry_run,
    load_cluster_config,
    open_executor,
)
from .scale.labelling import ExecutorReference
from .scale.landscape import RemoteCommittee
from .scale.shard import parse_shard


def spec_from_args(args) -> ExecutorSpec:
    """The :class:`~committee_calc.scale.executors.ExecutorSpec` of :func:`add_executor_arguments`'
    options, checked (ConfigError: ``--workers 0``, a bad cluster config or no batch submit command
    on the PATH, ``--shard 3/2``, a ``--scheduler`` that refuses or does not answer a TCP connection); sets
    ``args.shard`` to ``(k, N)`` or None.  ``--dry-run`` prints the job script and exits 0."""
    if hasattr(args, "shard"):
        args.shard = parse_shard(args.shard)
    if getattr(args, "dry_run", False) and not getattr(args, "cluster_config", None):
        raise ConfigError("--dry-run prints the job script of --cluster-config FILE; give that file")
    kind = ("local" if getattr(args, "workers", None) is not None else "scheduler" if getattr(args, "scheduler", None)
            else "jobqueue" if getattr(args, "cluster_config", None) else "inprocess")
    verbose = bool(getattr(args, "verbose", False)) or os.environ.get("COMMITTEE_CALC_VERBOSE", "") not in ("", "0")
    spec = ExecutorSpec(kind, workers=getattr(args, "workers", None), address=getattr(args, "scheduler", None),
                        cluster_config=getattr(args, "cluster_config", None), retries=getattr(args, "retries", 2),
                        timeout_s=getattr(args, "scheduler_timeout_s", 30.0), verbose=verbose)
    if getattr(args, "dry_run", False):
        print(dry_run(spec.cluster_config), flush=True)
        raise SystemExit(0)
    if spec.kind == "jobqueue":
        check_submit_command(load_cluster_config(spec.cluster_config))
    elif spec.kind == "scheduler":
        check_scheduler(spec.address, spec.timeout_s)
    if spec.distributed and all(a is not args for a, _ in _GIVEN):
        _GIVEN.append((args, spec))
    return spec


#: executors opened by :func:`executor_from_args` during one driver run (closed at its end)
_EXECUTORS = ExitStack()
#: the ``args`` of this run that asked for workers (:func:`close_executors` says when none were used)
_GIVEN: list = []


def executor_from_args(args):
    """The run's executor (None in-process), opened at the first call (printing the dashboard
    address) and shared by every later call with the same ``args``; :func:`close_executors`
    closes it.  Errors as :func:`spec_from_args`."""
    if "_executor" not in vars(args):
        spec = args._executor_spec = vars(args).get("_executor_spec") or spec_from_args(args)
        args._executor = _EXECUTORS.enter_context(open_executor(spec)) if spec.distributed else None
    return args._executor


def close_executors() -> None:
    """Close the executors (and the clusters they started) of :func:`executor_from_args`; say
    once when a run asked for workers but distributed nothing through them."""
    _EXECUTORS.close()
    for args, spec in _GIVEN:
        if "_executor" not in vars(args) and getattr(args, "reference_tasks", False) \
                and not getattr(args, "reference", None):
            print(f"{spec.describe()}: nothing was distributed (without --reference this run has no reference "
                  "calls to send to the workers; it ran in this process)", flush=True)
    _GIVEN.clear()


def reference_on_executor(args, spec):
    """``spec`` (a ReferenceSpec) as an :class:`ExecutorReference` on the run's executor when the
    options ask for workers (the cluster is started or reached now), else ``spec``."""
    ex_spec = args._executor_spec = vars(args).get("_executor_spec") or spec_from_args(args)
    if not ex_spec.distributed:
        return spec
    # connected now, before the driver writes anything: an unreachable scheduler is a clean exit 2
    ref = ExecutorReference(Reference(spec), executor_from_args(args), retries=ex_spec.retries)
    _EXECUTORS.callback(lambda: ref.n_calls and print(f"reference {ref.tally.describe()} "
                                                      f"({ex_spec.describe()})", flush=True))
    return ref


def remote_committee(args, committee, source=None):
    """``committee`` as a :class:`~committee_calc.scale.landscape.RemoteCommittee` on the run's
    executor (its batched ``predict`` in chunk tasks; ``source``: its YAML path, default
    ``args.committee``, None: pickled) when the options ask for workers, else ``committee``; the
    task tally is printed when the run closes."""
    executor = executor_from_args(args)
    if executor is None:
        return committee
    remote = RemoteCommittee(committee, executor, source=source or getattr(args, "committee", None),
                             retries=args._executor_spec.retries)
    _EXECUTORS.callback(lambda: remote.tally.done + remote.tally.failed and print(
        f"committee {remote.tally.describe()} ({args._executor_spec.describe()})", flush=True))
    return remote


__all__ = ["close_executors", "executor_from_args", "reference_on_executor", "remote_committee", "spec_from_args"]
