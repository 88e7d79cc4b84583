"""Batched in-flight relaxation (issue 15): the same trajectories, decisions, labels and statuses
as the per-structure path; geometry guards; kill/resume; atom budget; bad input."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read

from committee_calc import CommitteeCalculator
from committee_calc.fileio import read_frames_repair
from committee_calc.gate import Gate
from committee_calc.labels import LabelStore
from committee_calc.relax.batched import BatchedRelaxation
from committee_calc.relax.budget import AtomBudget
from committee_calc.relax.gated import GatedRelaxer
from committee_calc.relax.guards import Guards
from committee_calc.relax.pool import RelaxPool
from test_relax_members import FailingEMT, Harmonic, cu_pool, perturbed_members, write_inputs

ROOT = Path(__file__).resolve().parents[1]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


#: geometries each RecordingEMT computed, by its tag (the reference deep-copies it per call)
SEEN: dict = {}


class RecordingEMT(EMT):
    """EMT that records every geometry it computes (the structures sent to the reference)."""

    def __init__(self, tag, **kw):
        super().__init__(**kw)
        self.tag = tag
        SEEN[tag] = []

    @property
    def seen(self):
        return SEEN[self.tag]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        SEEN[self.tag].append((self.atoms.positions.round(8).tobytes(),
                               self.atoms.cell.array.round(8).tobytes()))


def _gated(tmp_path, name, reference=None, **kw):
    store = LabelStore(tmp_path / f"labels_{name}.extxyz")
    gate = Gate(CommitteeCalculator(perturbed_members()), reference or EMT(),
                thresholds={"forces_std_max": 0.05}, label_store=store)
    return GatedRelaxer(gate, fmax=0.01, polish=5, **kw), store


def _pool():
    images = cu_pool(6)
    images[1].set_constraint(FixAtoms([0]))  # a user constraint travels with its candidate
    return images


def _same_rows(rows_a, rows_b):
    """Summary rows equal: words and counts exactly, numbers to round-off (ASE's EMT keeps a
    neighbour list between calls, so its last digits depend on what it computed before)."""
    assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for k in a:
            try:
                x, y = float(a[k]), float(b[k])
            except ValueError:
                assert a[k] == b[k], (a["id"], k)
                continue
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12), (a["id"], k)
            if k in ("steps", "committee_calls", "reference_calls", "labels", "natoms",
                     "surface_switches"):
                assert a[k] == b[k], (a["id"], k)


def _same_trajectories(out_a, out_b, ids):
    for cid in ids:
        fa = read(Path(out_a) / "trajectories" / f"{cid}.extxyz", ":")
        fb = read(Path(out_b) / "trajectories" / f"{cid}.extxyz", ":")
        assert len(fa) == len(fb), cid
        for x, y in zip(fa, fb):
            assert np.abs(x.positions - y.positions).max() <= 1e-8, cid
            assert np.abs(x.cell[:] - y.cell[:]).max() <= 1e-8, cid
            assert x.info["relax_step"] == y.info["relax_step"]
            assert x.info["gate_decision"] == y.info["gate_decision"]


# ---------------------------------------------------------------- identity (acceptance)
@pytest.mark.parametrize("cell", [False, True])
@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "LBFGS"])
def test_batched_pool_equals_per_structure_with_the_same_gate_decisions(tmp_path, optimizer, cell):
    """FIRE/BFGS/LBFGS with and without the cell filter: the same trajectories (positions and
    cell within 1e-8 Å), step counts, statuses, summary rows and reference calls/labels."""
    images = _pool()
    refs = {"per": RecordingEMT("per"), "batch": RecordingEMT("batch")}
    rows, stores, pools = {}, {}, {}
    for name, batch in (("per", False), ("batch", True)):
        relaxer, stores[name] = _gated(tmp_path, name, refs[name], optimizer=optimizer, cell=cell)
        pools[name] = RelaxPool(relaxer, tmp_path / name, progress=False, batch=batch)
        rows[name] = pools[name].run(images)
    run = pools["batch"].batched
    assert run.rounds < run.evaluations / 3  # really batched: many candidates per committee call
    ids = [r["id"] for r in rows["per"]]
    assert ids == [r["id"] for r in rows["batch"]] == [a.info["candidate_id"] for a in images]
    _same_rows(rows["per"], rows["batch"])  # status, steps, energies, calls, verified ...
    _same_rows(_rows(tmp_path / "per" / "summary.csv"), _rows(tmp_path / "batch" / "summary.csv"))
    _same_trajectories(tmp_path / "per", tmp_path / "batch", ids)
    # the reference saw exactly the same structures, and the same labels were stored
    assert sorted(refs["per"].seen) == sorted(refs["batch"].seen) and refs["per"].seen
    assert sorted(f.info["label_hash"] for f in stores["per"].read()) == \
        sorted(f.info["label_hash"] for f in stores["batch"].read())
    assert {r["status"] for r in rows["per"]} <= {"converged", "unverified"}
    assert sum(int(r["reference_calls"]) for r in rows["per"]) > 0
    relaxed = read(tmp_path / "batch" / "relaxed.extxyz", ":")
    assert [a.info["candidate"] for a in relaxed] == ids


def test_fix_symmetry_and_constraints_batched(tmp_path):
    images = _pool()[:4]
    for a in images[:2]:  # symmetric, strained: FixSymmetry keeps the space group
        a.positions = a.get_scaled_positions().round(3) @ a.cell[:]
    out = {}
    for name, batch in (("per", False), ("batch", True)):
        relaxer, _ = _gated(tmp_path, name, cell=True, fix_symmetry=True)
        out[name] = RelaxPool(relaxer, tmp_path / name, progress=False, batch=batch).run(images)
    _same_rows(out["per"], out["batch"])
    _same_trajectories(tmp_path / "per", tmp_path / "batch", [r["id"] for r in out["per"]])
    final = read(tmp_path / "batch" / "trajectories" / "cu01.extxyz", -1)
    # FixAtoms kept: atom 0 only follows the cell
    assert np.allclose(final.get_scaled_positions()[0], images[1].get_scaled_positions()[0])
    assert not np.allclose(final.cell[:], images[1].cell[:])


def test_backend_without_batching_is_looped_transparently():
    """A committee without ``predict`` (a plain ASE calculator behind Gate) and stop policy."""
    images = cu_pool(4)
    relaxer = GatedRelaxer(Gate(EMT()), optimizer="BFGS", fmax=0.01)
    per = [relaxer.relax(a) for a in images]
    run = BatchedRelaxation(relaxer)
    batched = run.relax(images)
    assert run.rounds < run.evaluations
    for p, b in zip(per, batched):
        assert (p.status, p.steps, p.n_committee_calls) == (b.status, b.steps, b.n_committee_calls)
        assert np.array_equal(p.atoms.positions, b.atoms.positions) and p.energy == b.energy
    stop = GatedRelaxer(Gate(CommitteeCalculator(perturbed_members())), policy="stop", u_max=0.05,
                        fmax=0.01)
    per = [stop.relax(a) for a in images]
    batched = BatchedRelaxation(stop, AtomBudget(fixed=8)).relax(images)
    assert [(p.status, p.steps) for p in per] == [(b.status, b.steps) for b in batched]
    assert "uncertain" in {p.status for p in per}


def test_mace_committee_batched_equals_per_structure(mace_models):
    """Real batching (MACE predict_batch over all active candidates) on the cell filter."""
    from committee_calc.members.mace import MACEMember
    from tiny_models import si_structures

    members = [MACEMember.from_file(mace_models / f"mace_{k}.model") for k in range(4)]
    relaxer = GatedRelaxer(Gate(CommitteeCalculator(members)), fmax=0.05, max_steps=12, cell=True)
    images = si_structures(3, seed=5)
    per = [relaxer.relax(a) for a in images]
    run = BatchedRelaxation(relaxer)
    batched = run.relax(images)
    assert run.rounds < run.evaluations / 2
    for p, b in zip(per, batched):
        assert (p.status, p.steps) == (b.status, b.steps) and len(p.trajectory) == len(b.trajectory)
        for x, y in zip(p.trajectory, b.trajectory):
            assert np.abs(x.positions - y.positions).max() <= 1e-8
            assert np.abs(x.cell[:] - y.cell[:]).max() <= 1e-8


# ---------------------------------------------------------------- geometry guards
def _pair_gate(pull, k=1.0, reference=None):
    """Two Ar atoms pulled towards each other (``pull``: centre of atom 1 relative to atom 0)."""
    centres = np.array([[0, 0, 0], pull], float)
    members = [Harmonic(centres, s, k=k) for s in ([0, 0, 0], [0.001, 0, 0])]
    return Gate(CommitteeCalculator(members), reference or FailingEMT(),
                thresholds={"forces_std_max": 0.5})


@pytest.mark.parametrize("batch", [False, True])
def test_guards_end_a_collapsing_candidate_before_the_reference(batch):
    start = Atoms("Ar2", positions=[[0, 0, 0], [3.0, 0, 0]])
    relaxer = GatedRelaxer(_pair_gate([0.2, 0, 0]), fmax=1e-3)  # the committee pulls them together
    res = BatchedRelaxation(relaxer).relax([start])[0] if batch else relaxer.relax(start)
    assert res.status == "exploded" and "closer than the guard" in res.reason
    assert res.steps > 3 and res.n_reference_calls == 0 == res.n_labels  # FailingEMT never called
    d = [f.get_distance(0, 1) for f in res.trajectory]
    assert min(d) >= 0.5 * 2 * 1.06 and res.atoms is not None  # the last frame before the guard
    # already collapsed at the start: not even the committee is asked
    close = Atoms("Ar2", positions=[[0, 0, 0], [0.4, 0, 0]])
    res = BatchedRelaxation(relaxer).relax([close])[0] if batch else relaxer.relax(close)
    assert res.status == "exploded" and res.n_committee_calls == 0 and res.atoms is None
    assert "in the input structure (before any step" in res.reason
    # force blow-up: the committee answers, the guard ends it before the gate falls back
    relaxer = GatedRelaxer(_pair_gate([40.0, 0, 0], k=10.0), fmax=1e-3)
    res = BatchedRelaxation(relaxer).relax([start])[0] if batch else relaxer.relax(start)
    assert res.status == "exploded" and "force" in res.reason
    assert res.n_committee_calls == 1 and res.n_reference_calls == 0
    # guards off: the relaxation goes on
    relaxer = GatedRelaxer(_pair_gate([40.0, 0, 0], k=10.0), fmax=1e-3, max_steps=5, guards=None)
    res = BatchedRelaxation(relaxer).relax([start])[0] if batch else relaxer.relax(start)
    assert res.status == "max_steps" and res.n_reference_calls == 0


def test_guard_limits():
    from ase.build import bulk

    a = bulk("Cu", "fcc", 3.6, cubic=True)
    v0 = a.get_volume()
    assert Guards().geometry(a, v0) is None
    big = a.copy()
    big.set_cell(a.cell * 2, scale_atoms=True)  # volume x 8
    assert "volume" in Guards().geometry(big, v0) and Guards(volume_factor=10).geometry(big, v0) is None
    assert Guards().forces(np.full((2, 3), 60.0)) is not None and Guards().forces(np.ones((2, 3))) is None
    with pytest.raises(Exception, match="guard"):
        Guards(min_distance=-1)


# ---------------------------------------------------------------- atom budget
def test_atom_budget_grows_while_time_per_atom_falls():
    b = AtomBudget(start=64, largest=8, rounds=2)
    per_atom = {64: 4.0, 128: 2.0, 256: 1.5, 512: 1.6}
    b.record(64, 1000.0)  # the first call (start-up) is not counted
    while b.growing:
        b.record(b.atoms // 2, 1.0)  # a half-full call says nothing
        b.record(b.atoms, b.atoms * per_atom[b.atoms])
    assert b.atoms == 256 and [h[0] for h in b.history] == [64, 128, 256, 512]
    fixed = AtomBudget(fixed=100, largest=64)
    fixed.record(100, 1.0)
    fixed.record(100, 0.1)
    assert fixed.atoms == 100 and not fixed.growing


# ---------------------------------------------------------------- driver: kill/resume, bad input
def _args(tmp_path, *extra, out="out", labels="labels.extxyz"):
    return [str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
            "--reference", str(tmp_path / "reference.yaml"), "--labels", str(tmp_path / labels),
            "--out", str(tmp_path / out), "--no-progress", *extra]


def test_killed_batched_pool_resumes_without_duplicates(tmp_path):
    write_inputs(tmp_path, n=6, slow_reference_s=0.1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    cmd = [sys.executable, "-m", "drivers.relax",
           *_args(tmp_path, "--threshold-energy-std-per-atom-meV", "1.5", "--atom-budget", "8")]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    summary, traj = tmp_path / "out" / "summary.csv", tmp_path / "out" / "trajectories"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if summary.exists() and len(_rows(summary)) >= 1 and len(list(traj.glob("*.extxyz"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "driver finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {r["id"]: r for r in _rows(summary)}
    assert 1 <= len(done) < 6
    files = {p.stem: p.read_bytes() for p in traj.glob("*.extxyz")}
    rc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    rows = _rows(summary)
    assert [r["id"] for r in rows] == [f"cu{k:02d}" for k in range(6)]  # each once, input order
    for cid, row in done.items():  # finished candidates are bit-identical
        assert (traj / f"{cid}.extxyz").read_bytes() == files[cid]
        assert next(r for r in rows if r["id"] == cid) == row
    for cid, data in files.items():  # unfinished ones continued their saved path
        saved = tmp_path / f"saved_{cid}.extxyz"
        saved.write_bytes(data)
        before, after = read_frames_repair(saved), read(traj / f"{cid}.extxyz", ":")
        assert len(after) >= len(before) > 0
        for x, y in zip(before, after):
            assert np.array_equal(x.positions, y.positions)
            assert x.info["relax_step"] == y.info["relax_step"]
    hashes = [f.info["label_hash"] for f in read(tmp_path / "labels.extxyz", ":")]
    assert len(hashes) == len(set(hashes)) > 0


def test_driver_batched_and_no_batch_agree(tmp_path, monkeypatch):
    """The driver's batched path (forced here: an EMT committee does not batch natively, and the
    driver then relaxes one candidate after another) equals --no-batch."""
    import drivers.relax
    from drivers.relax import main

    monkeypatch.setattr(drivers.relax, "batches_natively", lambda committee: True)
    write_inputs(tmp_path, n=4)
    out = {}
    for name, extra in (("batch", []), ("per", ["--no-batch"])):
        rc = main(_args(tmp_path, "--threshold-forces-std-max-eVA", "0.05", *extra, out=name,
                        labels=f"{name}.extxyz"))
        assert rc == 0
        out[name] = _rows(tmp_path / name / "summary.csv")
    _same_rows(out["batch"], out["per"])


@pytest.mark.parametrize("case", ["budget", "species"])
def test_bad_batched_input_names_the_candidate(tmp_path, case, capsys):
    from ase.io import write

    from drivers.relax import main

    write_inputs(tmp_path, n=3, species=["Cu"] if case == "species" else None)
    extra = ["--atom-budget", "2"] if case == "budget" else []
    if case == "species":
        images = cu_pool(3)
        images[2][1].symbol = "Al"
        write(tmp_path / "candidates.extxyz", images)
    rc = main(_args(tmp_path, *extra))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:")
    assert {"budget": "candidate cu00 (4 atoms)", "species": "candidate cu02"}[case] in err
    assert {"budget": "atom budget 2", "species": "Al"}[case] in err
    assert not (tmp_path / "out" / "summary.csv").exists() and not (tmp_path / "labels.extxyz").exists()


def test_batched_only_for_committees_that_batch_natively(mace_models):
    """committee-relax batches when a member evaluates many structures in one call (MACE ...);
    a committee of ASE calculators relaxes one candidate after another (interleaving single
    calls only costs their caches)."""
    from committee_calc.members.mace import MACEMember
    from committee_calc.relax.pool import batches_natively

    assert not batches_natively(CommitteeCalculator(perturbed_members()))
    mace = CommitteeCalculator([MACEMember.from_file(mace_models / f"mace_{k}.model") for k in range(2)])
    assert batches_natively(mace) and batches_natively(Gate(mace))
    assert batches_natively(CommitteeCalculator([MACEMember.from_file(mace_models / "mace_0.model"), EMT()]))


def test_mace_collate_equals_torch_geometric_batch(mace_models):
    """The fast collate of MACE batches equals mace's ``Batch.from_data_list(...).to_dict()``
    key by key (dtype, shape, values), for mixed sizes and a non-periodic structure."""
    import torch
    from mace.tools import torch_geometric

    from committee_calc.members.mace import MACEMember
    from tiny_models import rattled_si

    member = MACEMember.from_file(mace_models / "mace_0.model")
    structs = [rattled_si(1), rattled_si(2, (1, 1, 2)), rattled_si(3)]
    structs[2].pbc = False
    ours = member.build_batch(structs).to_dict()
    graphs = member.build_graphs(structs)
    theirs = torch_geometric.Batch.from_data_list(graphs).to_dict()
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key
    assert ours["ptr"].tolist() == [0, 8, 24, 32]


@pytest.mark.parametrize("batch", [False, True])
def test_trajectories_are_fsynced_per_candidate_not_per_frame(tmp_path, monkeypatch, batch):
    """Frames are appended in one write each (complete or absent after a kill) and a candidate's
    trajectory is fsynced once, when it finishes, before its summary row."""
    import committee_calc.relax.pool as pool_mod

    synced, order = [], []
    real_sync, real_append = pool_mod.fsync_file, pool_mod.CsvLog.append
    monkeypatch.setattr(pool_mod, "fsync_file", lambda p: synced.append(Path(p).stem) or
                        order.append(("sync", Path(p).stem)) or real_sync(p))
    monkeypatch.setattr(pool_mod.CsvLog, "append", lambda self, row: order.append(
        ("row", row["id"])) or real_append(self, row))
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    relaxer, _ = _gated(tmp_path, "sync")
    images = _pool()
    rows = RelaxPool(relaxer, tmp_path / "out", progress=False, batch=batch).run(images)
    frames = sum(len(read(tmp_path / "out" / "trajectories" / f"{r['id']}.extxyz", ":"))
                 for r in rows)
    assert sorted(synced) == sorted(r["id"] for r in rows)
    for cid in synced:  # the trajectory is on disk before the row that says it is finished
        assert order.index(("sync", cid)) < order.index(("row", cid))
    assert frames > 3 * len(rows) and len(fsyncs) < frames
