"""Label store: round trip, de-duplication, torn-frame quarantine, SIGKILL and concurrent writers."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from committee_calc.errors import LabelStoreError
from committee_calc.labels import LabelStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _labelled(seed=0, reps=(1, 1, 1)):
    a = bulk("Cu", cubic=True).repeat(reps)
    a.rattle(0.05, seed=seed)
    calc = EMT()
    a.calc = calc
    ref = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "stress": a.get_stress()}
    a.calc = None
    return a, ref


def test_roundtrip_keys_and_provenance(tmp_path):
    store = LabelStore(tmp_path / "sub" / "labels.extxyz")
    a, ref = _labelled(1)
    com = {"energy": 1.0, "energy_std": 0.2, "forces_std_max": 0.3,
           "energy_members": np.array([0.8, 1.2]), "forces_members": np.zeros((2, len(a), 3))}
    assert store.append(a, ref, committee_results=com, provenance={"driver": "md", "step": 4}) == 0
    b, ref_b = _labelled(2)
    assert store.append(b, ref_b) == 1
    assert len(store) == 2
    frames = store.read()
    assert frames[0].info["REF_energy"] == pytest.approx(ref["energy"], abs=1e-12)
    np.testing.assert_allclose(frames[0].arrays["REF_forces"], ref["forces"], atol=1e-7)
    np.testing.assert_allclose(frames[0].info["REF_stress"], ref["stress"], atol=1e-12)
    np.testing.assert_allclose(frames[0].positions, a.positions, atol=1e-7)
    assert frames[0].info["prov_driver"] == "md" and frames[0].info["prov_step"] == 4
    assert frames[0].info["committee_energy_std"] == pytest.approx(0.2)
    assert frames[0].calc is None  # reference values stay under REF_* keys
    # a second handle on the same file sees both labels
    assert len(LabelStore(store.path)) == 2


def test_configurable_keys_and_bad_input(tmp_path):
    store = LabelStore(tmp_path / "l.extxyz", energy_key="dft_energy", forces_key="dft_forces",
                       stress_key="dft_stress")
    a, ref = _labelled(3)
    store.append(a, ref)
    f = store.read()[0]
    assert "dft_energy" in f.info and "dft_forces" in f.arrays and "dft_stress" in f.info
    with pytest.raises(LabelStoreError):
        LabelStore(tmp_path / "x.extxyz", energy_key="energy")
    bad = dict(ref, energy=float("nan"))
    with pytest.raises(LabelStoreError, match="non-finite"):
        store.append(a, bad)
    assert len(store) == 1


def test_extend_and_deduplicate(tmp_path):
    store = LabelStore(tmp_path / "l.extxyz", deduplicate=True)
    items = [_labelled(s) for s in range(3)]
    assert store.extend(items) == [0, 1, 2]
    a, ref = items[1]
    assert store.append(a, ref) == 1 and store.last_was_duplicate
    assert len(store) == 3
    # a fresh handle rebuilds the hash index from the file
    again = LabelStore(store.path, deduplicate=True)
    assert again.append(*items[2]) == 2 and again.last_was_duplicate
    c, ref_c = _labelled(9)
    assert again.append(c, ref_c) == 3 and not again.last_was_duplicate


def test_torn_trailing_frame_is_quarantined(tmp_path):
    store = LabelStore(tmp_path / "l.extxyz")
    for s in range(3):
        store.append(*_labelled(s))
    text, _ = store.format_frame(*_labelled(7))
    torn = text.encode()[: len(text) // 2]
    with open(store.path, "ab") as fh:
        fh.write(torn)
    with pytest.warns(RuntimeWarning, match="quarantine"):
        reopened = LabelStore(store.path)
    assert len(reopened) == 3
    q = reopened.quarantine_path.read_bytes()
    assert torn in q  # kept, not dropped
    assert reopened.append(*_labelled(8)) == 3
    assert len(reopened.read()) == 4


def test_torn_frame_cut_at_line_end_is_quarantined(tmp_path):
    store = LabelStore(tmp_path / "l.extxyz")
    store.append(*_labelled(0))
    text, _ = store.format_frame(*_labelled(1))
    lines = text.splitlines(keepends=True)
    with open(store.path, "a") as fh:
        fh.write("".join(lines[:3]))
    with pytest.warns(RuntimeWarning):
        assert len(LabelStore(store.path)) == 1


def test_corrupt_middle_is_an_error(tmp_path):
    p = tmp_path / "l.extxyz"
    p.write_text("not a count\nfoo\n")
    with pytest.raises(LabelStoreError, match="corrupt"):
        LabelStore(p)


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from ase.build import bulk
    from committee_calc.labels import LabelStore
    path, tag, n, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = LabelStore(path)
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    a = bulk("Cu", cubic=True).repeat((reps, reps, reps))
    com = {"energy": 0.0, "energy_std": 0.1,
           "forces_members": rng.normal(size=(8, len(a), 3))}
    for i in range(n):
        a.positions += rng.normal(scale=1e-3, size=a.positions.shape)
        ref = {"energy": float(i), "forces": rng.normal(size=(len(a), 3))}
        store.append(a, ref, committee_results=com, provenance={"writer": tag, "i": i})
        print(f"{tag} {i}", flush=True)
""")


