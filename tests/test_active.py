"""Active-learning loop + re-ranking end to end on a 200-structure synthetic landscape.

Landscape: rattled/strained fcc Cu cells; baseline = Lennard-Jones, reference =
EMT; committee = ridge resampling committee of pair-basis potentials (in-process).
"""
import csv

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from committee_calc.active.learner import ActiveLearner, committee_results, training_frames
from committee_calc.active.rerank import rerank
from committee_calc.analysis.landscape import make_landscape
from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError, NonFiniteOutputError
from committee_calc.labels import LabelStore
from committee_calc.members.base import Member
from committee_calc.train.ridge import PairRidgeCommittee, RidgeTrainer

CALLS = {"n": 0, "kill_at": None}


class KillableEMT(EMT):
    """EMT that counts calls globally (the reference deep-copies it) and can 'die'."""

    def calculate(self, *a, **kw):
        CALLS["n"] += 1
        if CALLS["kill_at"] is not None and CALLS["n"] >= CALLS["kill_at"]:
            CALLS["kill_at"] = None
            raise KeyboardInterrupt("simulated kill")
        super().calculate(*a, **kw)


def synthetic_landscape(n=200, seed=0, baseline=True):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.55 + 0.15 * rng.random(), cubic=True)
        a.rattle(0.02 + 0.1 * rng.random(), seed=int(rng.integers(1e9)))
        a.info["name"] = f"s{k:03d}"
        if baseline:
            b = a.copy()
            b.calc = LennardJones(sigma=2.33, epsilon=0.4, rc=5.0, smooth=True)
            a.info["baseline_energy"] = b.get_potential_energy()
            a.arrays["baseline_forces"] = b.get_forces()
        out.append(a)
    return out


@pytest.fixture(scope="module")
def landscape():
    return make_landscape(synthetic_landscape(), molecules=None)


def _learner(ls, out, **kw):
    opts = dict(strategy="highest_uncertainty", quantity="dE", batch_size=8, threshold_eV=0.0012,
                energy_cutoff_eV=0.3, target_fraction=0.1, max_train_size=60, seed=0)
    opts.update(kw)
    return ActiveLearner(ls, KillableEMT(), RidgeTrainer(["Cu"], n_members=6, n_basis=8, r_cut=4.5), out, **opts)


def test_loop_resume_and_rerank(landscape, tmp_path):
    out = tmp_path / "al"
    CALLS.update(n=0, kill_at=13)          # die in the middle of the second batch
    with pytest.raises(KeyboardInterrupt):
        _learner(landscape, out).run()
    before = LabelStore(out / "labels.extxyz").read()
    assert len(before) == 12                # 8 initial + 4 of the next batch, all kept
    CALLS["n"] = 0
    res = _learner(landscape, out).run()
    labels = LabelStore(out / "labels.extxyz").read()
    idx = [int(f.info["prov_pool_index"]) for f in labels]
    assert len(idx) == len(set(idx)), "a structure was labelled twice"
    assert CALLS["n"] == len(labels) - 12   # no relabelling after the kill
    assert res["stopped"] in ("converged", "max_train_size", "pool_empty")
    assert res["n_train"] == len(labels) and len(labels) <= 60
    last = res["history"][-1]
    if res["stopped"] == "converged":
        assert last["fraction_above"] <= 0.1
    # Δ targets are real: reference minus baseline
    tf = training_frames(labels[:3], "dE")
    for f, t in zip(labels[:3], tf):
        assert t.info["AL_energy"] == pytest.approx(f.info["REF_energy"] - f.info["BASE_energy"])
    # labels come from the one labeller: reference energy + forces, with provenance
    assert all("REF_forces" in f.arrays and f.info["prov_reference_hash"] for f in labels)
    assert {f.info["prov_driver"] for f in labels} == {"active_learn"}
    # rerun of a finished run does nothing new
    CALLS["n"] = 0
    again = _learner(landscape, out).run()
    assert CALLS["n"] == 0 and again["stopped"] == res["stopped"]

    # re-rank everything with a σ cap: reference calls only above the cap, never repeated
    committee = again["committee"]
    cap = 0.003
    CALLS["n"] = 0
    rr = rerank(landscape, committee, tmp_path / "rr", reference=KillableEMT(), sigma_cap_eV=cap, delta=True,
                experimental=["s000"])
    capped = rr["sigma"] > cap
    assert CALLS["n"] == rr["n_reference"] == capped.sum() > 0
    assert np.all(rr["source"][capped] == "reference") and np.all(rr["source"][~capped] == "committee")
    for i in np.flatnonzero(capped)[:3]:
        a = landscape.structures[i].copy()
        a.calc = EMT()
        assert rr["final"][i] == pytest.approx(a.get_potential_energy() / len(a))
    rows = list(csv.DictReader(open(tmp_path / "rr" / "reranked.csv")))
    assert len(rows) == 200 and rows[0]["rank_after"] == "0"
    assert sorted(int(r["rank_after"]) for r in rows) == list(range(200))
    assert (tmp_path / "rr" / "landscape.png").stat().st_size > 0
    assert (tmp_path / "rr" / "reranked.extxyz").exists()
    # the capped structures are labels of the gate's labeller in <out>/labels.extxyz
    rlabels = LabelStore(tmp_path / "rr" / "labels.extxyz").read()
    assert sorted(int(f.info["prov_index"]) for f in rlabels) == np.flatnonzero(capped).tolist()
    assert {f.info["prov_driver"] for f in rlabels} == {"rerank"}
    # Δ-learning: the labels carry the landscape's baseline values (BASE_energy) for retraining
    for f in rlabels:
        i = int(f.info["prov_index"])
        assert f.info["BASE_energy"] == pytest.approx(landscape.baseline_energy[i])
    calls = list(csv.DictReader(open(tmp_path / "rr" / "reference_calls.csv")))
    assert [int(r["index"]) for r in calls] == np.flatnonzero(capped).tolist()
    # a rerun resumes from the label store alone: no reference call, same result and log
    (tmp_path / "rr" / "reference_calls.csv").unlink()
    CALLS["n"] = 0
    rr2 = rerank(landscape, committee, tmp_path / "rr", reference=KillableEMT(), sigma_cap_eV=cap, delta=True)
    assert CALLS["n"] == 0 == rr2["n_reference"] and np.allclose(rr2["final"], rr["final"])
    assert list(csv.DictReader(open(tmp_path / "rr" / "reference_calls.csv"))) == calls


