"""Record-then-select for MD frames, labelling once, the committee-md driver, CSV and figure."""
import json

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from committee_calc.labeller import Labeller
from committee_calc.labels import LabelStore
from committee_calc.md.dynamics import CSV_COLUMNS
from committee_calc.md.select import Selection, label_frames, select_frames
from drivers.npt_md import main

COMMITTEE = """members:
  - {backend: ase, calculator: ase.calculators.emt.EMT}
  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {asap_cutoff: true}}
"""
REFERENCE = "calculator: ase.calculators.emt.EMT\nparameters: {}\n"


def frames_with(sigmas, decisions=None):
    out = []
    for i, s in enumerate(sigmas):
        a = bulk("Cu", cubic=True)
        a.positions[0, 0] += 0.01 * i
        a.info.update(step=10 * i, committee_forces_std_max=s,
                      gate_decision=(decisions or {}).get(i, "committee"))
        out.append(a)
    return out


def test_select_top_k_within_trust_window():
    s = [0.05, 0.30, 0.12, 0.90, 0.22, 0.01, 0.18, np.nan]
    frames = frames_with(s, decisions={4: "reference"})
    assert select_frames(frames, method="highest", n_max=3) == [7, 3, 1]  # NaN counts as +inf
    # lower: trusted below; upper: unphysical above; frame 4 was labelled online already
    got = select_frames(frames, method="highest", n_max=3, lower=0.1, upper=0.5)
    assert got == [1, 6, 2]
    win = select_frames(frames, method="window", n_max=10, lower=0.1, upper=0.5)
    assert win == [1, 2, 6]
    rnd = select_frames(frames, method="random", n_max=2, lower=0.1, upper=0.5, seed=4)
    assert len(rnd) == 2 and set(rnd) <= {1, 2, 6}
    X = np.array([[0.0], [0.0], [5.0], [9.0], [1.0], [0.0], [0.1], [3.0]])
    fps = select_frames(frames, method="fps", n_max=2, lower=0.1, upper=0.5, descriptors=X)
    assert fps == [1, 2]  # seeded by the most uncertain, then the farthest in descriptor space
    assert select_frames(frames, method="highest", n_max=3, lower=5.0) == [7]  # only the NaN frame
    assert select_frames(frames, method="highest", n_max=3, lower=5.0, upper=10.0) == []


def test_label_frames_appends_each_once(tmp_path):
    from ase.calculators.emt import EMT

    frames = frames_with([0.1, 0.2, 0.3])
    store = LabelStore(tmp_path / "labels.extxyz")
    first = Labeller(EMT(), store, provenance={"driver": "md"})
    done = label_frames(frames, [2, 0], first, provenance={"mode": "record"})
    assert done == {20: 0, 0: 1} and len(store) == 2 and first.n_reference_calls == 2
    # a killed selection rerun by a new process: the labeller finds the labelled frames
    rerun = Labeller(EMT(), LabelStore(tmp_path / "labels.extxyz"), provenance={"driver": "md"})
    again = label_frames(frames, [2, 0, 1], rerun)
    assert again == {20: 0, 0: 1, 10: 2} and len(store) == 3
    assert rerun.n_reference_calls == 1 and rerun.n_duplicates == 2  # only the new frame computed
    labels = store.read()
    assert [int(f.info["prov_step"]) for f in labels] == [20, 0, 10]
    assert labels[0].info["prov_mode"] == "record" and labels[0].info["prov_driver"] == "md"
    assert labels[0].info["committee_forces_std_max"] == pytest.approx(0.3)
    ref = frames[2].copy()
    ref.calc = EMT()
    assert labels[0].info["REF_energy"] == pytest.approx(ref.get_potential_energy())
    assert np.allclose(labels[0].arrays["REF_forces"], ref.get_forces())


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "committee.yaml").write_text(COMMITTEE)
    (tmp_path / "ref.yaml").write_text(REFERENCE)
    bulk("Cu", cubic=True).repeat((2, 2, 1)).write(tmp_path / "cu.xyz")
    return tmp_path