def _spawn(path, tag, n, reps):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n), str(reps)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_sigkill_mid_append_series(tmp_path):
    path = tmp_path / "l.extxyz"
    proc = _spawn(path, "k", 100000, 6)  # 864 atoms, ~0.4 MB per frame
    done = []
    deadline = time.monotonic() + 60
    while len(done) < 15 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            done.append(int(line.split()[1]))
    time.sleep(0.013)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(done) >= 15
    with _maybe_warns():
        store = LabelStore(path)
    frames = store.read()
    seen = [f.info["prov_i"] for f in frames]
    # every completed append present exactly once, in order; at most one more (finished but
    # killed before it printed); nothing torn left in the store
    assert seen == list(range(len(seen)))
    assert set(done) <= set(seen) and len(seen) - len(done) <= 1
    assert all(np.isfinite(f.arrays["REF_forces"]).all() for f in frames)
    # the store keeps working after the crash
    store.append(*_labelled(0))
    assert len(store) == len(seen) + 1


class _maybe_warns:
    """A torn tail may or may not exist after the kill: accept either, record which."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.log = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        return False


def test_four_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "l.extxyz"
    procs = [_spawn(path, f"w{k}", 50, 1) for k in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(len(o.splitlines()) for o in outs) == 200
    frames = LabelStore(path).read()
    keys = [(f.info["prov_writer"], f.info["prov_i"]) for f in frames]
    assert len(keys) == 200 and len(set(keys)) == 200
    assert set(keys) == {(f"w{k}", i) for k in range(4) for i in range(50)}
    assert len({f.info["label_id"] for f in frames}) == 200
    assert not LabelStore(path).quarantine_path.exists()


_HALF_WRITER = textwrap.dedent("""
    import os, sys, time
    import committee_calc.labels as L
    from ase.build import bulk
    store = L.LabelStore(sys.argv[1])
    a = bulk("Cu", cubic=True)
    for i in range(3):
        store.append(a, {"energy": float(i), "forces": [[0, 0, 0]] * 4})
    def half_then_hang(fd, data):      # the kernel wrote half the frame, then the process died
        os.write(fd, data[: len(data) // 2])
        print("half", flush=True)
        time.sleep(60)
    L._write_all = half_then_hang
    store.append(a, {"energy": 3.0, "forces": [[0, 0, 0]] * 4})
""")


def test_sigkill_during_a_write_leaves_a_quarantined_tail(tmp_path):
    path = tmp_path / "l.extxyz"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "half"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    size = path.stat().st_size
    with pytest.warns(RuntimeWarning, match="torn trailing frame"):
        store = LabelStore(path)
    assert len(store) == 3
    assert [f.info["REF_energy"] for f in store.read()] == [0.0, 1.0, 2.0]
    q = store.quarantine_path.read_text()
    assert "offset" in q and path.stat().st_size < size
    store.append(bulk("Cu", cubic=True), {"energy": 4.0})
    assert [f.info["REF_energy"] for f in store.read()] == [0.0, 1.0, 2.0, 4.0]


def test_store_is_created_lazily_and_reads_create_nothing(tmp_path):
    """Issue 17: opening, reading and searching a missing store creates no folder, file or lock;
    the first append creates them; a folder that cannot be made is a LabelStoreError."""
    path = tmp_path / "new" / "labels.extxyz"
    store = LabelStore(path)
    assert len(store) == 0 and store.read() == [] and store.find(bulk("Cu", cubic=True)) is None
    assert list(tmp_path.iterdir()) == []
    a, ref = _labelled(3)
    assert store.append(a, ref) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["labels.extxyz", "labels.extxyz.lock"]
    assert len(LabelStore(path)) == 1
    (tmp_path / "afile").write_text("")
    blocked = LabelStore(tmp_path / "afile" / "labels.extxyz")
    assert len(blocked) == 0
    with pytest.raises(LabelStoreError, match="cannot create the folder"):
        blocked.append(a, ref)


def _store_without_lock(path, n=3, torn=False) -> bytes:
    """An existing store no LabelStore writer has locked yet (written by other means)."""
    fmt = LabelStore(path)  # formatting only: nothing is created
    text = "".join(fmt.format_frame(*_labelled(s))[0] for s in range(n))
    if torn:
        text += fmt.format_frame(*_labelled(99))[0][:300]
    path.write_text(text)
    return path.read_bytes()


def test_reading_a_store_without_lock_file_creates_nothing_changes_nothing(tmp_path):
    """Review B13: a run refused after opening an existing store left labels.extxyz.lock."""
    path = tmp_path / "labels.extxyz"
    before = _store_without_lock(path)
    store = LabelStore(path)
    assert len(store) == 3 and len(store.read()) == 3 and store.find(store.read()[1]) == 1
    assert store.reference_results(2)["forces"].shape == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.extxyz"]
    assert path.read_bytes() == before
    assert store.append(*_labelled(7)) == 3  # the first write creates the lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.extxyz", "labels.extxyz.lock"]
    assert len(LabelStore(path)) == 4


def test_torn_tail_without_lock_file_is_left_until_the_next_append(tmp_path):
    path = tmp_path / "labels.extxyz"
    before = _store_without_lock(path, torn=True)
    with pytest.warns(RuntimeWarning, match="incomplete frame.*next append"):
        store = LabelStore(path)
    assert len(store) == 3 and len(store.read()) == 3
    assert path.read_bytes() == before  # read-only: not cut, not quarantined, no lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.extxyz"]
    with pytest.warns(RuntimeWarning, match="quarantine"):
        assert store.append(*_labelled(8)) == 3
    a8, ref8 = _labelled(8)
    assert LabelStore(path).read()[-1].info["REF_energy"] == pytest.approx(ref8["energy"])
    assert len(LabelStore(path)) == 4 and store.quarantine_path.exists()


def test_corrupt_store_without_lock_file_is_refused_without_a_trace(tmp_path):
    p = tmp_path / "labels.extxyz"
    p.write_text("not a count\nfoo\n")
    with pytest.raises(LabelStoreError, match="corrupt"):
        LabelStore(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["labels.extxyz"]


def test_lock_free_readers_and_concurrent_writers_on_a_store_without_lock_file(tmp_path):
    """Readers of a store without lock file read without one while writers start appending:
    the count only grows, nothing is lost, duplicated or quarantined."""
    path = tmp_path / "l.extxyz"
    _store_without_lock(path)
    procs = [_spawn(path, f"w{k}", 30, 1) for k in range(3)]
    counts = []
    while any(p.poll() is None for p in procs):
        counts.append(len(LabelStore(path)))
        assert len(LabelStore(path).read()) >= counts[-1]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(len(o.splitlines()) for o in outs) == 90
    assert counts == sorted(counts) and len(counts) > 1
    frames = LabelStore(path).read()
    keys = [(f.info.get("prov_writer"), f.info.get("prov_i")) for f in frames[3:]]
    assert len(frames) == 93 and set(keys) == {(f"w{k}", i) for k in range(3) for i in range(30)}
    assert not LabelStore(path).quarantine_path.exists()
