"""User constraints on every relax path, numeric candidate ids, a reference that always fails.

Slab: Cu(111) 2×2×3 with 6 Å vacuum, its bottom layer raised 0.15 Å and held by ``FixAtoms``;
committee: two perturbed-EMT members, reference EMT.
"""
import csv
import logging

import numpy as np
import pytest
import yaml
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read, write

from committee_calc import CommitteeCalculator
from committee_calc.gate import Gate
from committee_calc.relax.gated import GatedRelaxer
from test_relax_members import PerturbedEMT, cu_pool, write_inputs


def raised_slab():
    slab = fcc111("Cu", (2, 2, 3), vacuum=6)
    bottom = slab.get_tags() == slab.get_tags().max()
    slab.positions[bottom, 2] += 0.15
    slab.set_constraint(FixAtoms(mask=bottom))
    slab.info.pop("adsorbate_info", None)  # not storable in extxyz
    return slab, bottom


def slab_gate(store=None):
    return Gate(CommitteeCalculator([PerturbedEMT(0.03), PerturbedEMT(-0.01)]), EMT(),
                thresholds={"forces_std_max": 0.05}, label_store=store)


def moved(a, b):
    return np.linalg.norm(a.positions - b.positions, axis=1)


@pytest.mark.parametrize("fix_symmetry", [False, True])
def test_fixed_layer_stays_put_with_and_without_fix_symmetry(fix_symmetry):
    slab, bottom = raised_slab()
    res = GatedRelaxer(slab_gate(), fix_symmetry=fix_symmetry, fmax=0.01, polish=20).relax(slab)
    assert res.status == "converged"
    d = moved(res.atoms, slab)
    assert d[bottom].max() == 0.0 and d[~bottom].max() > 0.05
    # the returned structure and every checkpoint frame keep the user's constraint (not FixSymmetry)
    for a in (res.atoms, res.trajectory[0], res.trajectory[-1]):
        assert [type(c).__name__ for c in a.constraints] == ["FixAtoms"]
        assert sorted(a.constraints[0].index) == sorted(np.flatnonzero(bottom))
    assert [type(c).__name__ for c in slab.constraints] == ["FixAtoms"]  # the input is untouched


def test_fixed_layer_stays_put_through_a_killed_and_resumed_pool(tmp_path, monkeypatch):
    import committee_calc.relax.pool as pool_mod
    from committee_calc.relax.pool import RelaxPool, read_relaxed

    slab, bottom = raised_slab()
    real, n = pool_mod.append_frame, []

    def append(path, frame):  # a kill after the 6th checkpoint frame
        real(path, frame)
        n.append(1)
        if len(n) == 6:
            raise KeyboardInterrupt

    def pool():
        return RelaxPool(GatedRelaxer(slab_gate(), fix_symmetry=True, fmax=0.01, polish=20),
                         tmp_path / "out", progress=False)

    monkeypatch.setattr(pool_mod, "append_frame", append)
    with pytest.raises(KeyboardInterrupt):
        pool().run([slab], ids=["slab"])
    frames = read(tmp_path / "out" / "trajectories" / "slab.extxyz", ":")
    assert len(frames) == 6 and all(isinstance(f.constraints[0], FixAtoms) for f in frames)
    rows = pool().run([slab], ids=["slab"])
    assert rows[0]["status"] == "converged" and rows[0]["verified"] == "yes"
    final = read_relaxed(tmp_path / "out")[0]
    d = moved(final, slab)
    assert d[bottom].max() < 1e-7 and d[~bottom].max() > 0.05  # extxyz keeps 8 decimals
    assert isinstance(final.constraints[0], FixAtoms)
    for f in read(tmp_path / "out" / "trajectories" / "slab.extxyz", ":"):
        assert moved(f, slab)[bottom].max() < 1e-7


def test_fixed_layer_stays_put_through_the_driver(tmp_path):
    from drivers.relax import main

    slab, bottom = raised_slab()
    write(tmp_path / "slab.extxyz", slab, format="extxyz")
    write_inputs(tmp_path, n=1)
    rc = main([str(tmp_path / "slab.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
               "--reference", str(tmp_path / "reference.yaml"), "--out", str(tmp_path / "out"),
               "--threshold-forces-std-max-eVA", "0.05", "--fix-symmetry", "--polish", "20",
               "--fmax", "0.02", "--no-progress"])
    assert rc == 0
    final = read(tmp_path / "out" / "relaxed.extxyz")
    assert moved(final, slab)[bottom].max() < 1e-7 and isinstance(final.constraints[0], FixAtoms)


# ---------------------------------------------------------------- numeric candidate ids
def test_numeric_candidate_names_work_with_cluster_and_on_rerun(tmp_path, capsys):
    from drivers.relax import main

    write_inputs(tmp_path, n=3)
    pool = cu_pool(3)
    for k, a in enumerate(pool):
        del a.info["candidate_id"]
        a.info["name"] = k + 1
    write(tmp_path / "candidates.extxyz", pool, format="extxyz")
    argv = [str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
            "--reference", str(tmp_path / "reference.yaml"), "--out", str(tmp_path / "out"),
            "--threshold-forces-std-max-eVA", "0.2", "--cluster", "--no-progress"]
    assert main(argv) == 0
    with open(tmp_path / "out" / "clusters.csv", newline="") as fh:
        clusters = list(csv.DictReader(fh))
    assert clusters and {c["id"] for c in clusters} <= {"1", "2", "3"}  # one row per distinct minimum
    assert sum(int(c["n_members"]) for c in clusters) == 3
    assert main(argv) == 0  # the rerun resumes the same folder: nothing to do, clusters again
    out = capsys.readouterr().out
    assert "3 candidates: 3 converged" in out and "distinct minima" in out


# ---------------------------------------------------------------- every reference fails
def test_every_reference_failing_exits_2_with_a_count(tmp_path, capsys, caplog):
    from drivers.relax import main

    write_inputs(tmp_path, n=3)
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump({"calculator": "test_relax_members.FailingEMT"}))
    argv = [str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
            "--reference", str(tmp_path / "reference.yaml"), "--labels", str(tmp_path / "labels.extxyz"),
            "--out", str(tmp_path / "out"), "--threshold-forces-std-max-eVA", "0.001", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="committee_calc"):
        rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2  # a reference that never works is a setting to fix: a user-facing error
    last = cap.err.strip().splitlines()[-1]
    assert last.startswith("error: ReferenceCalculationError: the reference calculation failed for all 3")
    assert "SCF did not converge" in last and "summary.csv" in last
    assert "reference_failed 3 of 3 (reasons in summary.csv)" in cap.out
    assert "None" not in caplog.text and "reference_failed" in caplog.text
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["reference_failed"] * 3
    assert all("SCF did not converge" in r["reason"] for r in rows)
