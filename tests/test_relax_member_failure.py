"""A committee member that raises on one candidate ends only that candidate (``committee_failed``,
the reason in summary.csv), batched and per-structure alike; the others relax on, the run
still writes its files, and a rerun retries the failed candidate."""
from __future__ import annotations

import csv

import pytest
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from committee_calc import CommitteeCalculator
from committee_calc.gate import Gate
from committee_calc.relax.gated import GatedRelaxer
from committee_calc.relax.pool import RelaxPool
from test_relax_members import cu_pool, perturbed_members

#: lattice of the candidate the flaky member fails on (cu_pool's candidate 3: 3.56 + 3 x 0.014 Å)
BAD_CELL = 3.56 + 3 * 0.014


class FlakyEMT(EMT):
    """EMT that raises on one candidate's cell (a calculator that fails on one structure)."""

    fail = True

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if FlakyEMT.fail and abs(atoms.cell[0, 0] - BAD_CELL) < 1e-6:
            raise RuntimeError("SCF did not converge (simulated)")
        super().calculate(atoms, properties, system_changes)


def _run(out, batch):
    committee = CommitteeCalculator([*perturbed_members()[:1], FlakyEMT()])
    relaxer = GatedRelaxer(Gate(committee), optimizer="FIRE", fmax=0.05, max_steps=30)
    pool = RelaxPool(relaxer, out, progress=False, batch=batch)
    return pool.run(cu_pool(6))


@pytest.mark.parametrize("batch", [True, False])
def test_a_member_failing_on_one_candidate_ends_only_that_candidate(tmp_path, batch):
    FlakyEMT.fail = True
    rows = _run(tmp_path / "p", batch)
    status = {r["id"]: r["status"] for r in rows}
    assert status.pop("cu03") == "committee_failed"
    assert set(status.values()) == {"converged"} and len(status) == 5
    bad = next(r for r in rows if r["id"] == "cu03")
    assert "RuntimeError: SCF did not converge (simulated)" in bad["reason"]
    with open(tmp_path / "p" / "summary.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    relaxed = (tmp_path / "p" / "relaxed.extxyz").read_text()
    assert "cu03" not in relaxed and "cu02" in relaxed
    FlakyEMT.fail = False  # the member works now: a rerun retries only the failed candidate
    again = _run(tmp_path / "p", batch)
    assert {r["id"]: r["status"] for r in again}["cu03"] == "converged"
    assert [r for r in again if r["id"] != "cu03"] == [r for r in rows if r["id"] != "cu03"]


def test_batched_and_per_structure_agree_on_a_failing_member(tmp_path):
    FlakyEMT.fail = True
    a, b = _run(tmp_path / "a", True), _run(tmp_path / "b", False)
    key = ("id", "status", "steps", "reference_calls", "reason")
    assert [tuple(r[k] for k in key) for r in a] == [tuple(r[k] for k in key) for r in b]
    for x, y in zip(a, b):  # EMT's neighbour list makes the last digits depend on call order
        assert bool(x["energy_eV"]) == bool(y["energy_eV"])
        if x["energy_eV"]:
            assert float(x["energy_eV"]) == pytest.approx(float(y["energy_eV"]), abs=1e-10)


def test_exploded_candidates_are_not_clustered_or_ranked(tmp_path):
    """A guard's blown-up final structure stays in summary.csv but not in clusters.csv, the
    ranking of summary.md or the landscape (found by the batched-relaxation trial)."""
    from ase.build import bulk

    from committee_calc.relax.guards import Guards
    from committee_calc.relax.runner import run_pool

    pool = cu_pool(3)
    squeezed = bulk("Cu", "fcc", 3.30, cubic=True)  # relaxing the cell grows it by ~30 %
    squeezed.info["candidate_id"] = "squeezed"
    pool.append(squeezed)
    relaxer = GatedRelaxer(Gate(CommitteeCalculator(perturbed_members())), fmax=0.05, max_steps=60,
                           cell=True, guards=Guards(volume_factor=1.1))
    run = run_pool(relaxer, pool, tmp_path / "p", cluster=True, progress=False)
    status = {r["id"]: r["status"] for r in run.rows}
    assert status["squeezed"] == "exploded"
    assert next(r for r in run.rows if r["id"] == "squeezed")["energy_eV"] not in (None, "")
    assert "squeezed" not in {r["id"] for r in run.finished} and len(run.finished) == 3
    assert "squeezed" not in (tmp_path / "p" / "clusters.csv").read_text()
    assert "3 are ranked" in (tmp_path / "p" / "summary.md").read_text()


def test_reference_failure_at_verification_reports_the_steps_done_in_both_modes(tmp_path, monkeypatch):
    """The reference fails on one candidate's verification single point, after its committee
    steps: per-structure and batched rows both give those steps (per-structure said 0)."""
    monkeypatch.chdir(tmp_path)  # the reference keeps its failed calculations in ./failed
    rows = {}
    for batch in (True, False):
        FlakyEMT.fail = True
        committee = CommitteeCalculator(perturbed_members())
        relaxer = GatedRelaxer(Gate(committee, FlakyEMT()), optimizer="FIRE", fmax=0.05, max_steps=30)
        rows[batch] = {r["id"]: r for r in RelaxPool(relaxer, tmp_path / f"b{batch}", progress=False,
                                                     batch=batch).run(cu_pool(5))}
    bad = [rows[b]["cu03"] for b in (True, False)]
    assert [r["status"] for r in bad] == ["reference_failed"] * 2
    assert bad[0]["steps"] == bad[1]["steps"] and int(bad[0]["steps"]) > 0
    assert bad[0]["reference_calls"] == bad[1]["reference_calls"]


def test_every_candidate_failing_on_the_committee_is_a_committee_error(tmp_path):
    from committee_calc.errors import CommitteeCalculationError
    from committee_calc.relax.runner import run_pool

    FlakyEMT.fail = True
    relaxer = GatedRelaxer(Gate(CommitteeCalculator([*perturbed_members()[:1], FlakyEMT()])), max_steps=5)
    run = run_pool(relaxer, [cu_pool(6)[3]], tmp_path / "p", progress=False)
    assert run.all_failed and "committee_failed 1 of 1" in run.describe()
    err = run.failure()
    assert isinstance(err, CommitteeCalculationError) and "reference or committee" in str(err)
