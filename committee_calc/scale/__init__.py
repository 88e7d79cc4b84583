"""Scale-out: the same runs on a local Dask cluster, an existing scheduler, batch jobs or shards.

* :mod:`.executors` — :class:`ExecutorSpec` and :func:`open_executor` (a
  ``concurrent.futures.Executor``: in-process, ``distributed.LocalCluster``, a Dask scheduler,
  dask-jobqueue batch jobs), :func:`dry_run` (the batch script of a cluster config).
* :mod:`.tasks` — :func:`map_tasks`: idempotent keyed tasks, retried, results (and the workers'
  warnings) back to one writer; :class:`LostSchedulerError` when the scheduler goes away.
* :mod:`.shard` — ``--shard k/N`` (round-robin shares); :mod:`.merge` combines shard folders.
* :mod:`.pool` — pool relaxation as chunk tasks (:func:`~.pool.run_pool_with`, the drivers' entry).
* :mod:`.replay` — worker labels appended by the driver through ``Labeller.label``.
* :mod:`.labelling` — reference calls as tasks (:func:`~.labelling.label_on_workers`, in input
  order; :func:`~.labelling.label_pending` for active learning), one writer;
  :class:`~.labelling.ExecutorReference`: each call of a sequential run (MC, MD, calibration) a task.
* :mod:`.landscape` — :class:`~.landscape.RemoteCommittee`: batched committee evaluation in chunk
  tasks (landscape evaluation and re-ranking).
* :mod:`.campaign` — a campaign round's labels sent to the workers at once.

Dask is imported only when a cluster is opened.
"""
from .executors import ExecutorSpec, InProcessExecutor, dry_run, load_cluster_config, open_executor
from .shard import parse_shard, shard_indices
from .tasks import LostSchedulerError, TaskOutcome, TaskTally, map_tasks, task_key

__all__ = ["ExecutorSpec", "InProcessExecutor", "LostSchedulerError", "TaskOutcome", "TaskTally", "dry_run",
           "load_cluster_config", "map_tasks", "open_executor", "parse_shard", "shard_indices", "task_key"]
