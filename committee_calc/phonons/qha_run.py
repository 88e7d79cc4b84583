"""The committee QHA as one call: volumes → phonons → QHA → files, resumable per volume.

::

    scan = VolumeScan(linear_scales=[0.99, 0.995, 1.0, 1.005, 1.01], relax="internal")
    run = run_qha_scan(atoms, Gate(committee), PhononSettings(supercell_matrix=3), scan, "qha/")
    run.result.mean_potential.volume_A3, run.summary["computed_volumes"]

    inputs = inputs_from_phonopy_files("e-v.dat", ["thermal_properties.yaml-00", ...])
    run = run_qha_files(inputs, "qha/")

Each finished volume is stored in ``<out>/volumes/NN/`` (:mod:`.qha_io`, ``volume.json``
last) with the key of its inputs (:func:`volume_hash`); a rerun loads the finished volumes
whose key matches, computes the missing ones and refuses (ConfigError) a stored volume
computed from other inputs.  Outputs: ``qha.csv``, ``qha_members.csv``, ``qha_pressure.csv``
(with ``screen_pressures_GPa``), ``imaginary_modes.csv``, ``qha_summary.json`` and the
figures ``qha.png``, ``bands.png``, ``dos.png``, ``lattice_vs_pressure.png``.
Every input is validated by the dataclasses before the first file is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from ..committee import max_cutoff
from ..errors import ConfigError
from ..fileio import save_json_atomic
from ..gate import Gate
from ..progress import Progress
from ..units import check_finite, check_positive
from .harmonic import PhononWarning, report_imaginary
from .plots import plot_band_structure, plot_dos
from .qha import (
    CommitteeQHA,
    QHAInputs,
    check_eos,
    check_volume_count,
    inputs_from_points,
    run_committee_qha,
    screen_pressures,
)
from .qha_io import (
    load_volume_point,
    write_imaginary_csv,
    write_members_csv,
    write_pressure_csv,
    write_qha_csv,
    write_volume_point,
)
from .qha_plots import plot_pressure_scan, plot_qha
from .scaled import volumes_on_workers
from .settings import PhononSettings
from .spectra import run_band_structure, run_dos
from .supercell import make_phonopy, supercell_size_message
from .volumes import RELAX_MODES, check_qha_structure, run_volume_point, scaled_structures

log = logging.getLogger("committee_calc.qha")
VOLUME_CHOICES = ("linear_scales", "volume_scales", "scale_range", "pressures_GPa")


@dataclasses.dataclass(frozen=True)
class VolumeScan:
    """The volumes of a scan (exactly one of the first four) and their relaxation.

    linear_scales: factors on the lattice vectors; volume_scales: factors on the volume;
    scale_range: (MIN, MAX, N), N linear factors from MIN to MAX; pressures_GPa: volumes
    from full cell relaxations at these pressures [GPa].  relax: fixed-volume relaxation
    at each scaled volume (``none``/``internal``/``shape``); fmax_eVA [eV/Å], relax_steps.
    static_from_reference: hybrid QHA, the static E(V) from the reference at each volume
    (:func:`~committee_calc.phonons.volumes.reference_static_energy`), phonons from the committee.
    Raises ConfigError for fewer than 5 volumes or an invalid setting.
    """

    linear_scales: tuple | None = None
    volume_scales: tuple | None = None
    scale_range: tuple | None = None
    pressures_GPa: tuple | None = None
    relax: str = "internal"
    fmax_eVA: float = 0.005
    relax_steps: int = 500
    static_from_reference: bool = False

    def __post_init__(self):
        given = [k for k in VOLUME_CHOICES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"give the volumes as exactly one of {VOLUME_CHOICES} "
                              f"(at least 5 points), got {given or 'none'}")
        for k in given:
            object.__setattr__(self, k, tuple(check_finite(f"{k} value", v) for v in getattr(self, k)))
        if self.scale_range is not None:
            if len(self.scale_range) != 3:
                raise ConfigError(f"scale_range is (MIN, MAX, N), got {self.scale_range}")
            n = self.scale_range[2]
            if n != int(n) or n < 1:
                raise ConfigError(f"the N of scale_range (MIN, MAX, N) must be a positive "
                                  f"integer, got {n:g}")
        check_volume_count(self.n_volumes)
        for k in ("linear_scales", "volume_scales", "pressures_GPa"):
            values = getattr(self, k)
            if values is not None and len(set(values)) != len(values):
                raise ConfigError(f"{k} repeats a value ({list(values)}); the equation of state needs "
                                  "distinct volumes")
            if values is not None and k != "pressures_GPa" and min(values) <= 0:
                raise ConfigError(f"{k} must be > 0, got {list(values)}")
        if self.scale_range is not None and not 0 < self.scale_range[0] < self.scale_range[1]:
            raise ConfigError(f"scale_range needs 0 < MIN < MAX, got {self.scale_range[:2]}")
        if self.relax not in RELAX_MODES:
            raise ConfigError(f"relax mode must be one of {RELAX_MODES}, got {self.relax!r}")
        check_positive("fmax_eVA", self.fmax_eVA)
        if int(self.relax_steps) != self.relax_steps or self.relax_steps < 0:
            raise ConfigError(f"relax_steps must be an integer >= 0, got {self.relax_steps}")

    @property
    def n_volumes(self) -> int:
        if self.scale_range is not None:
            return int(self.scale_range[2])
        return len(next(getattr(self, k) for k in VOLUME_CHOICES if getattr(self, k) is not None))

    def structures(self, atoms: Atoms) -> tuple:
        """(structures, pressures_GPa list or None): one structure per volume."""
        if self.pressures_GPa is not None:
            return [atoms] * len(self.pressures_GPa), list(self.pressures_GPa)
        if self.volume_scales is not None:
            return scaled_structures(atoms, volume_scales=self.volume_scales), None
        lo, hi, n = self.scale_range or (None, None, None)
        scales = self.linear_scales if self.linear_scales is not None else np.linspace(lo, hi, int(n))
        return scaled_structures(atoms, linear_scales=scales), None


@dataclasses.dataclass(frozen=True)
class QHAOptions:
    """QHA and output options.

    eos: EOS of phonopy's fit; pressure_GPa: pV term [GPa]; t_max_K: like phonopy-qha
    --tmax [K]; ddof: std estimator over members; screen_pressures_GPa: also run the QHA at
    these pressures [GPa] (``qha_pressure.csv``) read at screen_temperature_K [K];
    plots: write figures; band_npoints: q-points per band-path segment.
    """

    eos: str = "vinet"
    pressure_GPa: float | None = None
    t_max_K: float | None = None
    ddof: int = 1
    screen_pressures_GPa: tuple | None = None
    screen_temperature_K: float = 300.0
    plots: bool = True
    band_npoints: int = 51

    def __post_init__(self):
        check_eos(self.eos)
        if self.ddof not in (0, 1):
            raise ConfigError(f"ddof must be 0 or 1, got {self.ddof}")
        if self.band_npoints < 2:
            raise ConfigError(f"band_npoints must be >= 2, got {self.band_npoints}")
        if self.pressure_GPa is not None:
            check_finite("pressure_GPa (--pressure-GPa)", self.pressure_GPa)
        if self.t_max_K is not None:
            check_positive("t_max_K (--qha-tmax-K)", self.t_max_K)
        for p in self.screen_pressures_GPa or ():
            check_finite("screen_pressures_GPa (--screen-pressures-GPa)", p)
        check_positive("screen_temperature_K (--screen-temperature-K)", self.screen_temperature_K,
                       allow_zero=True)


@dataclasses.dataclass(frozen=True)
class QHARun:
    """What a run produced: the QHA (:class:`CommitteeQHA`), the summary written to
    ``qha_summary.json``, and for a scan the VolumePoints and the indices computed now
    (the others were loaded)."""

    result: CommitteeQHA
    summary: dict
    out: Path
    points: tuple = ()
    computed: tuple = ()


def volume_hash(atoms: Atoms, settings: PhononSettings, scan: VolumeScan, structure=None,
                pressure_GPa=None, committee_file=None, reference_file=None) -> str:
    """Key (16 hex digits) of one volume's inputs: input structure, this volume's scaled
    cell or target pressure, phonon and relaxation settings, the committee file's text and
    the reference path.  A stored volume with another key is never loaded silently."""
    spec = Path(committee_file).read_text() if committee_file else ""
    key = dict(cell=np.round(np.array(atoms.cell), 10).tolist(),
               pos=np.round(atoms.get_scaled_positions(), 10).tolist(),
               numbers=atoms.numbers.tolist(), settings=settings.as_dict(), relax=scan.relax,
               fmax=scan.fmax_eVA, committee=spec, reference=reference_file)
    if scan.static_from_reference:  # only then: the keys of stored committee-only volumes stay valid
        key["static"] = "reference"
    if structure is not None:
        key["volume_cell"] = np.round(np.array(structure.cell), 10).tolist()
    if pressure_GPa is not None:
        key["pressure_GPa"] = float(pressure_GPa)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def report_volume_imaginary(i: int, point) -> dict:
    """Warn (PhononWarning) about the imaginary modes of volume ``i`` (mean potential and
    members) and return their counts {"mean": n, "members": [n_k, ...]}."""
    label = f"volume {i:02d} (V = {point.volume_A3:.4f} Å³)"
    report_imaginary(point.phonons.mean, label=label)
    n_mem = [len(m.imaginary_modes) for m in point.phonons.members]
    bad = [k for k, n in enumerate(n_mem) if n]
    if bad and not point.phonons.mean.imaginary_modes:  # else already warned above
        warnings.warn(f"{label}: committee member(s) {bad} have imaginary modes "
                      f"({[n_mem[k] for k in bad]} on the q-mesh): their free energies are "
                      "unreliable; see imaginary_modes.csv", PhononWarning, stacklevel=2)
    counts = {"mean": len(point.phonons.mean.imaginary_modes), "members": n_mem}
    if counts["mean"] or bad:
        log.warning("volume %02d: imaginary modes (mean potential: %d, members: %s)", i,
                    counts["mean"], n_mem)
    return counts


def compute_volumes(atoms: Atoms, gate: Gate, settings: PhononSettings, scan: VolumeScan, out,
                    committee_file=None, reference_file=None, spec=None) -> tuple:
    """The resumable volume loop: load finished volumes, compute and write the missing ones.

    Progress (:class:`~committee_calc.progress.Progress`, in volumes): half a volume when its
    relaxation ends, the other half when its displaced supercells are computed (a volume from a
    worker: one whole volume when its task finishes).
    ``spec``: an :class:`~committee_calc.scale.executors.ExecutorSpec`; when it is distributed the
    missing volumes are computed as tasks first (:mod:`.scaled`), each written here as its task
    finishes (an interrupted run keeps them), the others as usual.
    Returns (points, indices computed now, {index: imaginary-mode counts})."""
    structures, pressures = scan.structures(atoms)
    keys = [volume_hash(atoms, settings, scan, s, None if pressures is None else pressures[i], committee_file,
                        reference_file) for i, s in enumerate(structures)]
    computed, imaginary, bar = [], {}, Progress(len(structures), "qha", unit="volumes")

    def store(i, point, whole=False):
        write_volume_point(out, i, point, keys[i], extra={"pressure_GPa": None if pressures is None else pressures[i],
                                                          "static_source": point.static_source})
        computed.append(i)
        bar.update(1 if whole else 0.5, f"volume {i:02d}: V = {point.volume_A3:.5f} Å³ (primitive), "
                                        f"{len(point.phonons.forces.decisions)} displaced supercells "
                                        f"({point.phonons.forces.n_reference} reference) computed", force=True)

    ready = {} if spec is None or not spec.distributed else volumes_on_workers(
        spec, gate, committee_file, settings, scan, out, structures, pressures, keys,
        on_volume=lambda i, point: store(i, point, whole=True))
    points = []
    for i, s in enumerate(structures):
        point = ready.get(i)
        if point is None:
            point = load_volume_point(out, i, settings, keys[i])
            if point is None:
                with warnings.catch_warnings():  # the supercell size was checked once, up front
                    warnings.filterwarnings("ignore", message=".*twice the committee cutoff")
                    point = run_volume_point(s, gate, settings, relax=scan.relax, fmax_eVA=scan.fmax_eVA,
                                             steps=scan.relax_steps, info={"volume_index": i},
                                             pressure_GPa=None if pressures is None else pressures[i],
                                             static_from_reference=scan.static_from_reference,
                                             on_relaxed=lambda a, i=i: bar.update(
                                                 0.5, f"volume {i:02d} relaxed: V = {a.get_volume():.3f} Å³"))
                store(i, point)
            else:
                bar.update(1, f"volume {i:02d}: loaded from {out}", force=True)
        imaginary[i] = report_volume_imaginary(i, point)
        points.append(point)
    bar.close()
    return points, sorted(computed), imaginary


def write_qha_outputs(inputs: QHAInputs, out: Path, options: QHAOptions, summary: dict) -> CommitteeQHA:
    """QHA of ``inputs`` → ``qha.csv``, ``qha_members.csv``, the pressure screening,
    ``qha.png`` and ``qha_summary.json`` (``summary`` completed and written last)."""
    res = run_committee_qha(inputs, eos=options.eos, pressure_GPa=options.pressure_GPa,
                            t_max_K=options.t_max_K, ddof=options.ddof)
    write_qha_csv(out / "qha.csv", res)
    if res.members:
        write_members_csv(out / "qha_members.csv", res)
    if options.screen_pressures_GPa:
        rows = screen_pressures(inputs, options.screen_pressures_GPa, options.screen_temperature_K,
                                options.eos, options.t_max_K, options.ddof)
        write_pressure_csv(out / "qha_pressure.csv", rows)
        if options.plots:
            plot_pressure_scan([r["p"] for r in rows], rows, out / "lattice_vs_pressure.png",
                               options.screen_temperature_K)
    if options.plots:
        plot_qha(res, out / "qha.png", inputs.volumes_A3, summary.get("atoms_per_primitive_cell"))
    summary.update(n_temperatures=len(res.temperatures_K), eos=options.eos, ddof=options.ddof,
                   aggregation="qha.csv: mean-potential value + member mean/std of per-member QHA")
    save_json_atomic(out / "qha_summary.json", summary)
    return res


def write_spectra(points, out: Path, npoints: int = 51) -> None:
    """``bands.png`` and ``dos.png`` of the lowest-energy volume (mean and member spread)."""
    i = int(np.argmin([p.energy_eV for p in points]))
    p = points[i]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot_band_structure(run_band_structure(p.phonons, npoints), out / "bands.png",
                            title=f"volume {i:02d}, V = {p.volume_A3:.3f} Å³")
        plot_dos(run_dos(p.phonons), out / "dos.png", title=f"volume {i:02d}")


def run_qha_scan(atoms: Atoms, gate: Gate, settings: PhononSettings, scan: VolumeScan, out,
                 options: QHAOptions | None = None, committee_file=None,
                 reference_file=None, spec=None) -> QHARun:
    """The full pipeline on ``atoms`` through ``gate``, written to ``out`` (resumed).

    committee_file, reference_file: identify the committee and reference in the resume key
    (:func:`volume_hash`).  Warns once (PhononWarning) when the supercell is thinner than
    twice the committee cutoff, and per volume about imaginary modes.  ``spec``: where the volumes
    are computed (:func:`compute_volumes`; default in this process).  Raises ConfigError
    (a stored volume from other inputs, bad settings) and whatever the gate raises.
    """
    options = options or QHAOptions()
    out = Path(out)
    check_qha_structure(atoms)  # a slab or molecule: refused before the output folder exists
    if scan.static_from_reference and gate.reference is None:
        raise ConfigError("static energies from the reference (--static-from-reference) need a "
                          "reference (--reference)")
    calls0 = gate.n_reference_calls
    cutoff_msg = supercell_size_message(make_phonopy(atoms, settings, generate=False),
                                        max_cutoff(gate.committee))
    out.mkdir(parents=True, exist_ok=True)
    if cutoff_msg:
        warnings.warn(cutoff_msg, PhononWarning, stacklevel=2)
    points, computed, imaginary = compute_volumes(atoms, gate, settings, scan, out,
                                                  committee_file, reference_file, spec=spec)
    n_imag = write_imaginary_csv(out / "imaginary_modes.csv", points)
    bad = [i for i, c in imaginary.items() if c["mean"] or any(c["members"])]
    if bad:
        log.warning("imaginary modes at volume(s) %s: listed in %s", bad,
                    out / "imaginary_modes.csv")
    em = [p.energies_members_eV for p in points]
    inputs = inputs_from_points([(p.energy_eV, p.phonons) for p in points],
                                None if any(e is None for e in em) else np.array(em).T,
                                lattice_A=np.array([p.lattice_A for p in points]))
    summary = dict(mode="pipeline", volumes_A3=[p.volume_A3 for p in points],
                   atoms_per_primitive_cell=len(points[0].phonopy.primitive),
                   computed_volumes=computed, n_imaginary_modes=n_imag,
                   imaginary_modes_per_volume={f"{i:02d}": c for i, c in imaginary.items()},
                   volumes_with_imaginary_modes=bad, supercell_warning=cutoff_msg,
                   pressures_GPa=None if scan.pressures_GPa is None else list(scan.pressures_GPa),
                   n_reference_supercells=sum(p.phonons.forces.n_reference for p in points),
                   static_energies="reference" if scan.static_from_reference else "committee",
                   n_reference_static=len(points) if scan.static_from_reference else 0,
                   n_reference_calls_this_run=gate.n_reference_calls - calls0,
                   settings=settings.as_dict())
    res = write_qha_outputs(inputs, out, options, summary)
    if options.plots:
        write_spectra(points, out, options.band_npoints)
    return QHARun(result=res, summary=summary, out=out, points=tuple(points),
                  computed=tuple(computed))


def run_qha_files(inputs: QHAInputs, out, options: QHAOptions | None = None,
                  ev_path=None) -> QHARun:
    """The QHA step alone on ``inputs`` read from phonopy-qha files
    (:func:`~committee_calc.phonons.qha_io.inputs_from_phonopy_files`), written to ``out``;
    ``ev_path`` is recorded in the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"mode": "phonopy-qha files", "ev": None if ev_path is None else str(ev_path)}
    res = write_qha_outputs(inputs, out, options or QHAOptions(), summary)
    return QHARun(result=res, summary=summary, out=out)
