"""committee-qha: harmonic + quasi-harmonic free energies with committee error bars.

Full pipeline (stateless, resumable per volume)::

    committee-qha Cu.cif --committee committee.yaml --out qha/ \
        --scale-range 0.99 1.03 9 --supercell 3 --mesh 20 20 20 --tmax-K 800 \
        [--reference dft.yaml --labels labels.xyz --threshold-forces-std-max-eVA 0.05]

Hybrid QHA (``--static-from-reference --reference dft.yaml``): static E(V) from the reference
at each volume, phonons from the committee with the gate's fallback (reference calls counted
in ``qha_summary.json``).  QHA step alone on phonopy-qha files (no calculator)::

    committee-qha --ev e-v.dat --thermal-properties thermal_properties.yaml-* --out qha/

Each finished volume is written to ``<out>/volumes/NN/`` (phonopy yaml, forces, thermal properties, volume.json last);
a rerun loads finished volumes and computes only the missing ones (one task per volume on Dask workers with
``--workers``/``--scheduler``/``--cluster-config``). Outputs: ``qha.csv`` (T, V, G, B_T, β_V, C_P, each for the mean
potential and as member mean ± std), ``qha_members.csv``, ``qha_pressure.csv`` (with --screen-pressures-GPa),
``imaginary_modes.csv``, ``qha_summary.json``, ``summary.md``, figures (``qha.png``, ``bands.png``, ``dos.png``,
``lattice_vs_pressure.png``). Warnings (also in ``qha_summary.json``): a supercell thinner than twice the committee
cutoff (``cutoff:`` of the members; the message names the smallest diagonal --supercell that satisfies it) and
imaginary modes per volume (mean potential and members, listed with their q-points in ``imaginary_modes.csv``).
"""
from __future__ import annotations

import argparse
import logging

from committee_calc import cli
from committee_calc.committee import require_stress
from committee_calc.errors import ConfigError
from committee_calc.phonons.qha_io import inputs_from_phonopy_files
from committee_calc.phonons.qha_run import VOLUME_CHOICES, QHAOptions, VolumeScan, run_qha_files, run_qha_scan
from committee_calc.phonons.qha_summary_md import write_qha_summary_md
from committee_calc.phonons.settings import PhononSettings
from committee_calc.structures import read_structures

log = logging.getLogger("committee_calc.qha")


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="committee-qha", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structure", nargs="?", help="input structure (any ASE format; first frame)")
    cli.add_committee_arguments(p, required=False)  # the QHA-only mode (--ev) needs no committee
    cli.add_gate_arguments(p)
    cli.add_output_argument(p)
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
    g.add_argument("--relax-steps", type=cli.nonnegative_int, default=500)
    g.add_argument("--static-from-reference", action="store_true", help="hybrid QHA: static E(V) from "
                   "--reference at each volume, phonons from the committee (gated)")
    g = p.add_argument_group("phonons (phonopy)")
    g.add_argument("--supercell", type=int, nargs="+", default=[3], help="1, 3 or 9 integers")
    g.add_argument("--primitive-matrix", default=None,
                   help="'auto', or 9 comma-separated numbers; default: the input cell")
    g.add_argument("--distance-A", type=float, default=0.01)
    g.add_argument("--plusminus", choices=("auto", "yes", "no"), default="auto")
    g.add_argument("--mesh", type=cli.positive_int, nargs=3, default=[20, 20, 20])
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
    g.add_argument("--band-npoints", type=cli.positive_int, default=51)
    g = p.add_argument_group("QHA step alone (phonopy-qha inputs)")
    g.add_argument("--ev", help="e-v.dat (V, E per cell)")
    g.add_argument("--thermal-properties", nargs="+", help="thermal_properties.yaml per volume")
    g.add_argument("--efe", help="fe-v.dat: T-dependent electronic free energies")
    cli.add_executor_arguments(p, distributes="one task per missing volume (relaxation, displaced supercells)")
    return p


def settings_from_args(args) -> PhononSettings:
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


def run(argv=None) -> int:
    """The driver; raises committee_calc errors (``main`` maps them to exit code 2).
    Every input is validated before the output folder is created."""
    args = build_parser().parse_args(argv)
    spec = cli.spec_from_args(args)
    cli.check_outputs(args)
    options = QHAOptions(eos=args.eos, pressure_GPa=args.pressure_GPa, t_max_K=args.qha_tmax_K,
                         ddof=args.ddof, screen_pressures_GPa=args.screen_pressures_GPa,
                         screen_temperature_K=args.screen_temperature_K, plots=not args.no_plots,
                         band_npoints=args.band_npoints)
    if args.ev:
        if not args.thermal_properties:
            raise ConfigError("--ev needs --thermal-properties (one file per volume)")
        inputs = inputs_from_phonopy_files(args.ev, args.thermal_properties, args.efe)
        run_qha_files(inputs, args.out, options, ev_path=args.ev)
        return 0
    if not args.structure or not args.committee:
        raise ConfigError("give a structure file and --committee (or --ev with "
                          "--thermal-properties for the QHA step alone)")
    if all(getattr(args, k) is None for k in VOLUME_CHOICES):
        raise ConfigError("give the volumes (>= 5): --linear-scales, --volume-scales, --scale-range or --pressures-GPa")
    scan = VolumeScan(**{k: getattr(args, k) for k in VOLUME_CHOICES}, relax=args.relax, fmax_eVA=args.fmax_eVA,
                      relax_steps=args.relax_steps, static_from_reference=args.static_from_reference)
    atoms = read_structures(args.structure, labels=False)[0]
    settings = settings_from_args(args)
    committee = cli.load_committee_from_args(args)
    cli.check_species(committee, [atoms])
    require_stress(committee, args.pressures_GPa is not None, "--pressures-GPa")
    gate = cli.build_gate(args, "qha", committee=committee)
    res = run_qha_scan(atoms, gate, settings, scan, args.out, options,
                       committee_file=args.committee, reference_file=args.reference, spec=spec)
    log.info("QHA written to %s (%d volumes computed now, %d loaded); conclusions in %s", res.out, len(res.computed),
             len(res.points) - len(res.computed), write_qha_summary_md(res, committee))
    return 0


def main(argv=None) -> int:
    """Console entry point ``committee-qha``."""
    return cli.run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
