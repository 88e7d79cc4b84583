"""Retraining adapters: MACE committee trained with mace's own trainer, loaded from its YAML."""
import json

import numpy as np
import pytest
import yaml

from committee_calc.errors import ConfigError, StructureReadError
from committee_calc.train import make_retrainer, train_committee

TINY = {"num_channels": 8, "max_L": 0, "r_max": 4.0, "num_interactions": 2, "correlation": 2,
        "num_radial_basis": 4, "MLP_irreps": "4x0e", "radial_MLP": "[8]", "batch_size": 5}


def test_bad_training_inputs(tmp_path, si_train_file):
    with pytest.raises(ConfigError, match="no retraining adapter"):
        train_committee(si_train_file, tmp_path, backend="gaussian")
    with pytest.raises(StructureReadError, match="does not exist"):
        train_committee(tmp_path / "none.extxyz", tmp_path)
    with pytest.raises(ConfigError, match="one per member"):
        train_committee(si_train_file, tmp_path, n_members=3, seeds=[1, 2])
    with pytest.raises(ConfigError, match="energy key"):
        train_committee(si_train_file, tmp_path, energy_key="DFT_energy")
    with pytest.raises(ConfigError, match="set by train_committee"):
        train_committee(si_train_file, tmp_path / "x", n_members=1, max_epochs=1,
                        model_options={"seed": 3})


def test_train_one_epoch_bootstrap_and_load(tmp_path, si_train_file):
    pytest.importorskip("mace")
    from committee_calc.config import load_committee

    path = train_committee(si_train_file, tmp_path / "c", backend="mace", n_members=2,
                           seeds=[11, 12], bootstrap=True, max_epochs=1, model_options=TINY,
                           n_jobs=2)
    spec = yaml.safe_load(open(path))
    assert [m["path"] for m in spec["members"]] == ["mace_0.model", "mace_1.model"]
    recs = spec["training"]["members"]
    assert [r["seed"] for r in recs] == [11, 12]
    for k, r in enumerate(recs):
        assert sorted(set(r["bootstrap_indices"]) | set(r["oob_indices"])) == list(range(20))
        assert json.load(open(tmp_path / "c" / f"member_{k}" / "bootstrap.json"))["seed"] == r["seed"]
    assert recs[0]["bootstrap_indices"] != recs[1]["bootstrap_indices"]
    comm = load_committee(path)
    from ase.io import read

    a = read(si_train_file, index=0)
    a.calc = comm
    e = a.get_potential_energy()
    assert np.isfinite(e) and comm.results["energy_std"] > 0


@pytest.mark.slow
def test_retrain_three_members_thirty_structures(tmp_path):
    pytest.importorskip("mace")
    from tiny_models import labelled_si, write_extxyz

    data = write_extxyz(labelled_si(30, seed=5), tmp_path / "labels.extxyz")
    retrain = make_retrainer(backend="mace", out_dir=tmp_path / "rt", n_members=3, max_epochs=5,
                             model_options=TINY, n_jobs=2)
    comm = retrain(data)
    assert comm.n_members == 3 and retrain.last_yaml.endswith("round_000/committee.yaml")
    from ase.io import read

    frames = read(data, index=":")
    res = comm.predict(frames[:5])
    assert len(res) == 5 and all(np.isfinite(r["energy"]) for r in res)
    comm2 = retrain(data)  # a second round never overwrites the first
    assert retrain.last_yaml.endswith("round_001/committee.yaml") and comm2.n_members == 3


def test_nequip_config_from_label_store(tmp_path, si_train_file):
    from committee_calc.train.nequip import make_config

    cfg = make_config(si_train_file, tmp_path, 7, energy_key="REF_energy", forces_key="REF_forces",
                      max_epochs=3, model_options={"num_layers": 1})
    assert cfg["key_mapping"] == {"REF_energy": "total_energy", "REF_forces": "forces"}
    assert cfg["chemical_symbols"] == ["Si"] and cfg["n_train"] + cfg["n_val"] == 20
    assert cfg["seed"] == cfg["dataset_seed"] == 7 and cfg["num_layers"] == 1
    assert "StressForceOutput" in cfg["model_builders"]
    with pytest.raises(ConfigError, match="set by train_committee"):
        make_config(si_train_file, tmp_path, 7, energy_key="REF_energy", forces_key="REF_forces",
                    max_epochs=3, model_options={"seed": 1})


@pytest.mark.slow
def test_nequip_retrain_two_members(tmp_path, si_train_file):
    pytest.importorskip("nequip")
    from ase.io import read

    from committee_calc.config import load_committee

    path = train_committee(si_train_file, tmp_path / "nq", backend="nequip", n_members=2,
                           max_epochs=2, n_jobs=2,
                           model_options={"r_max": 4.0, "num_layers": 1, "num_features": 4})
    comm = load_committee(path)
    assert [m.backend for m in comm.members] == ["nequip", "nequip"]
    a = read(si_train_file, index=0)
    a.calc = comm
    assert np.isfinite(a.get_potential_energy()) and a.get_stress().shape == (6,)
    assert comm.results["energy_std"] > 0


@pytest.mark.slow
def test_schnetpack_retrain_two_members(tmp_path, si_train_file):
    pytest.importorskip("schnetpack")
    from ase.io import read

    from committee_calc.config import load_committee

    path = train_committee(si_train_file, tmp_path / "spk", backend="schnetpack", n_members=2,
                           max_epochs=2, n_jobs=2, bootstrap=True,
                           model_options={"cutoff": 4.0, "n_atom_basis": 8, "n_interactions": 1})
    assert yaml.safe_load(open(path))["members"][0]["species"] == ["Si"]
    comm = load_committee(path)
    a = read(si_train_file, index=0)
    a.calc = comm
    assert np.isfinite(a.get_potential_energy()) and comm.results["energy_std"] > 0


def test_schnetpack_bad_option(tmp_path, si_train_file):
    with pytest.raises(ConfigError, match="unknown schnetpack model options"):
        train_committee(si_train_file, tmp_path, backend="schnetpack", n_members=1,
                        max_epochs=1, model_options={"n_layers": 3})


def test_energy_only_training_jobs(tmp_path, si_train_file):
    """forces_key=None (energy-only labels) gives energy-only losses in every adapter."""
    from committee_calc.train import mace as tm
    from committee_calc.train import nequip as tn
    from committee_calc.train import schnetpack as ts
    from committee_calc.train._common import read_training_set

    assert len(read_training_set(si_train_file, "REF_energy", None)) == 20
    kw = dict(energy_key="REF_energy", forces_key=None, stress_key=None, max_epochs=1,
              model_options=None)
    argv = tm.member_job(si_train_file, tmp_path, 1, **kw)
    assert argv[argv.index("--forces_weight") + 1] == "0.0"
    cfg = tn.make_config(si_train_file, tmp_path, 1, energy_key="REF_energy", forces_key=None,
                         max_epochs=1)
    assert cfg["key_mapping"] == {"REF_energy": "total_energy"} and "forces" not in cfg["loss_coeffs"]
    ts.member_job(si_train_file, tmp_path, 1, **kw)
    assert json.load(open(tmp_path / "spk_job.json"))["forces_key"] is None
