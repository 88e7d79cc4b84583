"""The shipped Si demo data: consistent with its record, small, and honestly held out."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.io import read

DEMO = Path(__file__).resolve().parents[1] / "examples" / "si_demo"


def _frames(name):
    return read(DEMO / "data" / name, ":")


def _train_files():
    return [DEMO / "data" / "seed.extxyz"] + sorted((DEMO / "data").glob("active_*.extxyz"))


def test_labels_complete_and_record_matches_committee_yaml():
    spec = yaml.safe_load((DEMO / "committee.yaml").read_text())
    train = [a for f in _train_files() for a in read(f, ":")]
    for a in train + _frames("heldout.extxyz"):
        assert set(a.get_chemical_symbols()) == {"Si"}
        assert np.isfinite(a.info["REF_energy"])
        assert a.arrays["REF_forces"].shape == (len(a), 3)
        assert np.asarray(a.info["REF_stress"]).shape == (6,)
        assert a.info["config_type"]
    rec = spec["training"]
    assert rec["backend"] == "mace" and len(rec["members"]) == 4
    assert all(m["n_train"] == len(train) for m in rec["members"])
    assert len({m["seed"] for m in rec["members"]}) == 4
    assert len(list((DEMO / "models").glob("si_mace_*.model"))) == 4


def _key(a):
    return np.round(np.concatenate([a.positions.ravel(), a.cell.array.ravel()]), 4).tobytes()


def test_demo_candidates_and_heldout_never_trained_on():
    train = {_key(a) for f in _train_files() for a in read(f, ":")}
    cands = read(DEMO / "candidates.extxyz", ":")
    assert len(cands) == 8
    assert not train & {_key(a) for a in cands}
    assert not train & {_key(a) for a in _frames("heldout.extxyz")}


def test_shipped_folder_is_small():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 2.5e6, f"examples/si_demo is {total / 1e6:.2f} MB"


def test_heldout_errors_and_calibration_reproduce():
    pytest.importorskip("mace")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch

    torch.set_num_threads(1)
    from committee_calc.config import load_committee

    report = json.loads((DEMO / "data" / "heldout_errors.json").read_text())
    spec = yaml.safe_load((DEMO / "committee.yaml").read_text())
    for q in ("energy", "forces"):
        assert spec["calibration"][q] == pytest.approx(report["calibration"][q]["alpha"], abs=1e-3)
    committee = load_committee(DEMO / "committee.yaml")
    frames = _frames("heldout.extxyz")
    de = [(committee.predict([a])[0]["energy"] - a.info["REF_energy"]) / len(a) for a in frames]
    mae = 1e3 * float(np.mean(np.abs(de)))
    assert mae == pytest.approx(report["errors"]["energy_mae_meV_atom"], rel=1e-3, abs=1e-3)