def test_driver_record_select_label_plot(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    args = ["cu.xyz", "--committee", "committee.yaml", "--reference", "ref.yaml", "--labels",
            "labels.extxyz", "--mode", "record", "--steps", "30", "--timestep-fs", "2",
            "--temperature-K", "200:500", "--pressure-GPa", "0.5", "--write-interval", "3",
            "--select", "highest", "--n-select", "4", "--out", "run"]
    assert main(args) == 0
    frames = read("run/md_trajectory.extxyz", ":")
    sigma = np.array([f.info["committee_forces_std_max"] for f in frames])
    top = sorted(int(frames[i].info["step"]) for i in np.argsort(-sigma)[:4])
    sel = json.loads((workdir / "run" / "md_selection.json").read_text())
    assert sorted(sel["selected_steps"]) == top
    store = LabelStore("labels.extxyz")
    assert len(store) == 4
    labels = store.read()
    assert sorted(int(f.info["prov_step"]) for f in labels) == top
    assert {int(k): v for k, v in sel["labelled"].items()} == {
        int(f.info["prov_step"]): i for i, f in enumerate(labels)}
    # labelled through the one labeller: reference name and settings hash travel with each label
    assert all(f.info["prov_reference"] == "ase.calculators.emt.EMT" and f.info["prov_reference_hash"] for f in labels)
    assert all(f.info["prov_mode"] == "record" and f.info["prov_selection"] == "highest"
               for f in labels)
    assert main(args) == 0  # rerun: nothing new, no duplicated labels
    assert len(LabelStore("labels.extxyz")) == 4
    (workdir / "run" / "md_selection.json").unlink()  # even without the record: de-duplicated
    assert main(args) == 0 and len(LabelStore("labels.extxyz")) == 4
    header = (workdir / "run" / "md_log.csv").read_text().splitlines()[0].split(",")
    assert header == list(CSV_COLUMNS) and len((workdir / "run" / "md_log.csv").read_text().splitlines()) == 32
    png = workdir / "run" / "uncertainty_trace.png"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert png.stat().st_size > 20_000 and img.shape[0] > 300 and img[..., :3].std() > 0.05


def test_driver_online_gate_labels_once_after_kill(workdir, monkeypatch):
    from committee_calc.md.dynamics import CommitteeMD

    monkeypatch.chdir(workdir)
    base = ["cu.xyz", "--committee", "committee.yaml", "--reference", "ref.yaml", "--mode", "online",
            "--threshold-forces-std-max-eVA", "0.004", "--temperature-K", "400", "--timestep-fs", "2",
            "--write-interval", "10"]
    assert main(base + ["--labels", "a.extxyz", "--steps", "30", "--out", "a"]) == 0
    n_ref = len(LabelStore("a.extxyz"))
    assert n_ref > 0
    # the same run killed at step 17, then rerun by the driver
    orig = CommitteeMD.run
    monkeypatch.setattr(CommitteeMD, "run", lambda self, n, stop_after=None: orig(self, n, stop_after=17))
    assert main(base + ["--labels", "b.extxyz", "--steps", "30", "--out", "b"]) == 0
    monkeypatch.setattr(CommitteeMD, "run", orig)
    assert main(base + ["--labels", "b.extxyz", "--steps", "30", "--out", "b"]) == 0
    lb = LabelStore("b.extxyz").read()
    assert len(lb) == n_ref
    assert len({f.info["label_hash"] for f in lb}) == n_ref
    la = (workdir / "a" / "md_log.csv").read_text()
    assert la == (workdir / "b" / "md_log.csv").read_text()


def test_driver_errors(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    base = ["--committee", "committee.yaml", "--steps", "5", "--out", "run"]
    assert main(["cu.xyz", *base, "--temperature-K", "0"]) == 2
    assert main(["cu.xyz", *base, "--timestep-fs", "-1"]) == 2
    assert main(["cu.xyz", *base, "--select", "none"]) == 0
    # record mode runs the same gate without thresholds: thresholds are refused, caps stop it
    assert main(["cu.xyz", *base, "--threshold-forces-std-max-eVA", "0.1"]) == 2
    assert "online only" in capsys.readouterr().err
    assert main(["cu.xyz", "--committee", "committee.yaml", "--steps", "20", "--out", "capped",
                 "--temperature-K", "400", "--cap-forces-std-max-eVA", "1e-4"]) == 3
    assert (workdir / "capped" / "md_unphysical.extxyz").exists()
    assert "hard cap" in read("capped/md_unphysical.extxyz").info["stop_reason"]
    bulk("Al", cubic=True).repeat((2, 2, 1)).write(workdir / "al.xyz")
    assert main(["al.xyz", *base, "--select", "none"]) == 2
    assert "different system" in capsys.readouterr().err


def test_driver_validates_before_writing(workdir, monkeypatch, capsys):
    """Selection settings, --labels without --reference and unknown species fail before any output."""
    monkeypatch.chdir(workdir)
    base = ["cu.xyz", "--committee", "committee.yaml", "--steps", "5"]
    for extra, msg in ((["--n-select", "0"], "n_max"),
                       (["--lower-trust", "0.5", "--upper-trust", "0.1"], "upper trust"),
                       (["--labels", "l.extxyz"], "--reference"),
                       (["--mode", "online", "--retrain-every", "2"], "training")):
        assert main([*base, *extra, "--out", "bad"]) == 2
        assert msg in capsys.readouterr().err
        assert not (workdir / "bad").exists() and not (workdir / "l.extxyz").exists()
    (workdir / "cu_only.yaml").write_text(COMMITTEE.replace("EMT}", "EMT, species: [Cu]}"))
    bulk("Al", cubic=True).repeat((2, 2, 1)).write(workdir / "al.xyz")
    assert main(["al.xyz", "--committee", "cu_only.yaml", "--steps", "5", "--out", "bad"]) == 2
    assert "Al" in capsys.readouterr().err and not (workdir / "bad").exists()


def test_run_md_takes_one_gate(tmp_path):
    from ase.calculators.emt import EMT

    from committee_calc.config import load_committee
    from committee_calc.errors import ConfigError
    from committee_calc.gate import Gate
    from committee_calc.md.runner import run_md

    (tmp_path / "c.yaml").write_text(COMMITTEE)
    committee = load_committee(tmp_path / "c.yaml")
    atoms = bulk("Cu", cubic=True).repeat((2, 2, 1))
    with pytest.raises(ConfigError, match="Gate"):
        run_md(atoms, committee, tmp_path / "x", 5)
    online = Gate(committee, EMT(), thresholds={"forces_std_max": 0.1})
    with pytest.raises(ConfigError, match="online only"):
        run_md(atoms, online, tmp_path / "x", 5, mode="record")
    assert not (tmp_path / "x").exists()
    run = run_md(atoms, Gate(committee), tmp_path / "ok", 4, mode="record", write_interval=2,
                 selection=Selection("highest", n_max=2))
    assert not run.stopped and len(run.selected_steps) == 2 and run.labelled == {}
    assert run.label_store is None and (tmp_path / "ok" / "uncertainty_trace.png").exists()


def test_select_by_any_measure_of_the_table():
    """Selection reads every measure of measures.MEASURES from the recorded uncertainties, e.g. the
    mean per-atom force spread, computed from the frames' per-atom arrays."""
    frames = []
    for i, s in enumerate([0.1, 0.4, 0.2]):
        a = bulk("Cu", cubic=True)
        a.info.update(step=i)
        a.arrays["committee_forces_std_atom"] = np.full(len(a), s) * (1 + 0.1 * np.arange(len(a)))
        frames.append(a)
    assert select_frames(frames, measure="forces_std_mean", method="highest", n_max=2) == [1, 2]
    with pytest.raises(Exception, match="carry no committee uncertainty"):
        select_frames(frames, measure="energy_std", method="highest", n_max=1)
