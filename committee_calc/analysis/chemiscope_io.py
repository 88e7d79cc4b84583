"""chemiscope export of a relaxed pool or a landscape: structures with energy, density,
committee spread (σ) and cluster as properties, for the interactive explorer
(https://chemiscope.org; Fraux et al., *J. Open Source Softw.* **5** (2020) 2117).

* :func:`write_chemiscope` — structures plus per-structure arrays -> chemiscope JSON (``.json``
  or ``.json.gz``), built by the ``chemiscope`` package's own :func:`chemiscope.create_input`.
* :func:`pool_to_chemiscope` — a relaxed pool as the relaxation writes it (extxyz frames carrying
  ``committee_energy``/``committee_energy_std`` from :func:`committee_calc.io.attach_uncertainties`,
  and optionally ``cluster``/``status`` in ``atoms.info``).
* :func:`landscape_to_chemiscope` — a :class:`~committee_calc.analysis.landscape.Landscape` with
  its baseline energies (or energies given), per molecule or per atom.

Properties written (target ``structure``): ``energy`` relative to the lowest structure and ``σ``
(the committee energy spread, one standard deviation), both per unit — kJ/mol per molecule for a
molecular landscape, meV/atom otherwise; ``density`` [g/cm³]; ``cluster`` (int, -1 noise) and
``status`` (str) when given.  The map shows density (x) against energy (y) coloured by σ.
``chemiscope`` is imported lazily (``pip install chemiscope``; ConfigError without it).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write_bytes
from ..structures import density_gcm3
from ..units import ev_to_kjmol

#: (unit of the landscape, label of the per-unit energy unit, factor from eV per unit)
_ENERGY_UNITS = {"molecule": ("kJ/mol per molecule", ev_to_kjmol(1.0)), "atom": ("meV/atom", 1000.0)}


def _chemiscope():
    try:
        import chemiscope
    except ImportError as exc:
        raise ConfigError(f"chemiscope export needs the chemiscope package (pip install chemiscope): {exc}") \
            from None
    return chemiscope


def _column(values, n: int, what: str, dtype=float):
    if values is None:
        return None
    arr = np.asarray(values, dtype=dtype)
    if arr.shape != (n,):
        raise ConfigError(f"{what} must hold one value per structure ({n}), got shape {arr.shape}")
    return arr


def write_chemiscope(path, structures, energy_eV=None, energy_std_eV=None, n_units=None, unit: str = "atom",
                     cluster=None, status=None, name: str = "committee_calc structures",
                     description: str = "") -> str:
    """Write ``structures`` (n ASE Atoms) with their properties as a chemiscope input file.

    energy_eV, energy_std_eV: (n,) per cell [eV] (σ: committee std, not a variance); n_units: (n,)
    molecules or atoms per structure (default: atoms); unit: ``"molecule"`` or ``"atom"``;
    cluster: (n,) int; status: (n,) str.  Returns the path.  Raises ConfigError for an empty
    list, arrays of the wrong length, an unknown unit, or a path not ending in .json/.json.gz.
    """
    path = Path(path)
    if not (path.name.endswith(".json") or path.name.endswith(".json.gz")):
        raise ConfigError(f"chemiscope file {path} must end in .json or .json.gz")
    if unit not in _ENERGY_UNITS:
        raise ConfigError(f"unit must be one of {sorted(_ENERGY_UNITS)}, got {unit!r}")
    images = list(structures)
    n = len(images)
    if n == 0:
        raise ConfigError("no structures to export to chemiscope")
    units = _column(n_units, n, "n_units") if n_units is not None else np.array([len(a) for a in images], float)
    label, factor = _ENERGY_UNITS[unit if n_units is not None else "atom"]
    props = {"density": {"target": "structure", "values": [density_gcm3(a) for a in images], "units": "g/cm³",
                         "description": "mass density"}}
    energy = _column(energy_eV, n, "energy_eV")
    if energy is not None:
        per = energy / units * factor
        props["energy"] = {"target": "structure", "values": per - np.nanmin(per), "units": label,
                           "description": "committee-mean energy relative to the lowest structure"}
    sigma = _column(energy_std_eV, n, "energy_std_eV")
    if sigma is not None:
        props["σ"] = {"target": "structure", "values": sigma / units * factor, "units": label,
                      "description": "committee energy spread (one standard deviation)"}
    if cluster is not None:
        props["cluster"] = {"target": "structure", "values": _column(cluster, n, "cluster", int).tolist(),
                            "description": "cluster label (-1: noise)"}
    if status is not None:
        props["status"] = {"target": "structure", "values": [str(s) for s in status]}
        if len(props["status"]["values"]) != n:
            raise ConfigError(f"status must hold one value per structure ({n})")
    cs = _chemiscope()
    y = "energy" if "energy" in props else "density"
    settings = cs.quick_settings(x="density", y=y, map_color="σ" if "σ" in props else None, periodic=True)
    frames = [a.copy() for a in images]
    for a in frames:  # the structures only: every property is passed explicitly above
        a.calc = None
        a.info, a.arrays = {}, {k: v for k, v in a.arrays.items() if k in ("numbers", "positions")}
    data = cs.create_input(frames, metadata={"name": name, "description": description}, properties=props,
                           settings=settings)
    text = json.dumps(data).encode("utf8")
    atomic_write_bytes(path, gzip.compress(text) if path.name.endswith(".gz") else text)
    return str(path)


def _info(images, key, default=None):
    vals = [a.info.get(key, default) for a in images]
    return None if all(v is None for v in vals) else vals


def pool_to_chemiscope(path, structures, name: str = "relaxed pool", n_units=None, unit: str = "atom") -> str:
    """A relaxed pool (Atoms carrying ``committee_energy`` [eV] and ``committee_energy_std`` [eV] in
    ``info``, else their calculator energy; ``cluster`` and ``status`` when present) as chemiscope."""
    images = list(structures)
    energy = _info(images, "committee_energy")
    if energy is None:
        try:
            energy = [a.get_potential_energy() for a in images]
        except RuntimeError:  # no calculator: energies unknown
            energy = None
    sigma = _info(images, "committee_energy_std", np.nan)
    cluster, status = _info(images, "cluster", -1), _info(images, "status", "")
    return write_chemiscope(path, images, energy_eV=energy, energy_std_eV=sigma, n_units=n_units, unit=unit,
                            cluster=cluster, status=status, name=name)


def landscape_to_chemiscope(path, landscape, energy_eV=None, energy_std_eV=None, cluster=None,
                            name: str = "landscape") -> str:
    """A :class:`~committee_calc.analysis.landscape.Landscape` (per molecule or per atom, as it
    counts its units); energies default to its baseline energies [eV per cell]."""
    energy = landscape.baseline_energy if energy_eV is None else energy_eV
    return write_chemiscope(path, landscape.structures, energy_eV=energy, energy_std_eV=energy_std_eV,
                            n_units=landscape.n_units, unit=landscape.unit, cluster=cluster, name=name)


__all__ = ["landscape_to_chemiscope", "pool_to_chemiscope", "write_chemiscope"]
