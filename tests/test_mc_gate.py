"""Threshold MC through the shared Gate: labels, retraining, hard cap, non-finite output,
label de-duplication on resume, start selection."""
import json

import numpy as np
import pytest
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import GateStop, NonFiniteOutputError
from committee_calc.gate import Gate
from committee_calc.labels import LabelStore
from committee_calc.mc.moves import MoveSet, make_whole
from committee_calc.mc.starts import select_starts
from committee_calc.mc.threshold import ThresholdMC
from committee_calc.train.ridge import PairRidgeCommittee
from test_mc_moves import water_crystal

MOVES = {"translate": {"probability": 2, "step": 0.3}, "rotate": {"probability": 2, "step": 20},
         "cell_volume": {"probability": 1, "step": 0.04}}


def reference_data(structures):
    E, F = [], []
    for s in structures:
        a = s.copy()
        a.calc = EMT()
        E.append(a.get_potential_energy())
        F.append(a.get_forces())
    return E, F


def fit_committee(structures, seed=0):
    E, F = reference_data(structures)
    model = PairRidgeCommittee(["H", "O"], n_members=6, seed=seed, r_cut=4.0, n_basis=8, ridge=1e-6)
    model.fit(structures, E, F)
    return model.as_committee(molecules=4)


def minima_set(n=6, seed=0):
    """'Minima-only' training data: the start crystal with tiny rigid perturbations."""
    atoms, topo = make_whole(water_crystal(a=4.0))
    ms = MoveSet({"translate": {"probability": 1, "step": 0.02}, "rotate": {"probability": 1, "step": 1}})
    rng = np.random.default_rng(seed)
    out = [atoms]
    for _ in range(n - 1):
        out.append(ms.propose(atoms, topo, rng)[0])
    return out


def retrainer(path):
    frames = LabelStore(path).read()
    base = minima_set()
    E0, F0 = reference_data(base)
    model = PairRidgeCommittee(["H", "O"], n_members=6, seed=1, r_cut=4.0, n_basis=8, ridge=1e-6)
    model.fit(base + frames, list(E0) + [f.info["REF_energy"] for f in frames],
              list(F0) + [f.arrays["REF_forces"] for f in frames])
    return model.as_committee(molecules=4)


@pytest.fixture
def gate(tmp_path):
    return Gate(fit_committee(minima_set()), EMT(), thresholds={"energy_std_per_molecule": 0.01},
                hard_cap={"energy_std_per_molecule": 5.0}, label_store=tmp_path / "labels.extxyz",
                provenance={"driver": "mc-test"}, retrain=retrainer, retrain_every=3)


def test_on_the_fly_labels_and_retrains(gate):
    mc = ThresholdMC(water_crystal(a=4.0), gate, MOVES, lid_eV=0.3, seed=2, run_id="t1")
    recs = mc.run(40)
    labelled = [r for r in recs if r["gate_decision"] == "reference"]
    assert 0 < len(labelled) < len(recs)
    assert gate.n_labels == len(labelled) == len(gate.label_store)
    assert gate.n_retrains >= 1
    frames = gate.label_store.read()
    steps = sorted(int(f.info["prov_mc_step"]) for f in frames)
    assert steps == sorted(r["step"] for r in labelled)
    assert all(f.info["prov_mc_run"] == "t1" for f in frames)
    for r in recs[1:]:
        if r["accepted"]:
            assert r["trial_energy_eV"] < r["lid_eV"]
    # labelled steps carry the reference energy
    for r in labelled:
        f = [fr for fr in frames if int(fr.info["prov_mc_step"]) == r["step"]][0]
        assert r["trial_energy_eV"] == pytest.approx(f.info["REF_energy"], abs=1e-9)


