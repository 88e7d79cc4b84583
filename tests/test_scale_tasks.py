"""map_tasks on plain concurrent.futures executors: retries, failures reported per key, fatal errors."""
from __future__ import annotations

import concurrent.futures as cf

import pytest

from committee_calc.errors import ConfigError
from committee_calc.scale import InProcessExecutor, TaskTally, map_tasks, task_key
from committee_calc.scale.executors import load_cluster_config

CALLS: dict = {}


def flaky(key, fail_times):
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] <= fail_times:
        raise RuntimeError(f"{key} attempt {CALLS[key]} failed")
    return key.upper()


@pytest.mark.parametrize("executor", [InProcessExecutor, lambda: cf.ThreadPoolExecutor(2)])
def test_retries_then_failure_reported_and_run_goes_on(executor):
    CALLS.clear()
    tally = TaskTally()
    with executor() as ex:
        out = {o.key: o for o in map_tasks(ex, flaky, {"a": ("a", 0), "b": ("b", 1), "c": ("c", 5)},
                                           retries=2, progress=False, tally=tally)}
    assert out["a"].result == "A" and out["a"].attempts == 1
    assert out["b"].result == "B" and out["b"].attempts == 2
    assert not out["c"].ok and out["c"].attempts == 3 and "c attempt 3 failed" in out["c"].error
    assert (tally.done, tally.retried, tally.failed) == (2, 3, 1)
    assert tally.describe() == "tasks: 2 done, 3 retried, 1 failed"


def boom(_):
    raise ConfigError("bad setting")


def test_config_error_is_fatal():
    with pytest.raises(ConfigError, match="bad setting"):
        list(map_tasks(InProcessExecutor(), boom, {"x": (1,)}, progress=False))


def test_task_key_is_the_input():
    assert task_key("c1", [1, 2]) == task_key("c1", [1, 2]) != task_key("c1", [1, 3])


