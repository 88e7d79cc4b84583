"""committee-qha: harmonic + quasi-harmonic free energies with committee error bars.

Full pipeline (stateless, resumable per volume)::

    committee-qha Cu.cif --committee committee.yaml --out qha/ \
        --scale-range 0.99 1.03 9 --supercell 3 --mesh 20 20 20 --tmax-K 800 \
        [--reference dft.yaml --labels labels.xyz --threshold-forces-std-max-eVA 0.05]

QHA step alone on phonopy-qha files (no calculator)::

    committee-qha --ev e-v.dat --thermal-properties thermal_properties.yaml-* --out qha/

Each finished volume is written to ``<out>/volumes/NN/`` (phonopy yaml, forces,
thermal properties, volume.json last); a rerun loads finished volumes and
computes only the missing ones.  Outputs: ``qha.csv`` (T, V, G, B_T, β_V, C_P,
each for the mean potential and as member mean ± std), ``qha_members.csv``,
``qha_pressure.csv`` (with --screen-pressures-GPa), ``imaginary_modes.csv``,
``qha_summary.json`` and figures (``qha.png``, ``bands.png``, ``dos.png``,
``lattice_vs_pressure.png``).  Warnings (also in ``qha_summary.json``): a supercell
thinner than twice the committee cutoff (``cutoff:`` of the members; the message names
the smallest diagonal --supercell that satisfies it) and imaginary modes per volume
(mean potential and members, listed with their q-points in ``imaginary_modes.csv``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from committee_calc.cli import add_committee_arguments, add_gate_arguments, run_cli
from committee_calc.errors import ConfigError

log = logging.getLogger("committee_calc.qha")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="committee-qha", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structure", nargs="?", help="input structure (any ASE format; first frame)")
    add_committee_arguments(p, required=False)  # the QHA-only mode (--ev) needs no committee
    add_gate_arguments(p)
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    g = p.add_argument_group("volumes")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--linear-scales", type=float, nargs="+", help="lattice-constant factors")
    x.add_argument("--volume-scales", type=float, nargs="+", help="volume factors")
    x.add_argument("--scale-range", type=float, nargs=3, metavar=("MIN", "MAX", "N"),
                   help="N linear factors from MIN to MAX")
    x.add_argument("--pressures-GPa", type=float, nargs="+",
                   help="volumes from cell relaxations at these pressures")
    g.add_argument("--relax", choices=("none", "internal", "shape"), default="internal",
                   help="fixed-volume relaxation at each volume (default internal)")
    g.add_argument("--fmax-eVA", type=float, default=0.005)
    g.add_argument("--relax-steps", type=int, default=500)
    g = p.add_argument_group("phonons (phonopy)")
    g.add_argument("--supercell", type=int, nargs="+", default=[3], help="1, 3 or 9 integers")
    g.add_argument("--primitive-matrix", default=None,
                   help="'auto', or 9 comma-separated numbers; default: the input cell")
    g.add_argument("--distance-A", type=float, default=0.01)
    g.add_argument("--plusminus", choices=("auto", "yes", "no"), default="auto")
    g.add_argument("--mesh", type=int, nargs=3, default=[20, 20, 20])
    g.add_argument("--gamma-center", action="store_true")
    g.add_argument("--exclude-gamma-acoustic", choices=("auto", "yes", "no"), default="auto")
    g.add_argument("--tmin-K", type=float, default=0.0)
    g.add_argument("--tmax-K", type=float, default=800.0)
    g.add_argument("--tstep-K", type=float, default=10.0)
    g.add_argument("--imaginary-tol-THz", type=float, default=0.05)
    g = p.add_argument_group("QHA")
    g.add_argument("--eos", choices=("vinet", "birch_murnaghan", "murnaghan"), default="vinet")
    g.add_argument("--pressure-GPa", type=float, default=None, help="pV term of the QHA")
    g.add_argument("--qha-tmax-K", type=float, default=None, help="like phonopy-qha --tmax")
    g.add_argument("--screen-pressures-GPa", type=float, nargs="+",
                   help="also run the QHA at these pressures: qha_pressure.csv, lattice vs p")
    g.add_argument("--screen-temperature-K", type=float, default=300.0)
    g.add_argument("--ddof", type=int, choices=(0, 1), default=1, help="std estimator")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--band-npoints", type=int, default=51)
    g = p.add_argument_group("QHA step alone (phonopy-qha inputs)")
    g.add_argument("--ev", help="e-v.dat (V, E per cell)")
    g.add_argument("--thermal-properties", nargs="+", help="thermal_properties.yaml per volume")
    g.add_argument("--efe", help="fe-v.dat: T-dependent electronic free energies")
    return p


def settings_from_args(args):
    from committee_calc.phonons.harmonic import PhononSettings

    pm = args.primitive_matrix
    if pm not in (None, "auto"):
        try:
            pm = [float(v) for v in pm.split(",")]
        except ValueError:
            raise ConfigError(f"--primitive-matrix must be 'auto' or 9 numbers, got {pm!r}") from None
    yn = {"auto": "auto", "yes": True, "no": False}
    return PhononSettings(
        supercell_matrix=args.supercell, primitive_matrix=pm, distance_A=args.distance_A,
        is_plusminus=yn[args.plusminus], mesh=tuple(args.mesh), is_gamma_center=args.gamma_center,
        exclude_gamma_acoustic=yn[args.exclude_gamma_acoustic], t_min_K=args.tmin_K,
        t_max_K=args.tmax_K, t_step_K=args.tstep_K, imaginary_tol_THz=args.imaginary_tol_THz)


def _structures(args, atoms, calc):
    from committee_calc.phonons.volumes import scaled_structures

    if args.linear_scales:
        return scaled_structures(atoms, linear_scales=args.linear_scales), None
    if args.volume_scales:
        return scaled_structures(atoms, volume_scales=args.volume_scales), None
    if args.scale_range:
        lo, hi, n = args.scale_range
        if n != int(n) or n < 1:
            raise ConfigError(f"--scale-range N must be a positive integer, got {n}")
        return scaled_structures(atoms, linear_scales=np.linspace(lo, hi, int(n))), None
    if args.pressures_GPa:
        return [atoms] * len(args.pressures_GPa), list(args.pressures_GPa)
    raise ConfigError("give the volumes: --linear-scales, --volume-scales, --scale-range or "
                      "--pressures-GPa (at least 5 points)")


def _hash(args, atoms, settings, structure=None, pressure_GPa=None) -> str:
    """Key of one volume's inputs: a stored volume computed from other inputs (input
    structure, this volume's scaled cell or target pressure, phonon/relaxation settings,
    committee, reference) is never loaded silently."""
    spec = Path(args.committee).read_text() if args.committee else ""
    key = dict(cell=np.round(np.array(atoms.cell), 10).tolist(),
               pos=np.round(atoms.get_scaled_positions(), 10).tolist(),
               numbers=atoms.numbers.tolist(), settings=settings.as_dict(), relax=args.relax,
               fmax=args.fmax_eVA, committee=spec, reference=args.reference)
    if structure is not None:
        key["volume_cell"] = np.round(np.array(structure.cell), 10).tolist()
    if pressure_GPa is not None:
        key["pressure_GPa"] = float(pressure_GPa)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def check_supercell(atoms, committee, settings) -> str | None:
    """Warn once when the supercell is thinner than twice the committee cutoff; the message
    (naming the cutoff and a supercell that satisfies it) is returned for the summary."""
    from committee_calc.phonons.harmonic import check_supercell_size, committee_cutoff, make_phonopy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_supercell_size(make_phonopy(atoms, settings, generate=False),
                             committee_cutoff(committee))
    msgs = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn(str(w.message), w.category, stacklevel=2)
    return msgs[0] if msgs else None


def report_volume_imaginary(i: int, point) -> dict:
    """Warn about the imaginary modes of volume ``i`` (mean potential and members) and
    return their counts {"mean": n, "members": [n_k, ...]}."""
    from committee_calc.phonons.harmonic import PhononWarning, report_imaginary

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


def compute_volumes(args, atoms, committee, gate, settings):
    """The resumable volume loop: load finished volumes, compute the missing ones.

    Returns (points, indices computed now, {index: imaginary-mode counts})."""
    from committee_calc.phonons.qha_io import load_volume_point, write_volume_point
    from committee_calc.phonons.qha import check_volume_count
    from committee_calc.phonons.volumes import relax_structure, run_volume_point

    structures, pressures = _structures(args, atoms, committee)
    check_volume_count(len(structures))
    points, computed, imaginary = [], [], {}
    for i, s in enumerate(structures):
        p_i = None if pressures is None else pressures[i]
        h = _hash(args, atoms, settings, s, p_i)
        point = load_volume_point(args.out, i, settings, h)
        if point is None:
            relax = args.relax
            if p_i is not None:
                s = relax_structure(s, committee, "shape", args.fmax_eVA, args.relax_steps,
                                    pressure_GPa=p_i)
                relax = "none"
            with warnings.catch_warnings():  # the supercell size was checked once, up front
                warnings.filterwarnings("ignore", message=".*twice the committee cutoff")
                point = run_volume_point(s, committee, settings, relax=relax, gate=gate,
                                         fmax_eVA=args.fmax_eVA, steps=args.relax_steps,
                                         info={"volume_index": i})
            write_volume_point(args.out, i, point, h, extra={"pressure_GPa": p_i})
            computed.append(i)
            log.info("volume %02d: V = %.5f Å³, %d displaced supercells (%d reference) computed",
                     i, point.volume_A3, len(point.phonons.forces.decisions),
                     point.phonons.forces.n_reference)
        else:
            log.info("volume %02d: loaded from %s", i, args.out)
        imaginary[i] = report_volume_imaginary(i, point)
        points.append(point)
    return points, computed, imaginary


def write_imaginary(out, points) -> int:
    from committee_calc.fileio import atomic_write_text

    lines = ["volume_index,volume_A3,which,q1,q2,q3,frequency_THz"]
    for i, p in enumerate(points):
        for which, res in [("mean", p.phonons.mean)] + [
                (f"member{k}", m) for k, m in enumerate(p.phonons.members)]:
            for q, f in res.imaginary_modes:
                lines.append(f"{i},{p.volume_A3!r},{which},{q[0]},{q[1]},{q[2]},{f!r}")
    atomic_write_text(Path(out) / "imaginary_modes.csv", "\n".join(lines) + "\n")
    return len(lines) - 1


def run_qha_outputs(args, inputs, out: Path, summary: dict):
    from committee_calc.fileio import save_json_atomic
    from committee_calc.phonons.qha import run_committee_qha
    from committee_calc.phonons.qha_io import write_members_csv, write_qha_csv

    res = run_committee_qha(inputs, eos=args.eos, pressure_GPa=args.pressure_GPa,
                            t_max_K=args.qha_tmax_K, ddof=args.ddof)
    write_qha_csv(out / "qha.csv", res)
    if res.members:
        write_members_csv(out / "qha_members.csv", res)
    if args.screen_pressures_GPa:
        screen_pressures(args, inputs, out)
    if not args.no_plots:
        from committee_calc.phonons.qha_plots import plot_qha

        plot_qha(res, out / "qha.png")
    summary.update(n_temperatures=len(res.temperatures_K), eos=args.eos, ddof=args.ddof,
                   aggregation="qha.csv: mean-potential value + member mean/std of per-member QHA")
    save_json_atomic(out / "qha_summary.json", summary)
    return res


def screen_pressures(args, inputs, out: Path) -> None:
    from committee_calc.fileio import atomic_write_text
    from committee_calc.phonons.qha import run_committee_qha

    rows = []
    for p in args.screen_pressures_GPa:
        r = run_committee_qha(inputs, eos=args.eos, pressure_GPa=p, t_max_K=args.qha_tmax_K,
                              ddof=args.ddof)
        t = r.temperatures_K
        j = int(np.argmin(np.abs(t - args.screen_temperature_K)))
        mp_j = int(np.argmin(np.abs(r.mean_potential.temperatures_K - t[j])))
        lat = r.mean_potential.lattice_A
        rows.append(dict(
            p=p, T=float(t[j]), volume_A3=float(r.mean_potential.volume_A3[mp_j]),
            volume_std_A3=float(r.stats["volume_A3"]["std"][j]),
            lattice_A=None if lat is None else lat[mp_j],
            lattice_std_A=r.stats["lattice_A"]["std"][j] if "lattice_A" in r.stats else None))
    lines = ["p_GPa,T_K,V_A3,V_members_std_A3,a_A,b_A,c_A,a_std_A,b_std_A,c_std_A"]
    for r in rows:
        lat = r["lattice_A"] if r["lattice_A"] is not None else [np.nan] * 3
        ls = r["lattice_std_A"] if r["lattice_std_A"] is not None else [np.nan] * 3
        lines.append(",".join(repr(float(v)) for v in [r["p"], r["T"], r["volume_A3"],
                                                        r["volume_std_A3"], *lat, *ls]))
    atomic_write_text(out / "qha_pressure.csv", "\n".join(lines) + "\n")
    if not args.no_plots:
        from committee_calc.phonons.qha_plots import plot_pressure_scan

        plot_pressure_scan([r["p"] for r in rows], rows, out / "lattice_vs_pressure.png",
                           args.screen_temperature_K)


def run(argv=None) -> int:
    """The driver; raises committee_calc errors (``main`` maps them to exit code 2)."""
    from committee_calc.cli import build_gate_from_args, load_committee_from_args, read_structures
    from committee_calc.phonons.qha import inputs_from_points

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ev:
        from committee_calc.phonons.qha_io import inputs_from_phonopy_files

        if not args.thermal_properties:
            raise ConfigError("--ev needs --thermal-properties (one file per volume)")
        inputs = inputs_from_phonopy_files(args.ev, args.thermal_properties, args.efe)
        run_qha_outputs(args, inputs, out, {"mode": "phonopy-qha files", "ev": args.ev})
        return 0
    if not args.structure or not args.committee:
        raise ConfigError("give a structure file and --committee (or --ev with "
                          "--thermal-properties for the QHA step alone)")
    atoms = read_structures(args.structure)[0]
    settings = settings_from_args(args)
    committee = load_committee_from_args(args)
    gate = build_gate_from_args(args, "qha", committee=committee) if args.reference else None
    supercell_warning = check_supercell(atoms, committee, settings)
    points, computed, imaginary = compute_volumes(args, atoms, committee, gate, settings)
    n_imag = write_imaginary(out, points)
    bad = [i for i, c in imaginary.items() if c["mean"] or any(c["members"])]
    if bad:
        log.warning("imaginary modes at volume(s) %s: listed in %s", bad,
                    out / "imaginary_modes.csv")
    em = [p.energies_members_eV for p in points]
    inputs = inputs_from_points([(p.energy_eV, p.phonons) for p in points],
                                None if any(e is None for e in em) else np.array(em).T,
                                lattice_A=np.array([p.lattice_A for p in points]))
    summary = dict(mode="pipeline", volumes_A3=[p.volume_A3 for p in points],
                   computed_volumes=computed, n_imaginary_modes=n_imag,
                   imaginary_modes_per_volume={f"{i:02d}": c for i, c in imaginary.items()},
                   volumes_with_imaginary_modes=bad, supercell_warning=supercell_warning,
                   pressures_GPa=args.pressures_GPa,
                   n_reference_supercells=sum(p.phonons.forces.n_reference for p in points),
                   settings=settings.as_dict())
    run_qha_outputs(args, inputs, out, summary)
    if not args.no_plots:
        plot_spectra(args, points, out)
    log.info("QHA written to %s (%d volumes computed now, %d loaded)", out, len(computed),
             len(points) - len(computed))
    return 0


def plot_spectra(args, points, out: Path) -> None:
    from committee_calc.phonons.plots import plot_band_structure, plot_dos
    from committee_calc.phonons.spectra import run_band_structure, run_dos

    i = int(np.argmin([p.energy_eV for p in points]))
    p = points[i]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot_band_structure(run_band_structure(p.phonons, args.band_npoints), out / "bands.png",
                            title=f"volume {i:02d}, V = {p.volume_A3:.3f} Å³")
        plot_dos(run_dos(p.phonons), out / "dos.png", title=f"volume {i:02d}")


def main(argv=None) -> int:
    """Console entry point ``committee-qha``."""
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
