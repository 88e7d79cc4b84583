"""Import an object from a ``package.module.Name`` path (calculators named in YAML)."""
from __future__ import annotations

import importlib

from .errors import BackendUnavailableError, ConfigError


def import_object(path: str):
    """Import ``package.module.Name`` (or ``package.module:Name``).

    Raises :class:`ConfigError` for a malformed path or a missing attribute and
    :class:`BackendUnavailableError` when the module does not import.
    """
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"expected an import path like 'ase.calculators.emt.EMT', got {path!r}")
    mod, _, attr = path.replace(":", ".").rpartition(".")
    if not mod:
        raise ConfigError(f"import path {path!r} needs a module, e.g. 'ase.calculators.emt.EMT'")
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"cannot import {mod!r} for {path!r}: {exc}. Install the package that "
            "provides it (see install/install.sh) or fix the path."
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {mod!r} has no attribute {attr!r} (from {path!r})") from None
