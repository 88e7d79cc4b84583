"""Train NequIP (0.6.x) committee members with nequip's own trainer, then deploy them.

Each member is one process running ``nequip-train <config.yaml>`` followed by
``nequip-deploy build`` (both in-process in that child), with its own
``seed``/``dataset_seed``.  The deployed ``.pth`` is what
:class:`committee_calc.members.nequip.NequIPMember` loads.  CPU by default; on
a GPU pass ``device="cuda"`` (nequip picks the GPU itself when visible).

``model_options`` update the generated nequip config (any nequip 0.6 key),
e.g. ``{"r_max": 4.0, "num_layers": 2, "num_features": 16, "batch_size": 5}``.
Energies/forces are read from the label store keys via ``key_mapping``;
stress labels are not used for training (the model still predicts stress).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from ..errors import ConfigError
from ._common import install_model, python_exe

MODEL_SUFFIX = ".pth"
DEFAULT_EPOCHS = 100
_RESERVED = {"root", "run_name", "seed", "dataset_seed", "dataset_file_name", "max_epochs"}


def make_config(train_file, work_dir, seed, *, energy_key, forces_key, max_epochs,
                model_options=None, dtype="float64") -> dict:
    from ase.io import read

    frames = read(str(train_file), index=":")
    symbols = sorted({s for a in frames for s in a.get_chemical_symbols()})
    n_val = max(1, len(frames) // 10)
    cfg = {
        "root": str(work_dir), "run_name": "member", "seed": int(seed), "dataset_seed": int(seed),
        "append": False, "default_dtype": dtype, "model_dtype": dtype, "allow_tf32": False,
        "r_max": 5.0, "num_layers": 3, "l_max": 1, "parity": True, "num_features": 16,
        "model_builders": ["SimpleIrrepsConfig", "EnergyModel", "PerSpeciesRescale",
                           "StressForceOutput", "RescaleEnergyEtc"],
        "dataset": "ase", "dataset_file_name": str(train_file), "ase_args": {"format": "extxyz"},
        "include_keys": [k for k in (energy_key, forces_key) if k],
        "key_mapping": {k: v for k, v in ((energy_key, "total_energy"), (forces_key, "forces")) if k},
        "chemical_symbols": symbols, "n_train": len(frames) - n_val, "n_val": n_val,
        "batch_size": 5, "validation_batch_size": 5, "max_epochs": int(max_epochs),
        "learning_rate": 0.005, "loss_coeffs": {"forces": 1.0, "total_energy": [1.0, "PerAtomMSELoss"]},
        "metrics_components": [["forces", "mae"], ["total_energy", "mae", {"PerAtom": True}]],
        "optimizer_name": "Adam", "lr_scheduler_name": "none", "early_stopping_patiences": None,
        "verbose": "warning", "log_batch_freq": 1000000, "wandb": False,
    }
    if not forces_key:  # energies only
        cfg["loss_coeffs"] = {"total_energy": [1.0, "PerAtomMSELoss"]}
        cfg["metrics_components"] = [["total_energy", "mae", {"PerAtom": True}]]
    for k, v in (model_options or {}).items():
        if k in _RESERVED:
            raise ConfigError(f"model option {k!r} is set by train_committee; use its argument")
        cfg[k] = v
    return cfg


def member_job(train_file, work_dir, seed, *, energy_key, forces_key, stress_key,
               max_epochs, model_options, device="cpu", dtype="float64"):
    cfg = make_config(train_file, work_dir, seed, energy_key=energy_key, forces_key=forces_key,
                      max_epochs=max_epochs, model_options=model_options, dtype=dtype)
    path = Path(work_dir) / "nequip_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the child hides GPUs itself for a CPU run; this process's environment is not touched
    return [python_exe(), "-m", "committee_calc.train.nequip", str(path),
            str(Path(work_dir) / "member.pth"), device]


def collect_model(work_dir, dest) -> str:
    return install_model(Path(work_dir) / "member.pth", dest,
                         f"nequip training in {work_dir} finished without a deployed model")


def _run(config_path: str, out_path: str, device: str = "cpu") -> None:  # child process entry point
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    from nequip.scripts import deploy, train

    cfg = yaml.safe_load(Path(config_path).read_text())
    train.main(args=[config_path], running_as_script=True)
    run_dir = Path(cfg["root"]) / cfg["run_name"]
    deploy.main(args=["build", "--train-dir", str(run_dir), out_path])


if __name__ == "__main__":
    _run(*sys.argv[1:4])
