"""Retraining adapters: train a committee with each framework's own trainer.

```python
from committee_calc.train import train_committee, make_retrainer
yaml_path = train_committee("labels.extxyz", "models/round1", backend="mace", n_members=4,
                            bootstrap=True, max_epochs=50, model_options={"num_channels": 32})
retrain = make_retrainer(backend="mace", out_dir="models", n_members=4)
committee = retrain("labels.extxyz")         # a CommitteeCalculator on the new models
fine_tune_committee(yaml_path, "more.extxyz", "models/ft")   # each member from its weights
```

Backends: ``mace``, ``nequip``, ``schnetpack``, ``chgnet`` (one training process per member;
``chgnet`` fine-tunes the pretrained CHGNet weights, float32 only) and
``ridge`` (the pair-ridge committee of :mod:`.ridge`, fitted in this process in seconds; its
members are written inline as ``backend: ase`` entries).  The ``training:`` section of the
written YAML holds everything a later fine-tune needs (:func:`fine_tune_committee`).

Each member gets its own random seed; with ``bootstrap=True`` also its own
bootstrap subset of the training set.  The seeds and the bootstrap/out-of-bag
indices are recorded under ``training:`` in the written ``committee.yaml`` (and
in ``member_k/bootstrap.json``), so out-of-bag calibration is possible later.
Members are trained in separate processes (``n_jobs`` at a time).  Training
runs on CPU for small models; on a GPU pass ``device="cuda"``.
"""
from __future__ import annotations

from pathlib import Path

from ..config import load_committee, read_yaml, write_yaml_atomic
from ..delta import add_baseline, build_baseline, delta_labels
from ..errors import ConfigError, StructureReadError
from ..members import expand_paths
from . import _common

TRAINERS = {"mace": "committee_calc.train.mace", "nequip": "committee_calc.train.nequip",
            "schnetpack": "committee_calc.train.schnetpack", "ridge": "committee_calc.train.ridge",
            "chgnet": "committee_calc.train.chgnet"}


