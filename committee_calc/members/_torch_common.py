"""Helpers shared by the torch-based members (MACE, NequIP, SchNetPack).

Security: model files of these frameworks are Python pickles.  Loading one
(``torch.load(weights_only=False)``, TorchScript archives with extra files)
can run arbitrary code: **only load model files you trust.**
"""
from __future__ import annotations

import os

from ..errors import BackendUnavailableError, ConfigError, ModelFileError

DTYPES = ("float32", "float64")


def torch_env() -> None:
    """Environment the e3nn/mace/nequip stack needs before it is imported."""
    # e3nn 0.4.4 calls torch.load on its own constants at import time; torch
    # >= 2.6 defaults to weights_only=True, which rejects them.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def import_framework(module: str, package: str, extra: str):
    """Import a framework module or raise BackendUnavailableError naming the package."""
    import importlib

    torch_env()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {package} package is needed for this member but cannot be imported "
            f"({exc}); install it with `pip install -e '.[{extra}]'` (see install/install.sh)"
        ) from exc


def check_model_file(path, backend: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{backend} model file {path!r} does not exist")
    if os.path.isdir(path):
        raise ModelFileError(f"{backend} model path {path!r} is a folder; give the model file")
    if os.path.getsize(path) == 0:
        raise ModelFileError(f"{backend} model file {path!r} is empty (corrupt or unfinished write)")
    return path


def torch_load(path, backend: str, device: str = "cpu"):
    """``torch.load`` a pickled model (trusted files only) with clear errors."""
    import torch

    path = check_model_file(path, backend)
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # pickle/zip/runtime errors of a corrupt file
        raise ModelFileError(
            f"cannot load {backend} model file {path!r}: {type(exc).__name__}: {exc}. "
            "The file is corrupt, truncated or not a model of this framework/version."
        ) from exc


def check_dtype(dtype) -> str | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def dtype_name(tdtype) -> str:
    import torch

    return {torch.float32: "float32", torch.float64: "float64"}.get(tdtype, str(tdtype))


def check_device(device: str) -> str:
    import torch

    if not isinstance(device, str):
        raise ConfigError(f"device must be a string like 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU; use 'cpu'")
    return device


def voigt(s3x3):
    """(3,3) -> (6,) Voigt xx yy zz yz xz xy."""
    return s3x3[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