def test_hard_cap_terminates_and_start_above_cap_errors(tmp_path):
    com = fit_committee(minima_set())
    tight = Gate(com, EMT(), thresholds={"energy_std_per_molecule": 1e-6},
                 hard_cap={"energy_std_per_molecule": 1e-5}, label_store=tmp_path / "l.extxyz")
    with pytest.raises(GateStop, match="start structure already exceeds the hard"):
        ThresholdMC(water_crystal(a=4.0), tight, MOVES, lid_eV=0.3, seed=0).initialise()
    assert len(tight.label_store) == 0
    # a cap between the start's uncertainty and the far-away trials: the chain stops, reason kept
    s0 = com.predict([make_whole(water_crystal(a=4.0))[0]])[0]["energy_std"] / 4
    g = Gate(com, EMT(), thresholds={"energy_std_per_molecule": 3 * s0 + 1e-9},
             hard_cap={"energy_std_per_molecule": 3 * s0 + 1e-9}, label_store=None)
    mc = ThresholdMC(water_crystal(a=4.0), g, {"translate": {"probability": 1, "step": 1.5}},
                     lid_eV=5.0, seed=0)
    recs = mc.run(200)
    assert mc.terminated and mc.terminated.startswith("hard cap")
    assert recs[-1]["gate_decision"] == "stop" and mc.step_index < 200
    with pytest.raises(Exception, match="terminated"):
        mc.step()
    # committee-only runs: the same cap on a committee-only gate stops at the same step
    mc2 = ThresholdMC(water_crystal(a=4.0), Gate(com, hard_cap={"energy_std_per_molecule": 3 * s0 + 1e-9}),
                      {"translate": {"probability": 1, "step": 1.5}}, lid_eV=5.0, seed=0)
    mc2.run(200)
    assert mc2.terminated and mc2.step_index == mc.step_index
    assert mc2.terminated.startswith("hard cap")


class NaNAfter(EMT):
    """EMT that answers NaN from its ``after``-th call on (a member leaving its domain)."""

    def __init__(self, after=1, **kw):
        super().__init__(**kw)
        self.n, self.after = 0, after

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.n += 1
        if self.n > self.after:
            self.results["energy"] = float("nan")


def nan_committee():
    return CommitteeCalculator([EMT(), EMT(asap_cutoff=True), NaNAfter(after=1)])


def test_nonfinite_committee_output_ends_a_committee_only_chain():
    """Behaviour change (issue 13): committee-only MC used to average the finite members
    (or cap on the NaN spread); now non-finite output ends the chain with the reason."""
    mc = ThresholdMC(water_crystal(a=4.0), Gate(nan_committee()), MOVES, lid_eV=0.3, seed=0)
    recs = mc.run(20)
    assert mc.terminated and mc.terminated.startswith("non-finite output")
    assert "non-finite" in recs[-1]["gate_reason"] and recs[-1]["gate_decision"] == "stop"
    assert mc.step_index == 1 and len(recs) == 2 and mc.n_accepted == 0
    assert mc.state()["terminated"] == mc.terminated
    with pytest.raises(NonFiniteOutputError, match="start structure"):
        ThresholdMC(water_crystal(a=4.0), Gate(CommitteeCalculator([NaNAfter(0), NaNAfter(0)])),
                    MOVES, lid_eV=0.3).initialise()


def test_nonfinite_committee_output_with_a_reference_is_labelled(tmp_path):
    gate = Gate(nan_committee(), EMT(), label_store=tmp_path / "l.extxyz", molecules=4)
    mc = ThresholdMC(water_crystal(a=4.0), gate, MOVES, lid_eV=0.3, seed=0, run_id="nan")
    recs = mc.run(6)
    assert mc.terminated is None and mc.step_index == 6
    assert recs[0]["gate_decision"] == "committee"
    assert all(r["gate_decision"] == "reference" and "non-finite" in r["gate_reason"] for r in recs[1:])
    assert len(gate.label_store) == gate.n_labels == 6
    frames = gate.label_store.read()
    for r in recs[1:]:
        assert r["trial_energy_eV"] == pytest.approx(frames[r["label_index"]].info["REF_energy"], abs=1e-9)


def test_label_of_interrupted_step_is_reused_not_duplicated(gate):
    mc = ThresholdMC(water_crystal(a=4.0), gate, MOVES, lid_eV=0.3, seed=4, run_id="t2")
    mc.initialise()
    saved, rec = None, None
    for _ in range(60):
        before = json.loads(json.dumps(mc.state()))
        rec = mc.step()
        if rec["gate_decision"] == "reference":
            saved = before
            break
    assert saved is not None, "no labelled step happened"
    n = len(gate.label_store)
    # 'kill' after the label append, before the state save: resume from the previous state;
    # the gate's labeller finds the stored label: no second reference call, no duplicate
    calls, dups = gate.n_reference_calls, gate.labeller.n_duplicates
    again = ThresholdMC.from_state(saved, gate)
    rec2 = again.step()
    assert len(gate.label_store) == n  # no duplicate label
    assert gate.n_reference_calls == calls and gate.labeller.n_duplicates == dups + 1
    assert rec2["step"] == rec["step"] and rec2["move"] == rec["move"]
    assert rec2["trial_energy_eV"] == pytest.approx(rec["trial_energy_eV"], abs=1e-12)
    assert rec2["accepted"] == rec["accepted"] and rec2["label_index"] == rec["label_index"]
    assert again.rng.bit_generator.state == mc.rng.bit_generator.state


