"""Fine-tune CHGNet committee members with chgnet's own trainer (``chgnet.trainer.Trainer``).

Each member is one child process (``python -m committee_calc.train.chgnet job.json``, one torch
thread on CPU) that starts from the pretrained CHGNet shipped inside the chgnet wheel
(``model_options["version"]``: 0.3.0 by default, 0.2.0, r2scan; nothing is downloaded) or, for a
fine-tune (``init_model``), from the member's checkpoint; turns the training labels into chgnet's
``StructureData`` (graphs by the model's own converter); splits off a validation set drawn with the
member's seed; and trains with chgnet's ``Trainer``.  The checkpoint chgnet writes for the lowest
validation energy MAE (``bestE_*.pth.tar``; ``checkpoint: bestF`` or ``last`` for the others)
becomes the member file ``chgnet_k.pth.tar``, loaded by ``{backend: chgnet, path: ...}``
(:class:`committee_calc.members.chgnet.CHGNetMember`).  Each member's resolved settings are in
``member_k/chgnet_job.json`` and its validation history in ``member_k/summary.json``.

Units (chgnet 0.4.2: ``chgnet/data/dataset.py`` ``StructureData.__getitem__``,
``chgnet/model/model.py`` ``CHGNet._compute``, ``chgnet/model/dynamics.py`` ``CHGNetCalculator``),
converted from the label store (energy [eV], forces [eV/Å], stress [eV/Å³, Voigt, ASE sign]) by
:func:`chgnet_labels`:

* energy: per atom [eV/atom] for intensive models (all shipped ones), else total [eV];
* forces: [eV/Å], unchanged;
* stress: CHGNet predicts σ in GPa with ASE's sign (1/V dE/dε; CHGNetCalculator multiplies by
  ``ase.units.GPa``), and ``StructureData`` multiplies the given stress by −0.1, i.e. it wants
  VASP's kBar with VASP's sign (pressure positive).  So the label given is −10 σ/GPa (3×3);
  structures without a stress label or not 3-D periodic get NaN (chgnet masks missing labels).

``model_options`` (defaults in :data:`DEFAULTS`): ``version``, ``learning_rate``, ``batch_size``,
``optimizer`` (Adam | AdamW | SGD | RAdam), ``scheduler`` (CosLR | ExponentialLR | CosRestartLR),
``criterion`` (MSE | MAE | Huber), ``energy_loss_ratio``, ``force_loss_ratio``,
``stress_loss_ratio``, ``valid_fraction``, ``train_composition_model`` (refit CHGNet's per-element
reference energies: for labels with another energy zero than Materials Project's, e.g. another
DFT code), ``freeze`` (CHGNet submodules kept fixed, e.g. ``["atom_embedding", "atom_conv_layers"]``),
``checkpoint`` (bestE | bestF | last), ``print_freq``.  CHGNet trains in float32 whatever
``dtype`` is; ``device="cuda"`` trains on a GPU.  With a Δ-learning ``baseline`` the members start
from the pretrained weights but learn reference − baseline; fine-tuning on the reference itself is
the usual route for CHGNet.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError, TrainingError, UnknownSpeciesError
from ..members._torch_common import check_device
from ..members.chgnet import DEFAULT_VERSION, VERSIONS, CHGNetMember, _model_input
from ..structures import is_bulk
from ..units import GPA
from ._common import install_model, python_exe

MODEL_SUFFIX = ".pth.tar"
DEFAULT_EPOCHS = 20
#: member_job takes ``init_model`` (fine-tuning from the current weights)
FINE_TUNE = True

DEFAULTS = {"version": DEFAULT_VERSION, "learning_rate": 1e-3, "batch_size": 4, "optimizer": "Adam",
            "scheduler": "CosLR", "criterion": "MSE", "energy_loss_ratio": 1.0, "force_loss_ratio": 1.0,
            "stress_loss_ratio": 0.1, "valid_fraction": 0.1, "train_composition_model": False,
            "freeze": [], "checkpoint": "bestE", "print_freq": 10}
_CHOICES = {"optimizer": ("Adam", "AdamW", "SGD", "RAdam"),
            "scheduler": ("CosLR", "ExponentialLR", "CosRestartLR"),
            "criterion": ("MSE", "MAE", "Huber"), "checkpoint": ("bestE", "bestF", "last")}
#: CHGNet (0.4.2) submodules ``freeze`` may name
FREEZABLE = ("atom_embedding", "bond_embedding", "angle_embedding", "bond_basis_expansion",
             "angle_basis_expansion", "bond_weights_ag", "bond_weights_bg", "atom_conv_layers",
             "bond_conv_layers", "angle_layers", "site_wise", "readout_norm", "mlp")


def resolved_options(model_options) -> dict:
    """``model_options`` over :data:`DEFAULTS`, checked; ConfigError naming a bad or unknown one."""
    opts = {**DEFAULTS, **dict(model_options or {})}
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown chgnet model options {unknown}; known: {sorted(DEFAULTS)} "
                          "(seed, epochs, device and label keys are train_committee's arguments)")
    opts["version"] = str(opts["version"])
    if opts["version"] not in VERSIONS:
        raise ConfigError(f"unknown CHGNet version {opts['version']!r} in model_options; the chgnet "
                          f"package ships {list(VERSIONS)}")
    for key, allowed in _CHOICES.items():
        if opts[key] not in allowed:
            raise ConfigError(f"chgnet model option {key} must be one of {list(allowed)}, got {opts[key]!r}")
    for key in ("batch_size", "print_freq"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], (int, np.integer)) or opts[key] < 1:
            raise ConfigError(f"chgnet model option {key} must be an integer >= 1, got {opts[key]!r}")
    for key in ("learning_rate", "energy_loss_ratio", "force_loss_ratio", "stress_loss_ratio"):
        try:
            ok = float(opts[key]) >= 0 and np.isfinite(float(opts[key]))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"chgnet model option {key} must be a finite number >= 0, got {opts[key]!r}")
        opts[key] = float(opts[key])
    try:
        ok = 0 < float(opts["valid_fraction"]) < 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"valid_fraction must lie in (0, 1), got {opts['valid_fraction']!r}")
    opts["valid_fraction"] = float(opts["valid_fraction"])
    freeze = [] if opts["freeze"] is None else opts["freeze"]
    if not isinstance(freeze, (list, tuple)) or not all(name in FREEZABLE for name in freeze):
        raise ConfigError(f"freeze must be a list of CHGNet submodules out of {list(FREEZABLE)}, got {freeze!r}")
    opts["freeze"] = list(freeze)
    opts["train_composition_model"] = bool(opts["train_composition_model"])
    return opts


def member_job(train_file, work_dir, seed, *, energy_key, forces_key, stress_key,
               max_epochs, model_options, device="cpu", dtype="float32", init_model=None):
    """argv for one member's training run; its checkpoint lands in ``work_dir/member.pth.tar``.

    init_model: a CHGNet checkpoint (chgnet Trainer file) to go on from; None starts from the
    pretrained ``version``.  ``dtype`` is not used: CHGNet trains in float32.
    Raises ConfigError (bad option, unknown version, no CUDA for ``device``), ModelFileError
    (``init_model`` missing, corrupt or not a CHGNet checkpoint: checked here, before training).
    """
    opts = resolved_options(model_options)
    check_device(device)
    if init_model is not None:
        CHGNetMember.from_file(init_model)  # clear ModelFileError now, not a failed child later
    job = {"train_file": str(train_file), "work_dir": str(work_dir), "seed": int(seed),
           "energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key,
           "epochs": int(max_epochs), "device": device,
           "init_model": None if init_model is None else str(init_model), "options": opts}
    path = Path(work_dir) / "chgnet_job.json"
    path.write_text(json.dumps(job, indent=1))
    return [python_exe(), "-m", "committee_calc.train.chgnet", str(path)]


def collect_model(work_dir, dest) -> str:
    """Move the selected checkpoint into place (atomic)."""
    return install_model(Path(work_dir) / "member.pth.tar", dest,
                         f"chgnet training in {work_dir} finished without writing member.pth.tar")


def chgnet_labels(atoms, energy_key, forces_key=None, stress_key=None, intensive=True) -> dict:
    """One structure's labels in the units ``chgnet.data.dataset.StructureData`` takes.

    Returns ``{"energy": float [eV/atom if intensive, else eV], "forces": (N,3) [eV/Å] (zeros
    without ``forces_key``), "stress": (3,3) [kBar, VASP sign: −10 σ/GPa, σ the label in eV/Å³ with
    ASE's sign] or NaN (no label, or not 3-D periodic)}``.  ``stress_key`` labels may be Voigt (6,)
    or full (3,3)/(9,).  Raises ConfigError for a missing energy or forces label.
    """
    from ase.stress import voigt_6_to_full_3x3_stress

    n = len(atoms)
    if energy_key not in atoms.info:
        raise ConfigError(f"structure {atoms.get_chemical_formula()} lacks the energy label {energy_key!r}")
    energy = float(atoms.info[energy_key]) / (n if intensive else 1)
    if forces_key:
        if forces_key not in atoms.arrays:
            raise ConfigError(f"structure {atoms.get_chemical_formula()} lacks the forces label {forces_key!r}")
        forces = np.asarray(atoms.arrays[forces_key], dtype=float).reshape(n, 3)
    else:
        forces = np.zeros((n, 3))
    stress = np.full((3, 3), np.nan)
    if stress_key and stress_key in atoms.info and is_bulk(atoms):
        s = np.asarray(atoms.info[stress_key], dtype=float).reshape(-1)
        full = voigt_6_to_full_3x3_stress(s) if s.size == 6 else s.reshape(3, 3)
        stress = -10.0 * full / GPA
    return {"energy": energy, "forces": forces, "stress": stress}


def structure_data(frames, model, energy_key, forces_key=None, stress_key=None):
    """chgnet ``StructureData`` of ``frames`` (labels by :func:`chgnet_labels`) with the graph
    converter of ``model``, every graph built now; UnknownSpeciesError for elements outside the
    model's embedding, TrainingError naming structures chgnet cannot make a graph of (e.g. atoms
    with no neighbour within the cutoff)."""
    import contextlib
    import io

    from chgnet.data.dataset import StructureData
    from pymatgen.io.ase import AseAtomsAdaptor

    n_el = int(model.atom_embedding.embedding.num_embeddings)
    bad = sorted({int(z) for a in frames for z in a.numbers if not 1 <= z <= n_el})
    if bad:
        raise UnknownSpeciesError(f"the training set holds atomic numbers {bad}; this CHGNet knows Z = 1-{n_el}")
    labels = [chgnet_labels(a, energy_key, forces_key, stress_key, model.is_intensive) for a in frames]
    converter = type(model.graph_converter)(**model.graph_converter.as_dict(), on_isolated_atoms="error")
    with contextlib.redirect_stdout(io.StringIO()):
        data = StructureData(
            structures=[AseAtomsAdaptor.get_structure(_model_input(a)) for a in frames],
            energies=[lab["energy"] for lab in labels], forces=[lab["forces"] for lab in labels],
            stresses=[lab["stress"] for lab in labels] if stress_key else None,
            graph_converter=converter, shuffle=False)
    for i in range(len(data)):
        data[i]
    if data.failed_idx:
        raise TrainingError(f"chgnet cannot build graphs of training structures {sorted(data.failed_idx)} "
                            f"({sorted(set(data.failed_graph_id.values()))}): an atom with no neighbour "
                            f"within {converter.atom_graph_cutoff} Å? Remove them from the training set")
    return data


def targets_of(forces_key, stress_key) -> str:
    """chgnet's training task: ``"e"`` plus ``"f"`` with forces and ``"s"`` with stress labels."""
    return "e" + ("f" if forces_key else "") + ("s" if stress_key else "")


def split_loaders(data, seed, valid_fraction, batch_size) -> tuple:
    """(train, validation) DataLoaders over ``data``: ``max(1, round(valid_fraction·n))``
    validation structures drawn with ``seed``, the rest trained on in a seeded random order."""
    import torch
    from chgnet.data.dataset import collate_graphs
    from torch.utils.data import DataLoader, SubsetRandomSampler

    n = len(data)
    if n < 2:
        raise TrainingError(f"a CHGNet member needs >= 2 training structures (1 for validation), got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(valid_fraction * n))))
    gen = torch.Generator().manual_seed(int(seed))
    return tuple(DataLoader(data, batch_size=int(batch_size), collate_fn=collate_graphs, num_workers=0,
                            sampler=SubsetRandomSampler(idx.tolist(), generator=gen))
                 for idx in (order[n_val:], order[:n_val]))


def _start_model(job):
    from chgnet.model import CHGNet

    if job["init_model"]:
        return CHGNet.from_file(job["init_model"])
    return CHGNet.load(model_name=job["options"]["version"], use_device=job["device"], verbose=False)


def _run(job_path: str) -> None:  # child process entry point
    import os
    import random
    import shutil

    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch
    from ase.io import read
    from chgnet.trainer import Trainer

    job = json.loads(Path(job_path).read_text())
    opts, seed, work = job["options"], int(job["seed"]), Path(job["work_dir"])
    if job["device"] == "cpu":
        torch.set_num_threads(1)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model = _start_model(job)
    frames = read(job["train_file"], index=":")
    data = structure_data(frames, model, job["energy_key"], job["forces_key"], job["stress_key"])
    train_loader, val_loader = split_loaders(data, seed, opts["valid_fraction"], opts["batch_size"])
    targets = targets_of(job["forces_key"], job["stress_key"])
    trainer = Trainer(model=model, targets=targets, energy_loss_ratio=opts["energy_loss_ratio"],
                      force_loss_ratio=opts["force_loss_ratio"], stress_loss_ratio=opts["stress_loss_ratio"],
                      optimizer=opts["optimizer"], scheduler=opts["scheduler"], criterion=opts["criterion"],
                      epochs=job["epochs"], learning_rate=opts["learning_rate"], print_freq=opts["print_freq"],
                      torch_seed=seed, data_seed=seed, use_device=job["device"])
    for name in opts["freeze"]:
        for param in getattr(model, name).parameters():
            param.requires_grad = False
    save = work / "checkpoints"
    if save.exists():
        shutil.rmtree(save)
    trainer.train(train_loader, val_loader, save_dir=str(save),
                  train_composition_model=opts["train_composition_model"])
    prefix = {"bestE": "bestE_", "bestF": "bestF_", "last": "epoch"}[opts["checkpoint"]]
    found = sorted(p for p in save.glob(f"{prefix}*.pth.tar"))
    if not found:
        raise TrainingError(f"chgnet's Trainer wrote no {prefix}*.pth.tar in {save} (NaN loss? see the log)")
    shutil.copyfile(found[-1], work / "member.pth.tar")
    summary = {"targets": targets, "n_train": len(train_loader.sampler), "n_val": len(val_loader.sampler),
               "checkpoint": found[-1].name, "history": trainer.training_history}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    _run(sys.argv[1])
