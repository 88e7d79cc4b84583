"""Train MACE committee members with mace-torch's own trainer (``mace.cli.run_train``).

Each member is one ``python -m mace.cli.run_train`` process with its own
``--seed`` (which also picks its train/validation split) and optionally its
own bootstrap subset.  CPU by default; on a GPU pass ``device="cuda"`` (and
usually ``dtype="float32"`` and larger ``batch_size``) — the same call.

``model_options`` are passed as ``--key value`` flags to ``run_train``, e.g.
``{"num_channels": 8, "max_L": 0, "r_max": 4.0, "batch_size": 5}``; a value
``True`` gives a bare flag.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ._common import install_model, python_exe

#: options set by the adapter itself (not overridable through model_options)
_RESERVED = {"name", "work_dir", "train_file", "seed", "energy_key", "forces_key", "stress_key",
             "max_num_epochs", "device", "default_dtype"}


def _flags(options: dict) -> list:
    out = []
    for k, v in options.items():
        if k in _RESERVED:
            raise ConfigError(f"model option {k!r} is set by train_committee; use its argument")
        if v is None or v is False:
            continue
        out.append(f"--{k}")
        if v is not True:
            out.append(str(v))
    return out


def member_job(train_file, work_dir, seed, *, energy_key, forces_key, stress_key,
               max_epochs, model_options, device="cpu", dtype="float64", init_model=None):
    """argv for one member's training run; its model lands in ``work_dir/member.model``.

    init_model: a MACE model file to fine-tune (mace-torch's ``--foundation_model``, single
    head: the architecture and the isolated-atom energies E0 are the model's, the
    architecture options of ``model_options`` are ignored by mace); None trains from scratch.
    E0 is passed explicitly (:func:`model_e0s`): ``--E0s foundation`` fails on a
    one-element model in mace-torch 0.3.16.
    """
    opts = {"model": "MACE", "E0s": "average", "valid_fraction": 0.1, "plot": "False",
            "eval_interval": 1, "save_cpu": True}
    opts.update(model_options or {})
    if init_model is not None:
        opts.update(foundation_model=str(init_model), multiheads_finetuning="False",
                    E0s=model_e0s(init_model))
    argv = [python_exe(), "-m", "mace.cli.run_train", "--name", "member",
            "--work_dir", str(work_dir), "--train_file", str(train_file), "--seed", str(seed),
            "--energy_key", energy_key,
            "--forces_key", forces_key or "__no_forces__",
            "--max_num_epochs", str(int(max_epochs)), "--device", device,
            "--default_dtype", dtype]
    if stress_key:
        argv += ["--stress_key", stress_key]
    if not forces_key:  # energies only: no force labels, no force loss
        opts.setdefault("forces_weight", 0.0)
    return argv + _flags(opts)


def model_e0s(path) -> str:
    """The isolated-atom energies [eV] of a MACE model file as ``--E0s`` text ``{Z: E0, ...}``
    (first head)."""
    import torch

    model = torch.load(str(path), map_location="cpu", weights_only=False)
    zs = [int(z) for z in model.atomic_numbers]
    e0 = model.atomic_energies_fn.atomic_energies.detach().cpu().double().reshape(-1, len(zs))[0]
    return str({z: float(e) for z, e in zip(zs, e0.tolist())})


def collect_model(work_dir, dest) -> str:
    """Move the trained model into place (atomic rename)."""
    return install_model(Path(work_dir) / "member.model", dest,
                         f"mace training in {work_dir} finished without writing member.model")


MODEL_SUFFIX = ".model"
DEFAULT_EPOCHS = 100
#: member_job takes ``init_model`` (fine-tuning from the current weights)
FINE_TUNE = True
