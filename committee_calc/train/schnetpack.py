"""Train SchNetPack 2.x committee members with SchNetPack's own training stack.

Each member is one child process that builds an ``ASEAtomsData`` database from
the extxyz labels, an ``AtomsDataModule`` (seeded split), a PaiNN (default) or
SchNet ``NeuralNetworkPotential`` and an ``AtomisticTask``, and trains it with
the PyTorch-Lightning ``Trainer`` and SchNetPack's ``ModelCheckpoint`` (the
same pieces ``spktrain`` wires from its hydra configs).  The best model file
is what :class:`committee_calc.members.schnetpack.SchNetPackMember` loads.
CPU by default; ``device="cuda"`` trains on a GPU (Lightning ``accelerator``).

``model_options``: ``representation`` ("painn" | "schnet"), ``cutoff`` [Å],
``n_atom_basis``, ``n_interactions``, ``n_rbf``, ``batch_size``, ``lr``,
``forces_weight`` (energy weight is 1 − forces_weight).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ._common import install_model, python_exe

MODEL_SUFFIX = ".pt"
DEFAULT_EPOCHS = 100
_DEFAULTS = {"representation": "painn", "cutoff": 5.0, "n_atom_basis": 32, "n_interactions": 3,
             "n_rbf": 20, "batch_size": 5, "lr": 5e-4, "forces_weight": 0.99}


def member_job(train_file, work_dir, seed, *, energy_key, forces_key, stress_key,
               max_epochs, model_options, device="cpu", dtype="float64"):
    opts = dict(_DEFAULTS)
    unknown = set(model_options or {}) - set(_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown schnetpack model options {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    opts.update(model_options or {})
    if opts["representation"] not in ("painn", "schnet"):
        raise ConfigError(f"representation must be 'painn' or 'schnet', got {opts['representation']!r}")
    job = dict(opts, train_file=str(train_file), work_dir=str(work_dir), seed=int(seed),
               energy_key=energy_key, forces_key=forces_key, max_epochs=int(max_epochs),
               device=device, dtype=dtype)
    path = Path(work_dir) / "spk_job.json"
    path.write_text(json.dumps(job, indent=1))
    return [python_exe(), "-m", "committee_calc.train.schnetpack", str(path)]


def member_spec_extra(frames, model_options) -> dict:
    """SchNetPack files carry no element list: record the trained species in the YAML."""
    return {"species": sorted({s for a in frames for s in a.get_chemical_symbols()})}


def collect_model(work_dir, dest) -> str:
    return install_model(Path(work_dir) / "best_model", dest,
                         f"schnetpack training in {work_dir} finished without best_model")


def _run(job_path: str) -> None:  # child process entry point
    import numpy as np
    import pytorch_lightning as pl
    import schnetpack as spk
    import schnetpack.transform as trn
    import torch
    from ase.io import read

    job = json.loads(Path(job_path).read_text())
    work = Path(job["work_dir"])
    pl.seed_everything(job["seed"], workers=True)
    frames = read(job["train_file"], index=":")
    db = work / "train.db"
    if db.exists():
        db.unlink()
    data = spk.data.ASEAtomsData.create(str(db), distance_unit="Ang",
                                        property_unit_dict={"energy": "eV", "forces": "eV/Ang"})
    fkey = job["forces_key"]
    props = [{"energy": np.array([a.info[job["energy_key"]]], dtype=float),
              "forces": (np.array(a.arrays[fkey], dtype=float) if fkey
                         else np.zeros((len(a), 3)))} for a in frames]
    data.add_systems(props, frames)
    n_val = max(1, len(frames) // 10)
    cutoff = float(job["cutoff"])
    dm = spk.data.AtomsDataModule(
        str(db), batch_size=int(job["batch_size"]), num_train=len(frames) - n_val, num_val=n_val,
        split_file=str(work / "split.npz"), num_workers=0, pin_memory=False,
        transforms=[trn.ASENeighborList(cutoff=cutoff), trn.RemoveOffsets("energy", remove_mean=True),
                    trn.CastTo64() if job["dtype"] == "float64" else trn.CastTo32()])
    dm.prepare_data()
    dm.setup()
    radial = spk.nn.GaussianRBF(n_rbf=int(job["n_rbf"]), cutoff=cutoff)
    cls = spk.representation.PaiNN if job["representation"] == "painn" else spk.representation.SchNet
    rep = cls(n_atom_basis=int(job["n_atom_basis"]), n_interactions=int(job["n_interactions"]),
              radial_basis=radial, cutoff_fn=spk.nn.CosineCutoff(cutoff))
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=int(job["n_atom_basis"]), output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
        postprocessors=[trn.CastTo64(), trn.AddOffsets("energy", add_mean=True)])
    if job["dtype"] == "float64":
        model = model.double()
    wf = float(job["forces_weight"]) if fkey else 0.0  # energies only: zero force weight
    import torchmetrics

    outputs = [spk.task.ModelOutput(name, loss_fn=torch.nn.MSELoss(), loss_weight=w,
                                    metrics={"MAE": torchmetrics.MeanAbsoluteError()})
               for name, w in (("energy", 1.0 - wf), ("forces", wf))]
    task = spk.task.AtomisticTask(model=model, outputs=outputs, optimizer_cls=torch.optim.AdamW,
                                  optimizer_args={"lr": float(job["lr"])})
    trainer = pl.Trainer(
        max_epochs=int(job["max_epochs"]), default_root_dir=str(work), logger=False,
        accelerator="gpu" if str(job["device"]).startswith("cuda") else "cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[spk.train.ModelCheckpoint(model_path=str(work / "best_model"),
                                             monitor="val_loss", save_top_k=1)])
    trainer.fit(task, datamodule=dm)


if __name__ == "__main__":
    _run(sys.argv[1])
