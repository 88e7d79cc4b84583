"""--retrain-every through a driver: the committee YAML's ``training:`` section (written by
train_committee) is enough; each retraining fine-tunes the current committee on seed set + labels."""
from __future__ import annotations

from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from committee_calc.labels import LabelStore
from committee_calc.train import train_committee
from drivers.npt_md import main as md_main


def _seed(path):
    frames = []
    for i in range(6):
        a = bulk("Cu", "fcc", 3.61, cubic=True)
        a.rattle(0.03, seed=i)
        a.calc = EMT()
        a.info["REF_energy"], a.arrays["REF_forces"] = a.get_potential_energy(), a.get_forces()
        a.calc = None
        frames.append(a)
    write(path, frames)


def test_md_retrain_every_fine_tunes_the_committee_of_the_yaml(tmp_path):
    _seed(tmp_path / "seed.extxyz")
    committee = train_committee(tmp_path / "seed.extxyz", tmp_path / "committee", backend="ridge",
                                n_members=4, bootstrap=True,
                                model_options={"r_cut": 4.5, "n_basis": 8, "ridge": 1e-6})
    (tmp_path / "ref.yaml").write_text("calculator: ase.calculators.emt.EMT\nparameters: {}\n")
    start = bulk("Cu", "fcc", 3.61, cubic=True).repeat((2, 2, 2))
    write(tmp_path / "start.extxyz", start)
    argv = [str(tmp_path / "start.extxyz"), "--committee", committee, "--out", str(tmp_path / "md"),
            "--mode", "online", "--ensemble", "nvt", "--temperature-K", "900", "--steps", "30",
            "--reference", str(tmp_path / "ref.yaml"), "--labels", str(tmp_path / "labels.extxyz"),
            "--threshold-forces-std-max-eVA", "0.02", "--retrain-every", "2", "--select", "none"]
    assert md_main(argv) == 0
    n = len(LabelStore(tmp_path / "labels.extxyz"))
    rounds = sorted((tmp_path / "md" / "retrain").glob("labels_*/committee.yaml"))
    assert n >= 2 and len(rounds) == n // 2
    # every round trained on the seed set plus the labels so far
    first = rounds[0].parent / "train.extxyz"
    assert first.read_text().count("REF_energy") == 6 + 2
    # a rerun of the finished command changes nothing and trains nothing
    before = sorted(p.name for p in (tmp_path / "md" / "retrain").iterdir())
    assert md_main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "md" / "retrain").iterdir()) == before
    assert len(LabelStore(tmp_path / "labels.extxyz")) == n


def test_retrain_every_needs_a_training_section(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("members:\n  - {backend: ase, calculator: ase.calculators.emt.EMT}\n"
                                     "  - {backend: ase, calculator: ase.calculators.emt.EMT, "
                                     "parameters: {asap_cutoff: true}}\n")
    (tmp_path / "ref.yaml").write_text("calculator: ase.calculators.emt.EMT\nparameters: {}\n")
    write(tmp_path / "start.extxyz", bulk("Cu", cubic=True))
    rc = md_main([str(tmp_path / "start.extxyz"), "--committee", str(tmp_path / "c.yaml"),
                  "--out", str(tmp_path / "md"), "--mode", "online", "--steps", "5",
                  "--reference", str(tmp_path / "ref.yaml"), "--labels", str(tmp_path / "l.extxyz"),
                  "--threshold-forces-std-max-eVA", "0.02", "--retrain-every", "2"])
    assert rc == 2 and "training:" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "md").exists() and not (tmp_path / "l.extxyz").exists()