def test_cluster_config_checks(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("kind: slurm\ncores: 2\nmemory: 4GB\nwalltime: '01:00:00'\nscaling: {jobs: 2}\nqueue: q\n")
    assert load_cluster_config(p)["scaling"] == {"jobs": 2}
    for text, msg in (("kind: slurm\ncores: 0\nmemory: 1GB\nwalltime: '1'\n", "cores must be"),
                      ("kind: pbs\ncores: 1\nmemory: 1GB\nwalltime: '1'\nscaling: {jobs: 1, maximum: 3}\n",
                       "scaling must be"),
                      ("kind: sge\ncores: 1\nmemory: 1GB\nwalltime: '1'\nqueu: x\n", "unknown field"),
                      ("- a list\n", "must be a mapping")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_cluster_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_cluster_config(tmp_path / "missing.yaml")


def test_label_on_workers_appends_in_input_order_and_executor_reference(tmp_path):
    """Results that finish in any order are appended in input order (as in-process), with the given
    baselines and provenance; an ExecutorReference computes through its executor and reports a
    reference failure as ReferenceCalculationError, as in-process."""
    import numpy as np
    from ase.calculators.emt import EMT
    from ase.io import read

    from committee_calc.errors import ReferenceCalculationError
    from committee_calc.labeller import Labeller
    from committee_calc.reference import Reference
    from committee_calc.scale import InProcessExecutor
    from committee_calc.scale.labelling import ExecutorReference, label_on_workers
    from test_scale_helpers import pool

    frames = pool(6, seed=4)
    base = [{"energy": float(k), "forces": np.zeros((4, 3))} for k in range(6)]
    with cf.ThreadPoolExecutor(3) as ex:
        lab = Labeller(EMT(), tmp_path / "labels.extxyz")
        run = label_on_workers(ex, lab, frames, baselines=base, provenance=[{"k": k} for k in range(6)],
                               progress=False)
    stored = read(tmp_path / "labels.extxyz", ":")
    assert run.failed == {} and [int(f.info["prov_k"]) for f in stored] == list(range(6))
    assert [f.info["BASE_energy"] for f in stored] == [float(k) for k in range(6)]
    assert lab.n_reference_calls == 6 and lab.n_labels == 6

    remote = ExecutorReference(Reference(EMT()), lambda: InProcessExecutor(), retries=1)
    want = Labeller(EMT()).label(frames[0]).results
    got = Labeller(remote).label(frames[0]).results
    assert got["energy"] == want["energy"] and remote.n_calls == 1 and remote.tally.done == 1

    class Broken(EMT):
        def calculate(self, *a, **kw):
            raise RuntimeError("SCF did not converge")

    bad = ExecutorReference(Reference(Broken(), failed_dir=tmp_path / "failed"), InProcessExecutor(), retries=2)
    with pytest.raises(ReferenceCalculationError, match="on the workers"):
        Labeller(bad).label(frames[1])
    assert bad.tally.retried == 0 and bad.tally.failed == 1  # a reference failure is not retried


class CancelledExecutor(cf.Executor):
    """Every future comes back cancelled, as a distributed executor's do when the scheduler is lost."""

    address = "tcp://10.0.0.1:8786"

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        fut.cancel()
        fut.set_running_or_notify_cancel()  # cancelled and notified: cf.wait sees it done
        return fut


def test_lost_scheduler_is_one_clear_error():
    from committee_calc.errors import CommitteeError
    from committee_calc.scale.tasks import LostSchedulerError

    with pytest.raises(LostSchedulerError, match=r"lost the Dask scheduler at tcp://10\.0\.0\.1:8786 .*outputs so "
                                                 r"far are kept - rerun to resume") as exc:
        list(map_tasks(CancelledExecutor(), flaky, {"a": ("a", 0), "b": ("b", 0)}, progress=False))
    assert isinstance(exc.value, CommitteeError)  # run_cli: one error line, exit 2


def warns_twice(k):
    import warnings

    from committee_calc.domain import DomainWarning

    warnings.warn(f"s{k}: volume per atom outside the range", DomainWarning, stacklevel=1)
    warnings.warn("a third-party remark", FutureWarning, stacklevel=1)
    warnings.warn("a third-party remark", FutureWarning, stacklevel=1)
    return k


class CapturingInProcess(InProcessExecutor):
    capture_warnings = True  # as open_executor's distributed executors


def test_worker_warnings_come_back_and_obey_the_callers_filters(caplog):
    """Warnings a task raises in its worker are recorded there and warned again in the calling
    process, each once, under the caller's filters (a quiet filter hides the third-party one,
    committee_calc's own DomainWarning is shown); a retried task logs 'retrying task'."""
    import logging
    import warnings

    from committee_calc.domain import DomainWarning
    from committee_calc.scale.tasks import Captured, captured

    out = captured(warns_twice, 3)
    assert isinstance(out, Captured) and out.result == 3
    assert [(c, m) for c, m, _, _ in out.warnings] == [(DomainWarning, "s3: volume per atom outside the range"),
                                                        (FutureWarning, "a third-party remark")]
    assert out.warnings[0][2] == __name__  # the module, for the caller's module filters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module=__name__, category=FutureWarning)  # as cli's quiet filters
        got = [o.result for o in map_tasks(CapturingInProcess(), warns_twice, {"a": (1,), "b": (1,), "c": (2,)},
                                           progress=False)]
    assert sorted(got) == [1, 1, 2]
    assert sorted(str(w.message) for w in caught) == ["s1: volume per atom outside the range",
                                                      "s2: volume per atom outside the range"]
    CALLS.clear()
    with caplog.at_level(logging.WARNING, logger="committee_calc.scale"):
        list(map_tasks(InProcessExecutor(), flaky, {"b": ("b", 1)}, retries=2, progress=False))
    assert "retrying task b (RuntimeError: b attempt 1 failed; attempt 2 of 3)" in caplog.text
    assert "failed after" not in caplog.text


def test_cluster_memory_and_submit_command_checked(tmp_path, monkeypatch):
    from committee_calc.scale.executors import check_submit_command

    p = tmp_path / "c.yaml"
    p.write_text("kind: slurm\ncores: 2\nmemory: 16 gigs\nwalltime: '01:00:00'\n")
    with pytest.raises(ConfigError, match=r"memory '16 gigs' is not a size; write it like 16GB"):
        load_cluster_config(p)
    p.write_text("kind: slurm\ncores: 2\nmemory: 16 GiB\nwalltime: '01:00:00'\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match="submits jobs with 'sbatch', which is not on the PATH"):
        check_submit_command(load_cluster_config(p))
    p.write_text("kind: lsf\ncores: 2\nmemory: 16GB\nwalltime: '01:00'\n")
    with pytest.raises(ConfigError, match="'bsub'"):
        check_submit_command(load_cluster_config(p))
