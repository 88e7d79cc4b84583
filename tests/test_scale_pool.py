"""Scale-out of pool relaxation (issue 16): a real 2-worker LocalCluster (processes), shards, bad input.

One LocalCluster is shared by the module (``--scheduler`` points the driver at it); ``tests/`` is on
its workers' PYTHONPATH so that they can import the KillOnceEMT member of ``test_scale_helpers``."""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from committee_calc.errors import ConfigError
from committee_calc.scale import ExecutorSpec, dry_run, parse_shard, shard_indices
from drivers.merge import main as merge_main
from drivers.relax import main as relax_main
from test_scale_helpers import make_inputs, relax_argv, two_worker_cluster

ROOT = Path(__file__).resolve().parents[1]
EXACT = ("id", "status", "steps", "committee_calls", "reference_calls", "labels", "natoms", "verified")


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    with two_worker_cluster() as c:
        yield c


def rows(out) -> list:
    with open(Path(out) / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_pool(a, b, labels_a, labels_b):
    """Same candidates, statuses, counters; energies to round-off; final structures within 1e-10 Å;
    the same labels (structures and reference values), none twice."""
    ra, rb = rows(a), rows(b)
    assert [r["id"] for r in ra] == [r["id"] for r in rb]
    for x, y in zip(ra, rb):
        assert {k: x[k] for k in EXACT} == {k: y[k] for k in EXACT}
        for k in ("energy_eV", "reference_energy_eV", "fmax_eVA"):
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-9, abs=1e-12), (x["id"], k)
    fa, fb = read(Path(a) / "relaxed.extxyz", ":"), read(Path(b) / "relaxed.extxyz", ":")
    assert [f.info["candidate"] for f in fa] == [f.info["candidate"] for f in fb]
    for x, y in zip(fa, fb):
        assert np.abs(x.positions - y.positions).max() <= 1e-10
        assert np.abs(x.cell[:] - y.cell[:]).max() <= 1e-10
    la, lb = read(labels_a, ":"), read(labels_b, ":")
    ha, hb = [f.info["label_hash"] for f in la], [f.info["label_hash"] for f in lb]
    assert len(set(hb)) == len(hb), "a label was stored twice"
    assert sorted(ha) == sorted(hb)
    ea = {f.info["label_hash"]: f.info["REF_energy"] for f in la}
    for f in lb:
        assert f.info["REF_energy"] == pytest.approx(ea[f.info["label_hash"]], rel=1e-12)


