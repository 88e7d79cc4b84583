"""Scale-out of landscape re-ranking, active-learning labels and sequential drivers' reference
calls (issue 16): a real 2-worker LocalCluster (processes) against the same runs in this process."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from committee_calc.analysis.landscape import make_landscape
from drivers.rerank import main as rerank_main
from test_scale_helpers import make_inputs, pool, two_worker_cluster


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    with two_worker_cluster() as c:
        yield c


def _csv(path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _landscape_file(d, n=12) -> str:
    frames = pool(n, seed=5)
    path = Path(d) / "landscape.extxyz"
    write(path, frames)
    return str(path)


def test_rerank_on_two_workers_equals_in_process(cluster, tmp_path, capsys):
    """Committee chunks as tasks (3 structures per task) and capped structures' reference calls as
    tasks: the same ranks, energies, σ, sources and labels as in this process."""
    address, _ = cluster
    i = make_inputs(tmp_path)
    land = _landscape_file(tmp_path)
    base = [land, "--committee", i["committee"], "--reference", i["reference"], "--molecules", "none",
            "--batch-size", "3", "--no-progress"]
    from committee_calc.active.rerank import rerank
    from committee_calc.config import load_committee

    probe = rerank(make_landscape(read(land, ":"), molecules=None), load_committee(i["committee"]),
                   tmp_path / "probe", plot=False)
    cap_mev = 1000 * float(np.median(probe["sigma"]))
    argv = base + ["--sigma-cap-meV-per-atom", f"{cap_mev:.6f}"]
    assert rerank_main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert rerank_main(argv + ["--out", str(tmp_path / "b"), "--scheduler", address]) == 0
    out = capsys.readouterr().out
    assert "reference tasks:" in out and "committee tasks: 4 done, 0 retried, 0 failed" in out  # 12 in 3s
    ra, rb = _csv(tmp_path / "a" / "reranked.csv"), _csv(tmp_path / "b" / "reranked.csv")
    assert [r["name"] for r in ra] == [r["name"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            try:
                assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-10, abs=1e-12), k
            except ValueError:
                assert x[k] == y[k], k
    sources = [r["source"] for r in ra]
    assert 0 < sources.count("reference") < len(ra)
    la, lb = read(tmp_path / "a" / "labels.extxyz", ":"), read(tmp_path / "b" / "labels.extxyz", ":")
    assert [f.info["label_hash"] for f in la] == [f.info["label_hash"] for f in lb]
    assert len({f.info["label_hash"] for f in lb}) == len(lb)
    for x, y in zip(la, lb):
        assert x.info["REF_energy"] == pytest.approx(y.info["REF_energy"], rel=1e-12)


@pytest.mark.slow
def test_rerank_survives_a_killed_worker(cluster, tmp_path, capsys):
    """A worker dies evaluating a committee chunk: the chunk is retried on another worker and the
    re-ranking equals the in-process one."""
    address, _ = cluster
    marker = tmp_path / "kill-once"
    i = make_inputs(tmp_path, kill_marker=str(marker))
    land = _landscape_file(tmp_path)
    argv = [land, "--committee", i["committee"], "--molecules", "none", "--batch-size", "3", "--no-progress"]
    assert rerank_main(argv + ["--out", str(tmp_path / "a")]) == 0
    marker.write_text("")
    assert rerank_main(argv + ["--out", str(tmp_path / "b"), "--scheduler", address]) == 0
    assert not marker.exists() and Path(str(marker) + ".claimed").exists()
    # the tasks queued on the dead worker (the running one and any waiting there) are resubmitted
    assert re.search(r"committee tasks: 4 done, [12] retried, 0 failed", capsys.readouterr().out)
    assert (tmp_path / "a" / "reranked.csv").read_text() == (tmp_path / "b" / "reranked.csv").read_text()


def test_remote_committee_predict_equals_predict(cluster, tmp_path):
    """RemoteCommittee.predict: the same schema dicts as committee.predict, in input order, the
    chunks cut at whole batches; the committee pickled to the workers when it has no YAML."""
    from committee_calc.config import load_committee
    from committee_calc.scale.landscape import RemoteCommittee

    _, client = cluster
    i = make_inputs(tmp_path)
    committee = load_committee(i["committee"])
    frames = pool(7, seed=8)
    want = committee.predict(frames, batch_size=2)
    for source in (i["committee"], None):
        remote = RemoteCommittee(committee, client.get_executor(), source=source, chunk_size=3)
        got = remote.predict(frames, batch_size=2)
        assert remote.tally.done == 2 and remote.tally.failed == 0  # 4 batches of 2 -> 2 tasks of 2 batches
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g["energy"] == pytest.approx(w["energy"], rel=1e-12)
            assert np.allclose(g["forces"], w["forces"], atol=1e-12)
            assert g["energy_std"] == pytest.approx(w["energy_std"], rel=1e-10, abs=1e-14)
        assert remote.species == committee.species if hasattr(committee, "species") else True


def test_active_learning_labels_on_workers_equal_in_process(cluster, tmp_path):
    """committee-learn's labelling step as one task per label: the same labels in the same store
    order, the same iterations and stop as in this process; a rerun computes nothing."""
    from committee_calc.active.trainers import run_learning

    _, client = cluster
    ref = tmp_path / "ref.yaml"
    ref.write_text("calculator: ase.calculators.emt.EMT\nparameters: {}\n")
    ls = make_landscape(pool(14, seed=9), molecules=None)
    opts = dict(backend="ridge", n_members=4, seed=1, quantity="E", batch_size=3, initial_size=4,
                threshold_eV=1e-6, max_iterations=3, progress=False)
    a = run_learning(ls, str(ref), tmp_path / "a", **opts)
    b = run_learning(ls, str(ref), tmp_path / "b", executor=client.get_executor(), **opts)
    assert (a["stopped"], a["iterations"], a["n_train"]) == (b["stopped"], b["iterations"], b["n_train"])
    la, lb = read(tmp_path / "a" / "labels.extxyz", ":"), read(tmp_path / "b" / "labels.extxyz", ":")
    assert len(la) == a["n_train"] > 4
    assert [f.info["label_hash"] for f in la] == [f.info["label_hash"] for f in lb]
    for x, y in zip(la, lb):
        assert x.info["REF_energy"] == pytest.approx(y.info["REF_energy"], rel=1e-12)
        assert x.info["prov_iteration"] == y.info["prov_iteration"]
        assert x.info["prov_pool_index"] == y.info["prov_pool_index"]
    for x, y in zip(a["history"], b["history"]):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-9) if isinstance(x[k], float) else x[k] == y[k]
    again = run_learning(ls, str(ref), tmp_path / "b", executor=client.get_executor(), **opts)
    assert again["n_train"] == b["n_train"] and len(read(tmp_path / "b" / "labels.extxyz", ":")) == len(lb)


def _labels(path) -> list:
    return [(f.info["label_hash"], f.info["REF_energy"]) for f in read(path, ":")] if Path(path).exists() else []


@pytest.mark.parametrize("driver", ["md", pytest.param("mc", marks=pytest.mark.slow), "campaign"])
def test_sequential_drivers_reference_calls_on_workers(cluster, tmp_path, capsys, monkeypatch, driver):
    """committee-md / committee-mc: each reference call a task (the run waits for it);
    committee-campaign: the round's labels sent at once.  The same labels, in the same order, as
    in this process, and the task tally printed."""
    import committee_calc.scale.campaign as scaled_campaign
    from driver_inputs import DRIVERS, argv
    from driver_inputs import make_inputs as driver_inputs

    sent = []
    real = scaled_campaign.label_on_workers
    monkeypatch.setattr(scaled_campaign, "label_on_workers",
                        lambda ex, lab, geoms, **kw: sent.append(len(geoms)) or real(ex, lab, geoms, **kw))
    address, _ = cluster
    main = DRIVERS[driver][0]
    stores = []
    for name, extra in (("a", []), ("b", ["--scheduler", address])):
        (tmp_path / name).mkdir()
        i = driver_inputs(tmp_path / name, training=driver == "campaign")
        i["extra"] = extra
        assert main(argv(driver, i)) == 0
        stores.append(_labels(Path(i["out"]) / "labels.extxyz") if driver == "campaign" else _labels(i["labels"]))
    out = capsys.readouterr().out
    assert stores[0] and [h for h, _ in stores[0]] == [h for h, _ in stores[1]]
    assert [e for _, e in stores[0]] == pytest.approx([e for _, e in stores[1]], rel=1e-12)
    assert "reference tasks:" in out and ", 0 failed" in out
    if driver == "campaign":  # the round's labels went to the workers at once
        assert sent and sent[0] > 1 and sum(sent) <= len(stores[1])
        # every reference task is counted, those sent at once too (issue: "1 done" while 5 ran)
        assert int(re.search(r"reference tasks: (\d+) done", out).group(1)) >= sum(sent)


@pytest.mark.parametrize("driver", ["rerank", *(pytest.param(d, marks=pytest.mark.slow)
                                                 for d in ("learn", "mc", "md", "campaign", "calibrate"))])
def test_bad_executor_options_exit_2_and_write_nothing(tmp_path, capsys, driver):
    """--workers 0 (argparse), an unreachable scheduler (within its timeout) and a cluster config
    with an unknown kind: exit 2, one error line, no output folder."""
    from driver_inputs import DRIVERS, argv
    from driver_inputs import make_inputs as driver_inputs

    i = driver_inputs(tmp_path)
    main = DRIVERS[driver][0]
    with pytest.raises(SystemExit) as exc:
        main(argv(driver, i) + ["--workers", "0"])
    assert exc.value.code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: condor\ncores: 1\nmemory: 1GB\nwalltime: '00:10:00'\n")
    for extra, words in ((["--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout-s", "2"], "cannot reach"),
                         (["--cluster-config", str(bad)], "unknown scheduler kind")):
        capsys.readouterr()
        assert main(argv(driver, i) + extra) == 2
        err = capsys.readouterr().err
        assert words in err, err
        assert not Path(i["out"]).exists()


def test_md_given_workers_without_reference_says_nothing_was_distributed(tmp_path, capsys):
    """committee-md --workers 2 without --reference: no cluster is started and the run says once
    that nothing went to the workers."""
    from driver_inputs import DRIVERS
    from driver_inputs import make_inputs as driver_inputs

    i = driver_inputs(tmp_path)
    assert DRIVERS["md"][0]([i["structure"], "--committee", i["committee"], "--out", i["out"], "--steps", "2",
                             "--write-interval", "1", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("local Dask cluster of 2 workers: nothing was distributed") == 1 and "dashboard" not in out
