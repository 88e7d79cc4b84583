"""Band structures and densities of states of a committee (mean and every member).

Compute only; :mod:`committee_calc.phonons.plots` draws them with spread bands.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BandStructureResult:
    """Frequencies along a high-symmetry path (seekpath, primitive reciprocal cell).

    distances        (Q,)        1/Å along the path (segments concatenated)
    qpoints          (Q, 3)      reduced coordinates
    frequencies_THz  (Q, B)      mean potential
    members_THz      (M, Q, B)   per member (M = 0 without a committee)
    labels           tuple of (distance 1/Å, label str) at segment ends
    """

    distances: np.ndarray
    qpoints: np.ndarray
    frequencies_THz: np.ndarray
    members_THz: np.ndarray
    labels: tuple


@dataclasses.dataclass(frozen=True)
class DosResult:
    """Total phonon DOS (tetrahedron method), states/THz per primitive cell.

    frequency_points_THz (P,); dos (P,) mean potential; members (M, P)
    """

    frequency_points_THz: np.ndarray
    dos: np.ndarray
    members: np.ndarray


def _band_path(ph, npoints):
    try:
        from phonopy.phonon.band_structure import get_band_qpoints_by_seekpath

        bands, labels, connections = get_band_qpoints_by_seekpath(ph.primitive, npoints,
                                                                  is_const_interval=True)
    except ImportError:
        from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

        # fall back to a Γ–X–L–Γ-like generic path when seekpath is missing
        path = [[[0, 0, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5], [0, 0, 0]]]
        bands, connections = get_band_qpoints_and_path_connections(path, npoints=npoints)
        labels = ["Γ", "X", "L", "Γ"]
    return bands, labels, connections


def _run_band(ph, bands, connections):
    ph.run_band_structure(bands, path_connections=connections)
    bs = ph.band_structure
    return (np.concatenate(bs.distances), np.concatenate(bs.qpoints),
            np.concatenate(bs.frequencies))


def run_band_structure(phonon_result, npoints: int = 51) -> BandStructureResult:
    """Band structure of a PhononResult's mean and members on one seekpath path."""
    if npoints < 2:
        raise ConfigError(f"npoints must be >= 2, got {npoints}")
    ph = phonon_result.mean.phonopy
    bands, labels, connections = _band_path(ph, npoints)
    d, q, f = _run_band(ph, bands, connections)
    members = [_run_band(m.phonopy, bands, connections)[2] for m in phonon_result.members]
    lab, li, start = [], iter(labels), 0
    lab.append((0.0, str(next(li, ""))))
    for i, b in enumerate(bands):
        start += len(b)
        end = str(next(li, ""))
        if i < len(bands) - 1 and not connections[i]:  # a jump: "U|K"
            end = f"{end}|{next(li, '')}"
        lab.append((float(d[start - 1]), end))
    return BandStructureResult(distances=d, qpoints=q, frequencies_THz=f,
                               members_THz=np.array(members).reshape(len(members), *f.shape),
                               labels=tuple(lab))


def run_dos(phonon_result, freq_pitch_THz: float = 0.05) -> DosResult:
    """Total DOS of the mean and every member on a common frequency grid (mesh already run)."""
    objs = [phonon_result.mean.phonopy] + [m.phonopy for m in phonon_result.members]
    fmin = min(float(o.mesh.frequencies.min()) for o in objs) - 0.5
    fmax = max(float(o.mesh.frequencies.max()) for o in objs) + 0.5
    out = []
    for o in objs:
        o.run_total_dos(freq_min=fmin, freq_max=fmax, freq_pitch=freq_pitch_THz)
        out.append((np.array(o.total_dos.frequency_points), np.array(o.total_dos.dos)))
    n = min(len(x[0]) for x in out)
    return DosResult(frequency_points_THz=out[0][0][:n], dos=out[0][1][:n],
                     members=np.array([x[1][:n] for x in out[1:]]).reshape(len(out) - 1, n))