def test_select_starts_fps_from_lowest_energy():
    structs = minima_set(8, seed=3)
    energies = [3.0, 1.0, 2.0, 0.5, 4.0, 5.0, 6.0, 7.0]
    X = np.arange(8, dtype=float)[:, None] ** 1.5
    idx = select_starts(structs, 3, energies=energies, descriptors=X)
    assert idx[0] == 3 and len(set(idx)) == 3
    assert idx[1] == 7  # farthest from x(3) in descriptor space
    # default descriptors (shared structural fingerprint) work too
    idx2 = select_starts(structs, 3, energies=energies)
    assert idx2[0] == 3 and len(set(idx2)) == 3


def test_select_starts_evaluates_through_the_gate():
    """Without energies the start is the gate's lowest energy, from one batched gate call."""
    structs = minima_set(5, seed=2)
    com = fit_committee(minima_set())
    gate = Gate(com, molecules=4)
    idx = select_starts(structs, 2, gate=gate)
    energies = [com.predict([a])[0]["energy"] for a in structs]
    assert idx[0] == int(np.argmin(energies)) and len(set(idx)) == 2
    assert gate.n_committee_calls == len(structs) and gate.n_calls == len(structs)
    with pytest.raises(Exception, match="energies"):
        select_starts(structs, 2)


@pytest.mark.slow
def test_on_the_fly_benchmark_reduces_heldout_error(tmp_path):
    pytest.importorskip("tblite")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mc_on_the_fly.py"
    spec = importlib.util.spec_from_file_location("mc_on_the_fly", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--steps", "40", "--chains", "2", "--heldout", "15", "--out", str(tmp_path)])
    assert 0 < res["otf_labelled_fraction"] < 1
    assert res["heldout_rmse_kjmol_per_molecule_after"] < res["heldout_rmse_kjmol_per_molecule_before"]


def test_stable_resampling_keeps_memberships_when_labels_are_appended():
    from committee_calc.train.ridge import _stable_subsets

    a, b = _stable_subsets(20, 8, 0.7, seed=3), _stable_subsets(35, 8, 0.7, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(x, y[y < 20])          # earlier structures keep their members
    assert all(len(x) >= 1 for x in _stable_subsets(1, 8, 0.1, seed=0))


def test_bias_calibration_separates_the_error_floor_from_the_spread():
    """Residuals with spread-proportional part α=3 and a floor σ_b=1: the ratio estimate
    mixes both, the likelihood fit recovers them."""
    from committee_calc.train.ridge import _calibrate, _calibrate_with_bias, _stable_subsets

    rng = np.random.default_rng(0)
    n, M = 400, 8
    sig = rng.uniform(0.01, 1.0, n)
    P = rng.standard_normal((M, n)) * sig
    Y = 3.0 * sig * rng.standard_normal(n) + 1.0 * rng.standard_normal(n)
    subsets = _stable_subsets(n, M, 0.7, seed=0)
    alpha, floor = _calibrate_with_bias(Y, P, subsets)
    assert abs(alpha - 3.0) < 0.4 and abs(floor - 1.0) < 0.3
    assert _calibrate(Y, P, subsets) > alpha          # the floor inflates the one-parameter α


def test_ridge_committee_options_are_validated():
    with pytest.raises(Exception, match="resampling"):
        PairRidgeCommittee(["H", "O"], resampling="bootstrap")
    with pytest.raises(Exception, match="calibration"):
        PairRidgeCommittee(["H", "O"], calibration="isotonic")
    model = PairRidgeCommittee(["H", "O"], n_members=4, r_cut=4.0, n_basis=6, resampling="stable",
                               calibration="bias")
    structures = minima_set(6)
    E, F = reference_data(structures)
    model.fit(structures, E, F)
    assert model.alpha > 0 and model.bias_std >= 0