def test_bad_input(landscape, tmp_path):
    nobase = make_landscape(synthetic_landscape(20, baseline=False), molecules=None)
    with pytest.raises(ConfigError, match="baseline"):
        _learner(nobase, tmp_path / "a", energy_cutoff_eV=None, quantity="dE")
    with pytest.raises(ConfigError, match="baseline"):
        _learner(nobase, tmp_path / "b", quantity="E")           # cutoff needs baselines too
    with pytest.raises(ConfigError, match="no candidate|only"):
        _learner(landscape, tmp_path / "c", energy_cutoff_eV=0.0)
    for bs in (0, -3):
        with pytest.raises(ConfigError, match="batch size"):
            _learner(landscape, tmp_path / "d", batch_size=bs)
    with pytest.raises(ConfigError, match="quantity"):
        _learner(landscape, tmp_path / "e", quantity="F")


class NaNMember(Member):
    """Energy k·N·10 meV, zero forces; NaN for structures marked ``info["bad"]``."""

    backend = "nan"

    def __init__(self, k):
        super().__init__(name=f"nan{k}")
        self.k = k

    def predict(self, atoms, properties):
        e = np.nan if atoms.info.get("bad") else 0.01 * self.k * len(atoms)
        return {"energy": e, "forces": np.zeros((len(atoms), 3))}


def test_nonfinite_committee_output_is_infinitely_uncertain(tmp_path):
    structs = synthetic_landscape(5, seed=4)
    structs[2].info["bad"] = True
    ls = make_landscape(structs, molecules=None)
    committee = CommitteeCalculator([NaNMember(0), NaNMember(1)])
    coms = committee_results(committee, ls.structures)
    assert coms[2] is None and all(c is not None for k, c in enumerate(coms) if k != 2)
    learner = _learner(ls, tmp_path / "al", energy_cutoff_eV=None)
    e, s, f = learner.predict(range(5), committee)
    assert s[2] == np.inf and np.isnan(e[2]) and np.all(np.isfinite(s[[0, 1, 3, 4]]))
    # rerank: without a reference the gate refuses; with one, the structure is labelled
    with pytest.raises(NonFiniteOutputError):
        rerank(ls, committee, tmp_path / "r0", plot=False)
    CALLS.update(n=0, kill_at=None)
    rr = rerank(ls, committee, tmp_path / "r1", reference=KillableEMT(), plot=False)
    assert CALLS["n"] == rr["n_reference"] == 1 and rr["source"].tolist()[2] == "reference"
    assert np.isfinite(rr["final"]).all() and rr["sigma"][2] == np.inf


def test_rerank_cap_uses_the_landscape_molecule_count(tmp_path):
    """The σ cap is per molecule with the landscape's own count (info n_molecules), not a guess."""
    structs = synthetic_landscape(16, seed=5)
    for k, a in enumerate(structs):
        a.info["n_molecules"] = 1 + k % 2
    ls = make_landscape(structs, molecules="auto")
    assert ls.unit == "molecule" and set(ls.n_units) == {1.0, 2.0}
    train = structs[:6]
    energies = []
    for a in train:
        b = a.copy()
        b.calc = EMT()
        energies.append(b.get_potential_energy())
    committee = PairRidgeCommittee(["Cu"], n_members=4, n_basis=6, r_cut=4.5).fit(train, energies).as_committee()
    first = rerank(ls, committee, tmp_path / "a", plot=False)
    cap = float(np.median(first["sigma"]))
    CALLS.update(n=0, kill_at=None)
    rr = rerank(ls, committee, tmp_path / "b", reference=KillableEMT(), sigma_cap_eV=cap, plot=False)
    capped = first["sigma"] > cap
    assert 0 < capped.sum() < len(ls) and CALLS["n"] == capped.sum()
    assert (rr["source"] == "reference").tolist() == capped.tolist()


def test_duplicate_geometries_share_one_label(tmp_path):
    """Labelled means 'geometry in the label store': a copy in the landscape is labelled too,
    and labelling it again costs no reference call (the labeller de-duplicates)."""
    structs = synthetic_landscape(4, seed=6)
    structs[3] = structs[0].copy()
    structs[3].info["name"] = "copy_of_s000"
    ls = make_landscape(structs, molecules=None)
    learner = _learner(ls, tmp_path / "al", energy_cutoff_eV=None)
    CALLS.update(n=0, kill_at=None)
    learner._label(0, 0)
    assert sorted(learner.labelled()) == [0, 3] and CALLS["n"] == 1
    assert learner._label(3, 0).duplicate and CALLS["n"] == 1
    assert len(learner.store) == 1
