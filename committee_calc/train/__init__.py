"""Retraining adapters: train a committee with each framework's own trainer.

```python
from committee_calc.train import train_committee, make_retrainer
yaml_path = train_committee("labels.extxyz", "models/round1", backend="mace", n_members=4,
                            bootstrap=True, max_epochs=50, model_options={"num_channels": 32})
retrain = make_retrainer(backend="mace", out_dir="models", n_members=4)
committee = retrain("labels.extxyz")         # a CommitteeCalculator on the new models
```

Each member gets its own random seed; with ``bootstrap=True`` also its own
bootstrap subset of the training set.  The seeds and the bootstrap/out-of-bag
indices are recorded under ``training:`` in the written ``committee.yaml`` (and
in ``member_k/bootstrap.json``), so out-of-bag calibration is possible later.
Members are trained in separate processes (``n_jobs`` at a time).  Training
runs on CPU for small models; on a GPU pass ``device="cuda"``.
"""
from __future__ import annotations

from pathlib import Path

from ..config import load_committee, write_yaml_atomic
from ..errors import ConfigError
from . import _common

TRAINERS = {"mace": "committee_calc.train.mace", "nequip": "committee_calc.train.nequip",
            "schnetpack": "committee_calc.train.schnetpack"}


def _trainer(backend: str):
    import importlib

    if backend not in TRAINERS:
        raise ConfigError(f"no retraining adapter for backend {backend!r}; available: {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[backend])


def train_committee(train_file, out_dir, backend="mace", n_members=4, seeds=None, bootstrap=False,
                    energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress",
                    max_epochs=None, model_options=None, device="cpu", dtype="float64",
                    n_jobs=1, timeout_s=None, calibration=None) -> str:
    """Train ``n_members`` models on ``train_file``; write models + ``out_dir/committee.yaml``.

    Returns the path of the committee YAML.  ``stress_key`` is passed to the
    trainer when any structure carries it (None disables).
    """
    trainer = _trainer(backend)
    seeds = _common.member_seeds(n_members, seeds)
    frames = _common.read_training_set(train_file, energy_key, forces_key)
    if stress_key and not any(stress_key in a.info for a in frames):
        stress_key = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    epochs = trainer.DEFAULT_EPOCHS if max_epochs is None else int(max_epochs)
    if epochs < 1:
        raise ConfigError(f"max_epochs must be ≥ 1, got {max_epochs!r}")
    jobs, records = [], []
    for k, seed in enumerate(seeds):
        work = out / f"member_{k}"
        work.mkdir(exist_ok=True)
        rec = {"seed": seed, "n_train": len(frames)}
        data = str(Path(train_file).resolve())
        if bootstrap:
            idx, oob = _common.bootstrap_indices(len(frames), seed)
            data = _common.write_subset(frames, idx, work / "train.extxyz")
            rec.update(bootstrap_indices=idx, oob_indices=oob)
            _common.save_json(work / "bootstrap.json", {"seed": seed, "indices": idx, "oob": oob,
                                                       "train_file": str(train_file)})
        argv = trainer.member_job(data, work.resolve(), seed, energy_key=energy_key,
                                  forces_key=forces_key, stress_key=stress_key,
                                  max_epochs=epochs, model_options=model_options,
                                  device=device, dtype=dtype)
        jobs.append((argv, str(work), str(work / "train.log")))
        records.append(rec)
    _common.run_jobs(jobs, n_jobs=n_jobs, timeout_s=timeout_s)
    members = []
    for k, rec in enumerate(records):
        name = f"{backend}_{k}{trainer.MODEL_SUFFIX}"
        trainer.collect_model(out / f"member_{k}", out / name)
        entry = {"backend": backend, "path": name}
        if hasattr(trainer, "member_spec_extra"):
            entry.update(trainer.member_spec_extra(frames, model_options or {}))
        members.append(entry)
        rec["path"] = name
    spec = {"members": members}
    if calibration:
        spec["calibration"] = dict(calibration)
    spec["training"] = {"backend": backend, "train_file": str(Path(train_file).resolve()),
                        "energy_key": energy_key, "forces_key": forces_key,
                        "stress_key": stress_key, "max_epochs": epochs, "bootstrap": bool(bootstrap),
                        "model_options": dict(model_options or {}), "members": records}
    path = out / "committee.yaml"
    write_yaml_atomic(path, spec)
    return str(path)


def make_retrainer(backend="mace", out_dir="retrain", **options):
    """A callable ``retrain(label_file) -> CommitteeCalculator``.

    Round ``r`` trains into ``out_dir/round_{r:03d}/`` (never overwriting an
    earlier committee) and loads the committee from the new YAML.
    ``options`` are those of :func:`train_committee`.
    """
    _trainer(backend)
    out_dir = Path(out_dir)

    def retrain(label_file):
        out_dir.mkdir(parents=True, exist_ok=True)
        done = sorted(p for p in out_dir.glob("round_*") if (p / "committee.yaml").exists())
        rnd = out_dir / f"round_{len(done):03d}"
        yaml_path = train_committee(label_file, rnd, backend=backend, **options)
        retrain.last_yaml = yaml_path
        return load_committee(yaml_path)

    retrain.last_yaml = None
    retrain.backend = backend
    retrain.out_dir = str(out_dir)
    return retrain


__all__ = ["train_committee", "make_retrainer", "TRAINERS"]
