"""Helpers shared by the torch-based members (MACE, NequIP, SchNetPack).

Global state: a member never leaves a process-wide setting changed.  Framework imports,
model loading and every prediction run inside :func:`torch_scope` (or
:func:`keeps_torch_globals`), which restores torch's default dtype, its thread count and
the environment variables set for the frameworks (:func:`scoped_env`) on every exit
path, an exception included.

Security: model files of these frameworks are Python pickles.  Loading one
(``torch.load(weights_only=False)``, TorchScript archives with extra files)
can run arbitrary code: **only load model files you trust.**
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager

from ..errors import BackendUnavailableError, ConfigError, ModelFileError

DTYPES = ("float32", "float64")


@contextmanager
def scoped_env(**values):
    """Set the environment variables in ``values`` that are unset, for the ``with`` block
    only.  On every exit path (also an exception) the whole environment is back to what it
    was before: these variables and any other the code inside (a framework) set or changed.
    Members never leave the process environment changed."""
    before = dict(os.environ)
    for k, v in values.items():
        os.environ.setdefault(k, str(v))
    try:
        yield
    finally:
        if dict(os.environ) != before:
            for k in set(os.environ) - set(before):
                del os.environ[k]
            for k, v in before.items():
                if os.environ.get(k) != v:
                    os.environ[k] = v


def torch_env():
    """The environment the e3nn/mace/nequip stack needs while it is imported or a model
    is loaded (a context manager, restored on exit): e3nn 0.4.4 calls ``torch.load`` on
    its own constants at import time, which torch >= 2.6 rejects by default
    (``weights_only=True``) unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set."""
    return scoped_env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")


@contextmanager
def torch_scope(dtype: str | None = None):
    """Run framework code with torch's process-wide settings restored on every exit path.

    Inside: :func:`torch_env`, and the default dtype ``dtype`` (``"float32"``/``"float64"``)
    when given.  On exit (normal or exception): the default dtype, the number of intra-op
    threads and the environment are what they were before.
    """
    import torch

    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    with torch_env():
        try:
            if dtype is not None:
                torch.set_default_dtype(torch_dtype(dtype))
            yield torch
        finally:
            if torch.get_default_dtype() != old_dtype:
                torch.set_default_dtype(old_dtype)
            if torch.get_num_threads() != old_threads:
                torch.set_num_threads(old_threads)


def keeps_torch_globals(fn):
    """Decorator: ``fn`` runs inside :func:`torch_scope` (no global torch setting or
    environment variable it or the framework changes survives the call)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch_scope():
            return fn(*args, **kwargs)
    return wrapper


def import_framework(module: str, package: str, extra: str):
    """Import a framework module or raise BackendUnavailableError naming the package."""
    import importlib

    try:
        with torch_env():
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
    """``torch.load`` a pickled model (trusted files only) with clear errors (ModelFileError;
    ConfigError for an unusable ``device``, :func:`check_device`)."""
    import torch

    path = check_model_file(path, backend)
    check_device(device)
    try:
        with torch_scope():  # unpickling may import (and set up) framework modules
            return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # pickle/zip/runtime errors of a corrupt file
        raise ModelFileError(
            f"cannot load {backend} model file {path!r}: {type(exc).__name__}: {str(exc).rstrip('.')}. "
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
    """``device`` if torch knows it and this machine has it; ConfigError otherwise."""
    import torch

    if not isinstance(device, str):
        raise ConfigError(f"device must be a string like 'cpu' or 'cuda', got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown torch device {device!r} ({str(exc).rstrip('.')}); use 'cpu', "
                          f"'cuda' or 'cuda:N'") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU; use 'cpu'")
    return device


def voigt(s3x3):
    """(3,3) -> (6,) Voigt xx yy zz yz xz xy."""
    return s3x3[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