def _trainer(backend: str):
    import importlib

    if backend not in TRAINERS:
        raise ConfigError(f"no retraining adapter for backend {backend!r}; available: {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[backend])


def train_committee(train_file, out_dir, backend="mace", n_members=4, seeds=None, bootstrap=False,
                    energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress",
                    max_epochs=None, model_options=None, device="cpu", dtype="float64",
                    n_jobs=1, timeout_s=None, calibration=None, init_models=None,
                    finetune_epochs=None, finetune_options=None, baseline=None, base_dir=None) -> str:
    """Train ``n_members`` models on ``train_file``; write models + ``out_dir/committee.yaml``.

    Returns the path of the committee YAML.  ``stress_key`` is passed to the
    trainer when any structure carries it (None disables).
    init_models: one model file per member to start from (a fine-tune: each member goes on
        from its current weights; MACE: ``--foundation_model``); None trains from scratch.
        In-process trainers (``ridge``) refit on all data instead.
    finetune_epochs, finetune_options: epochs (default ``max_epochs``) and model options
        (over ``model_options``, e.g. a smaller ``lr``) of a later fine-tune of this committee,
        recorded under ``training:`` and read by :func:`fine_tune_committee`.
    baseline: a Δ-learning baseline (a committee-YAML ``baseline:`` entry, e.g.
        ``{backend: chgnet, version: "0.3.0"}``; relative paths against ``base_dir``): the
        members learn reference − baseline (energy, forces, stress; Butler, Hafizi & Day's
        Δ-learning), the written YAML carries the ``baseline:`` so it loads as a
        :class:`~committee_calc.delta.DeltaCalculator`, and ``train_file`` keeps the reference
        labels (a fine-tune forms the Δ targets again).  Raises ConfigError for a bad baseline,
        and what the baseline raises for structures outside its domain.
    """
    trainer = _trainer(backend)
    seeds = _common.member_seeds(n_members, seeds)
    frames = _common.read_training_set(train_file, energy_key, forces_key)
    if stress_key and not any(stress_key in a.info for a in frames):
        stress_key = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref_file = train_file
    if baseline:
        baseline = _absolute_paths(baseline, base_dir)
        train_file, frames = _delta_training_set(frames, baseline, out, energy_key, forces_key, stress_key)
    epochs = trainer.DEFAULT_EPOCHS if max_epochs is None else int(max_epochs)
    if epochs < 1:
        raise ConfigError(f"max_epochs must be ≥ 1, got {max_epochs!r}")
    if init_models is not None and len(init_models) != len(seeds):
        raise ConfigError(f"got {len(init_models)} models to fine-tune for {len(seeds)} members")
    if getattr(trainer, "IN_PROCESS", False):
        members, records, fitted = trainer.train_members(
            frames, seeds, bootstrap=bool(bootstrap), energy_key=energy_key, forces_key=forces_key,
            model_options=model_options)
        calibration = calibration or fitted
    else:
        members, records = _train_member_jobs(
            trainer, backend, train_file, frames, out, seeds, bootstrap, init_models, n_jobs,
            timeout_s, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key,
            max_epochs=epochs, model_options=model_options, device=device, dtype=dtype)
    spec = {"members": members}
    if baseline:
        spec["baseline"] = dict(baseline)
    if calibration:
        spec["calibration"] = dict(calibration)
    spec["training"] = {"backend": backend, "train_file": str(Path(ref_file).resolve()),
                        "energy_key": energy_key, "forces_key": forces_key,
                        "stress_key": stress_key, "max_epochs": epochs, "bootstrap": bool(bootstrap),
                        "model_options": dict(model_options or {}), "members": records}
    if hasattr(trainer, "resolved_options"):  # the full settings, defaults included
        spec["training"]["resolved_options"] = trainer.resolved_options(model_options)
    if finetune_epochs is not None:
        spec["training"]["finetune_epochs"] = int(finetune_epochs)
    if finetune_options:
        spec["training"]["finetune_options"] = dict(finetune_options)
    path = out / "committee.yaml"
    write_yaml_atomic(path, spec)
    return str(path)


def _absolute_paths(spec: dict, base_dir) -> dict:
    """A baseline entry with a relative ``path`` made absolute (against ``base_dir`` or the cwd)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"baseline must be a committee-YAML baseline entry such as "
                          f"{{backend: chgnet, version: '0.3.0'}} or {{calculator: ..., parameters: {{}}}}, "
                          f"got {spec!r}")
    spec = dict(spec)
    if spec.get("path") and not Path(str(spec["path"])).expanduser().is_absolute():
        spec["path"] = str((Path(base_dir or ".") / str(spec["path"])).resolve())
    return spec


def _delta_training_set(frames, baseline, out, energy_key, forces_key, stress_key) -> tuple:
    """(file, frames) of the Δ targets reference − baseline under the reference's own keys,
    written to ``out/train_delta.extxyz`` (baseline values kept as ``BASE_*``)."""
    from ase.io import write

    add_baseline(frames, build_baseline(baseline), prefix="BASE_")
    keys = {"energy": (energy_key, "BASE_energy", energy_key)}
    if forces_key:
        keys["forces"] = (forces_key, "BASE_forces", forces_key)
    if stress_key:
        keys["stress"] = (stress_key, "BASE_stress", stress_key)
    delta_labels(frames, keys)
    path = out / "train_delta.extxyz"
    write(str(path), frames, format="extxyz")
    return str(path), frames


def _train_member_jobs(trainer, backend, train_file, frames, out, seeds, bootstrap, init_models,
                       n_jobs, timeout_s, model_options, **job_options) -> tuple:
    """One training process per member (``trainer.member_job``) -> (member entries, records)."""
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
        extra = {} if init_models is None else {"init_model": str(Path(init_models[k]).resolve())}
        argv = trainer.member_job(data, work.resolve(), seed, model_options=model_options,
                                  **job_options, **extra)
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
    return members, records


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


def read_training(committee_yaml) -> dict:
    """The ``training:`` section of a committee YAML (written by :func:`train_committee`),
    checked: a known backend, and model files for the members of a file-based backend.
    Raises ConfigError naming what is missing (e.g. a YAML without the section)."""
    path = Path(committee_yaml)
    spec = read_yaml(path)
    training = spec.get("training")
    if not isinstance(training, dict) or not training:
        raise ConfigError(f"committee YAML {str(path)!r} has no 'training:' section; it holds the "
                          "settings to fine-tune the committee (backend, keys, epochs, model options, "
                          "seed set) and is written by committee_calc.train.train_committee")
    if training.get("backend") not in TRAINERS:
        raise ConfigError(f"{path}: training.backend must be one of {sorted(TRAINERS)}, got "
                          f"{training.get('backend')!r}")
    if not training.get("train_file"):
        raise ConfigError(f"{path}: training.train_file (the seed training set) is missing")
    return training


def training_files(committee_yaml) -> list:
    """The seed training set(s) of ``training.train_file``: a path, a list, or paths joined by
    ``" + "``; relative paths against the YAML's folder.  Raises StructureReadError if missing."""
    path = Path(committee_yaml)
    given = read_training(path)["train_file"]
    names = given if isinstance(given, list) else str(given).split(" + ")
    out = []
    for name in names:
        p = Path(str(name).strip()).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise StructureReadError(f"{path}: seed training file {str(p)!r} (training.train_file) "
                                     "does not exist")
        out.append(p.resolve())
    return out


def member_seeds_of(training: dict, n_members: int) -> list:
    """The members' seeds recorded under ``training.members`` (default 1000 + k)."""
    recs = training.get("members") or []
    return [int(recs[k]["seed"]) if k < len(recs) and "seed" in recs[k] else 1000 + k
            for k in range(n_members)]


def fine_tune_committee(committee_yaml, train_file, out_dir, seeds=None, bootstrap=None,
                        max_epochs=None, n_jobs=1, device=None, timeout_s=None) -> str:
    """Fine-tune every member of a committee from its current weights on ``train_file``.

    The settings come from the YAML's ``training:`` section (:func:`read_training`): backend,
    keys, model options (with ``finetune_options`` over them), epochs (``finetune_epochs``,
    else ``max_epochs``; ``max_epochs`` overrides).  seeds: one per member (default: the
    recorded seeds + 1); bootstrap: default the recorded choice.  File-based members (MACE)
    start from their model files; the in-process ridge trainer refits on all data.  The
    calibration of a file-based committee is carried over; the ridge trainer fits its own.
    A Δ-learning committee (``baseline:``) fine-tunes its correction members on reference −
    baseline of ``train_file`` (the baseline itself stays as it is).
    Returns ``out_dir/committee.yaml``, whose ``training:`` section allows the next fine-tune.
    Raises ConfigError, TrainingError.
    """
    path = Path(committee_yaml)
    spec = read_yaml(path)
    training = read_training(path)
    backend = training["backend"]
    trainer = _trainer(backend)
    in_process = getattr(trainer, "IN_PROCESS", False)
    init = None
    if not in_process:
        if not getattr(trainer, "FINE_TUNE", False):
            raise ConfigError(f"backend {backend!r} cannot fine-tune from current weights yet")
        init = [p for e in spec["members"] for p in expand_paths(e["path"], path.parent)]
    n = len(spec["members"]) if in_process else len(init)
    seeds = [s + 1 for s in member_seeds_of(training, n)] if seeds is None else seeds
    epochs = max_epochs or training.get("finetune_epochs") or training.get("max_epochs")
    out = train_committee(
        train_file, out_dir, backend=backend, n_members=n, seeds=seeds,
        bootstrap=training.get("bootstrap", False) if bootstrap is None else bootstrap,
        energy_key=training.get("energy_key", "REF_energy"),
        forces_key=training.get("forces_key", "REF_forces"),
        stress_key=training.get("stress_key", "REF_stress"), max_epochs=epochs,
        model_options={**(training.get("model_options") or {}), **(training.get("finetune_options") or {})},
        device=device or training.get("device", "cpu"),
        dtype=training.get("dtype", "float64"), n_jobs=n_jobs, timeout_s=timeout_s,
        calibration=None if in_process else spec.get("calibration"), init_models=init,
        finetune_epochs=training.get("finetune_epochs"), baseline=spec.get("baseline"),
        base_dir=path.parent)
    new = read_yaml(out)
    new["training"]["model_options"] = dict(training.get("model_options") or {})
    if training.get("finetune_options"):
        new["training"]["finetune_options"] = dict(training["finetune_options"])
    new.update({k: spec[k] for k in ("molecules", "stress", "name") if k in spec})
    new["training"]["finetuned_from"] = str(path.resolve())
    write_yaml_atomic(out, new)
    return out


def committee_retrainer(committee_yaml, out_dir, n_jobs=1):
    """``retrain(label_file) -> committee`` for on-the-fly retraining (``--retrain-every``).

    Every call fine-tunes the current committee (first the one of ``committee_yaml``, then the
    previous round's) from its current weights on the seed set of its ``training:`` section plus
    every label in ``label_file``, into ``out_dir/labels_NNNNN/`` (NNNNN = labels trained on).
    A call with a label count already trained on reuses that round (a resumed run rebuilds its
    committee without training again).  The section is checked now (ConfigError without it).
    """
    from ase.io import read, write

    read_training(committee_yaml)
    out_dir = Path(out_dir)

    def retrain(label_file):
        labels = read(str(label_file), index=":")
        rnd = out_dir / f"labels_{len(labels):05d}"
        if (rnd / "committee.yaml").is_file():
            return load_committee(rnd / "committee.yaml")
        earlier = sorted(p for p in out_dir.glob("labels_*") if (p / "committee.yaml").is_file()
                         and p.name < rnd.name)
        current = earlier[-1] / "committee.yaml" if earlier else Path(committee_yaml)
        seeds = [a for f in training_files(committee_yaml) for a in read(str(f), index=":")]
        rnd.mkdir(parents=True, exist_ok=True)
        train_file = rnd / "train.extxyz"
        write(str(train_file), seeds + labels, format="extxyz")
        yaml_path = fine_tune_committee(current, train_file, rnd / "committee", n_jobs=n_jobs)
        write_yaml_atomic(rnd / "committee.yaml", _relocated(yaml_path, rnd))
        retrain.last_yaml = str(rnd / "committee.yaml")
        return load_committee(rnd / "committee.yaml")

    retrain.last_yaml = None
    retrain.out_dir = str(out_dir)
    return retrain


def _relocated(yaml_path, folder) -> dict:
    """The committee spec of ``yaml_path`` with member paths valid from ``folder``."""
    yaml_path = Path(yaml_path)
    spec = read_yaml(yaml_path)
    for entry in spec.get("members", []):
        if "path" in entry and not Path(entry["path"]).is_absolute():
            entry["path"] = str((yaml_path.parent / entry["path"]).resolve())
    return spec


__all__ = ["train_committee", "fine_tune_committee", "make_retrainer", "committee_retrainer", "read_training",
           "training_files", "member_seeds_of", "TRAINERS"]