def test_pool_on_two_workers_equals_in_process(cluster, tmp_path, capsys, caplog):
    address, _ = cluster
    caplog.set_level(logging.INFO)
    i = make_inputs(tmp_path)
    assert relax_main(relax_argv(i, tmp_path / "a", tmp_path / "la.extxyz")) == 0
    assert relax_main(relax_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--scheduler", address)) == 0
    assert "tasks: 9 done, 0 retried, 0 failed" in capsys.readouterr().out
    assert len(read(tmp_path / "la.extxyz", ":")) == 9  # every candidate verified by the reference
    assert_same_pool(tmp_path / "a", tmp_path / "b", tmp_path / "la.extxyz", tmp_path / "lb.extxyz")
    # a rerun skips every finished candidate: no task, no new label
    assert relax_main(relax_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--scheduler", address)) == 0
    assert "tasks: 0 done" in capsys.readouterr().out
    assert "9 of 9 candidates in" in caplog.text and "are finished (skipped); 0 to relax" in caplog.text
    assert "relax tasks" not in caplog.text  # progress: "relax 1/9 tasks", the unit said once
    assert len(read(tmp_path / "lb.extxyz", ":")) == 9


def test_killed_worker_every_candidate_once(cluster, tmp_path, capsys, caplog):
    address, client = cluster
    caplog.set_level(logging.INFO)
    marker = tmp_path / "kill-me"
    i = make_inputs(tmp_path, kill_marker=marker)
    assert relax_main(relax_argv(i, tmp_path / "a", tmp_path / "la.extxyz")) == 0  # in-process: never killed
    pids = set(client.run(os.getpid).values())
    marker.write_text("the first worker process evaluating KillOnceEMT dies (SIGKILL)")
    assert relax_main(relax_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--scheduler", address)) == 0
    assert not marker.exists() and Path(f"{marker}.claimed").exists(), "no worker was killed"
    # the killed worker's task (and any queued behind it there) came back as KilledWorker: resubmitted
    assert re.search(r"tasks: 9 done, [1-9] retried, 0 failed", capsys.readouterr().out)
    # the run reports the retry itself; Dask's own lines (task marked failed, worker removed) are hidden
    assert "retrying task" in caplog.text and "(KilledWorker" in caplog.text
    assert "marked as failed" not in caplog.text and "Removing worker" not in caplog.text
    ids = [r["id"] for r in rows(tmp_path / "b")]
    assert sorted(ids) == [f"p{k:02d}" for k in range(9)] and len(set(ids)) == 9
    assert_same_pool(tmp_path / "a", tmp_path / "b", tmp_path / "la.extxyz", tmp_path / "lb.extxyz")
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != pids  # the nanny started a new worker process


def test_three_shards_merged_equal_unsharded(tmp_path, capsys):
    i = make_inputs(tmp_path, n=6)
    assert relax_main(relax_argv(i, tmp_path / "a", tmp_path / "la.extxyz")) == 0
    for k in (1, 2, 3):
        assert relax_main(relax_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--shard", f"{k}/3")) == 0
    assert [r["id"] for r in rows(tmp_path / "b" / "shard-2-of-3")] == ["p01", "p04"]
    assert merge_main([str(tmp_path / "b")]) == 0
    assert_same_pool(tmp_path / "a", tmp_path / "b", tmp_path / "la.extxyz", tmp_path / "lb.extxyz")
    assert sorted(p.name for p in (tmp_path / "b" / "trajectories").iterdir()) == \
        sorted(p.name for p in (tmp_path / "a" / "trajectories").iterdir())
    assert (tmp_path / "b" / "pool.json").read_text() == (tmp_path / "a" / "pool.json").read_text()
    assert "pool of 6 candidates" in (tmp_path / "b" / "summary.md").read_text()
    # the next unsharded run finds everything done and clusters the merged pool
    assert relax_main(relax_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--cluster")) == 0
    assert (tmp_path / "b" / "clusters.csv").exists()
    assert len(read(tmp_path / "lb.extxyz", ":")) == 6
    # a shard relaxed with other settings is refused, naming them
    meta_path = tmp_path / "b" / "shard-2-of-3" / "pool.json"
    meta = json.loads(meta_path.read_text())
    meta["settings"]["fmax"] = 0.01
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert merge_main([str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"different settings \(shard 2/3 differs from shard 1/3 in fmax 0\.05 -> 0\.01\)", err), err


def test_shard_assignment_and_parsing():
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    assert sorted(sum((shard_indices(10, k, 3) for k in (1, 2, 3)), [])) == list(range(10))
    for bad in ("3/2", "0/3", "2/x", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_dry_run_job_script(tmp_path, capsys):
    script = dry_run(ROOT / "examples" / "cluster" / "slurm.yaml")
    for line in ("#SBATCH -p compute", "#SBATCH -A my-project", "#SBATCH -t 02:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --constraint=cpu", "distributed.cli.dask_worker"):
        assert line in script
    i = make_inputs(tmp_path, n=2)
    with pytest.raises(SystemExit) as exc:
        relax_main(relax_argv(i, tmp_path / "out", tmp_path / "l.extxyz", "--cluster-config",
                              ROOT / "examples" / "cluster" / "slurm.yaml", "--dry-run"))
    assert exc.value.code == 0 and "#SBATCH -p compute" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "l.extxyz").exists()


def _config(tmp_path, text) -> str:
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    return str(p)


BAD = {
    # refused at once (a plain TCP connect first), not after --scheduler-timeout-s (the test's timeout is 120 s)
    "refused": (lambda t: ["--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout-s", "600"],
                "cannot reach the Dask scheduler tcp://127.0.0.1:9: connection refused \\(ConnectionRefusedError"),
    "memory": (lambda t: ["--cluster-config", _config(t, "kind: slurm\ncores: 2\nmemory: 16 gigs\n"
                                                         "walltime: '00:10:00'\n")],
               "memory '16 gigs' is not a size; write it like 16GB"),
    "unknown kind": (lambda t: ["--cluster-config", _config(t, "kind: torque\ncores: 2\nmemory: 1GB\n"
                                                               "walltime: '00:10:00'\n")],
                     "unknown scheduler kind 'torque'"),
    "missing field": (lambda t: ["--cluster-config", _config(t, "kind: slurm\ncores: 2\n")],
                      "misses the field\\(s\\) memory, walltime"),
    "shard 3/2": (lambda t: ["--shard", "3/2"], "k must be between 1 and N"),
    "workers 0": (lambda t: ["--workers", "0"], "argument --workers: must be an integer >= 1"),
    # checked before any chunk reaches a worker, naming the largest candidate of the whole pool
    "atom budget, 2 workers": (lambda t: ["--workers", "2", "--atom-budget", "2"],
                               r"error: ConfigError: candidate \S+ \(4 atoms\): the atom budget 2 is smaller"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2_nothing_written(case, tmp_path, capsys):
    i = make_inputs(tmp_path / "in", n=2)
    extra, message = BAD[case]
    try:  # a usage error (argparse) exits, a refused input returns 2
        rc = relax_main(relax_argv(i, tmp_path / "out", tmp_path / "labels" / "l.extxyz", *extra(tmp_path)))
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "labels").exists()


@pytest.mark.timeout(120)
def test_batch_jobs_without_sbatch_or_without_workers_exit_2(tmp_path, capsys, monkeypatch):
    """--cluster-config: no sbatch on the PATH -> exit 2 before anything; jobs submitted but no
    worker connecting within --scheduler-timeout-s -> exit 2, not a hang; nothing written either way."""
    cfg = _config(tmp_path, "kind: slurm\ncores: 1\nmemory: 1GB\nwalltime: '00:10:00'\n")
    i = make_inputs(tmp_path / "in", n=2)
    argv = relax_argv(i, tmp_path / "out", tmp_path / "labels" / "l.extxyz", "--cluster-config", cfg,
                      "--scheduler-timeout-s", "3")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert relax_main(argv) == 2
    assert "submits jobs with 'sbatch', which is not on the PATH" in capsys.readouterr().err
    for name, text in (("sbatch", "echo Submitted batch job 42"), ("scancel", "true"), ("squeue", "true")):
        (tmp_path / "bin" / name).write_text(f"#!/bin/sh\n{text}\n")
        (tmp_path / "bin" / name).chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", "/bin"]))
    assert relax_main(argv) == 2  # sbatch "accepts" the job, which never starts a worker
    assert "no worker of the batch jobs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "labels").exists()


def test_executor_spec_checks():
    with pytest.raises(ConfigError, match="unknown executor kind"):
        ExecutorSpec("mpi")
    with pytest.raises(ConfigError, match="--scheduler needs"):
        ExecutorSpec("scheduler")
    assert not ExecutorSpec().distributed and ExecutorSpec("local", workers=2).distributed


def qha_argv(i, out, labels, *extra) -> list:
    return [i["pool"], "--committee", i["committee"], "--reference", i["reference"], "--labels", str(labels),
            "--threshold-forces-std-max-eVA", "1e-9", "--out", str(out), "--linear-scales", "0.99", "0.995",
            "1.0", "1.005", "1.01", "--relax", "none", "--supercell", "1", "--mesh", "2", "2", "2",
            "--tmax-K", "300", "--no-plots", *map(str, extra)]


def test_qha_volumes_on_two_workers_equal_in_process(cluster, tmp_path):
    from drivers.qha import main as qha_main

    address, _ = cluster
    i = make_inputs(tmp_path, n=1)
    assert qha_main(qha_argv(i, tmp_path / "a", tmp_path / "la.extxyz")) == 0
    assert qha_main(qha_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--scheduler", address)) == 0
    with open(tmp_path / "a" / "qha.csv") as fa, open(tmp_path / "b" / "qha.csv") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert len(ra) == len(rb) > 0 and ra[0].keys() == rb[0].keys()
    for x, y in zip(ra, rb):
        for k in x:
            if x[k] not in ("", "nan"):
                assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-9, abs=1e-12), k
    la, lb = read(tmp_path / "la.extxyz", ":"), read(tmp_path / "lb.extxyz", ":")
    assert 0 < len(la) == len(lb)  # displaced supercells labelled by the reference
    assert sorted(f.info["label_hash"] for f in la) == sorted(f.info["label_hash"] for f in lb)
    assert len({f.info["label_hash"] for f in lb}) == len(lb)
    for k in range(5):
        va, vb = (tmp_path / x / "volumes" / f"{k:02d}" for x in "ab")
        pa, pb = read(va / "structure.extxyz"), read(vb / "structure.extxyz")
        assert np.abs(pa.positions - pb.positions).max() <= 1e-10
        fa, fb = np.load(va / "forces.npz"), np.load(vb / "forces.npz")
        for key in fa.files:
            if np.issubdtype(fa[key].dtype, np.number):
                assert np.allclose(fa[key], fb[key], rtol=1e-9, atol=1e-12, equal_nan=True), key


def test_reference_labels_as_tasks_equal_in_process(cluster, tmp_path):
    from committee_calc.labeller import Labeller
    from committee_calc.scale.labelling import label_on_workers
    from committee_calc.scale.tasks import TaskTally
    from test_scale_helpers import pool

    _, client = cluster
    frames = pool(5, seed=11)
    ref = tmp_path / "ref.yaml"
    ref.write_text("calculator: ase.calculators.emt.EMT\nparameters: {}\n")
    local = Labeller(str(ref), tmp_path / "a.extxyz", provenance={"driver": "test"})
    expect = [local.label(f, provenance={"frame": k}) for k, f in enumerate(frames)]
    remote = Labeller(str(ref), tmp_path / "b.extxyz", provenance={"driver": "test"})
    remote.label(frames[2])  # already in the store: not sent, returned as a duplicate
    run = label_on_workers(client.get_executor(), remote, frames, provenance=[{"frame": k} for k in range(5)])
    assert run.failed == {} and isinstance(run.tally, TaskTally) and run.tally.done == 4
    assert [lab.duplicate for lab in run.labels] == [False, False, True, False, False]
    for got, want in zip(run.labels, expect):
        assert got.results["energy"] == pytest.approx(want.results["energy"], rel=1e-12)
        assert np.allclose(got.results["forces"], want.results["forces"], atol=1e-12)
    la, lb = read(tmp_path / "a.extxyz", ":"), read(tmp_path / "b.extxyz", ":")
    assert sorted(f.info["label_hash"] for f in la) == sorted(f.info["label_hash"] for f in lb)
    again = label_on_workers(client.get_executor(), remote, frames)  # nothing new to compute
    assert again.tally.done == 0 and all(lab.duplicate for lab in again.labels)
    assert len(read(tmp_path / "b.extxyz", ":")) == 5


def test_resume_on_workers_continues_saved_trajectories(cluster, tmp_path):
    """Candidates stopped at --max-steps 5 continue from their saved frames on the workers exactly
    as in this process (the driver's resume stays exact)."""
    address, _ = cluster
    i = make_inputs(tmp_path, n=4)
    for out, labels, extra in (("a", "la.extxyz", []), ("b", "lb.extxyz", ["--scheduler", address])):
        assert relax_main(relax_argv(i, tmp_path / out, tmp_path / labels, "--max-steps", "5")) == 0
        assert {r["status"] for r in rows(tmp_path / out)} == {"max_steps"}
        assert relax_main(relax_argv(i, tmp_path / out, tmp_path / labels, *extra)) == 0
    assert {r["status"] for r in rows(tmp_path / "b")} == {"converged"}
    assert_same_pool(tmp_path / "a", tmp_path / "b", tmp_path / "la.extxyz", tmp_path / "lb.extxyz")
    for cid in ("p00", "p03"):
        ta = read(tmp_path / "a" / "trajectories" / f"{cid}.extxyz", ":")
        tb = read(tmp_path / "b" / "trajectories" / f"{cid}.extxyz", ":")
        assert len(ta) == len(tb) and all(np.abs(x.positions - y.positions).max() <= 1e-10 for x, y in zip(ta, tb))


def test_qha_on_workers_writes_each_volume_as_it_finishes(cluster, tmp_path, caplog, monkeypatch):
    """An interrupted committee-qha --scheduler keeps the volumes finished so far (written as their
    tasks finish) and a rerun loads them; progress counts whole volumes; an unreachable scheduler
    is refused before the output folder exists."""
    import committee_calc.phonons.scaled as scaled
    from drivers.qha import main as qha_main

    address, _ = cluster
    i = make_inputs(tmp_path, n=1)
    assert qha_main(qha_argv(i, tmp_path / "x", tmp_path / "lx.extxyz", "--scheduler", "tcp://127.0.0.1:9")) == 2
    assert not (tmp_path / "x").exists()
    real, seen = scaled.append_records, []

    def interrupt_third(labeller, records):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(labeller, records)

    monkeypatch.setattr(scaled, "append_records", interrupt_third)
    assert qha_main(qha_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--scheduler", address)) == 130
    assert len(list((tmp_path / "b" / "volumes").glob("*/volume.json"))) == 2
    monkeypatch.setattr(scaled, "append_records", real)
    caplog.set_level(logging.INFO)
    assert qha_main(qha_argv(i, tmp_path / "b", tmp_path / "lb.extxyz", "--scheduler", address)) == 0
    assert "(3 volumes computed now, 2 loaded)" in caplog.text
    assert re.search(r"qha 5(\.0)?/5 volumes \(100%\)", caplog.text), caplog.text


def test_domain_warnings_of_a_committee_only_pool_on_workers(cluster, tmp_path):
    """A committee-only relaxation on workers: the workers' DomainWarnings are warned in the driver,
    once per candidate and measure, and listed in summary.md, as in-process."""
    from committee_calc.domain import DomainWarning

    address, _ = cluster
    i = make_inputs(tmp_path, n=2)
    yaml_text = Path(i["committee"]).read_text() + "domain: {volume_per_atom_A3: [20.0, 30.0]}\n"
    Path(i["committee"]).write_text(yaml_text)
    argv = [i["pool"], "--committee", i["committee"], "--out", str(tmp_path / "b"), "--max-steps", "3",
            "--no-progress", "--scheduler", address]
    with pytest.warns(DomainWarning) as caught:
        assert relax_main(argv) == 0
    said = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert sorted(m.split(":")[0] for m in said) == ["name p00", "name p01"], said
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert summary.count("(committee domain: volume_per_atom_A3)") == 2
