"""committee-mc: threshold (lid) or downhill Monte Carlo with on-the-fly learning.

::

    committee-mc landscape.extxyz --committee committee.yaml --out mc/ \\
        --n-starts 5 --steps 2000 --lid-kjmol 10 \\
        --reference dft.yaml --labels labels.extxyz \\
        --threshold-energy-std-per-molecule-kjmol 2 --cap-energy-std-per-molecule-kjmol 50

Start structures: the lowest-energy structure of the input, then farthest
point sampling in descriptor space (``--n-starts``).  Lids are in kJ/mol per
molecule (``--lid-kjmol``, molecular crystals) or eV/atom (``--lid-eV-per-atom``).
Network solids and metals: ``--units atoms --moves displace=1:0.1,cell_volume=0.1`` (every
atom its own unit, no molecule detection; kJ/mol and per-molecule values then per atom).
Without ``--reference`` the run is committee-only: a ``--cap-…`` or non-finite
committee output ends a chain (reason in summary.json).

Biased sampling: ``--bias hal --hal-tau T`` (E - T σ_E) or ``--bias udd --udd-a-eV A --udd-b-eV B``
make the chains compare biased energies; steps.csv keeps the unbiased trial energy beside them.

Outputs per chain ``OUT/chain_XXX/``: ``trajectory.extxyz`` (start + every
accepted structure, with committee uncertainties), ``steps.csv`` (one row per
step), ``state.json`` (current structure, RNG bit-generator state, lid
schedule, adapted step sizes; rewritten atomically after *every* step),
``energy.png`` and ``uncertainty.png``; ``OUT/run.json`` (settings, chosen
starts) and ``OUT/summary.json``.  Rerunning the same command resumes every
chain exactly where it stopped (same random stream); a label appended just
before a kill is reused, never duplicated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from committee_calc.bias import add_bias_arguments, bias_from_args
from committee_calc.cli import (
    ArgumentParser,
    add_committee_arguments,
    add_gate_arguments,
    add_output_argument,
    build_gate,
    check_outputs,
    check_species,
    load_committee_from_args,
    nonnegative_int,
    positive_int,
    run_cli,
)
from committee_calc.mc.moves import DEFAULT_ATOM_MOVES, DEFAULT_MOVES, parse_moves
from committee_calc.mc.runner import UNITS, MCSettings, run_threshold_mc, unit_count
from committee_calc.structures import read_structures


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-mc", description=__doc__.split("\n\n")[0])
    p.add_argument("structures", help="start structure(s) or landscape (any ASE format, or a folder)")
    add_output_argument(p)
    add_committee_arguments(p)
    add_gate_arguments(p, reference_tasks=True)
    g = p.add_argument_group("Monte Carlo")
    g.add_argument("--n-starts", type=positive_int, default=1, help="chains: start structures chosen by FPS")
    g.add_argument("--steps", type=nonnegative_int, default=1000, help="MC steps per chain")
    g.add_argument("--mode", choices=("threshold", "downhill"), default="threshold")
    g.add_argument("--units", choices=UNITS, default="molecules",
                   help="what moves and per-unit energies count: molecules (from connectivity, or "
                        "--molecules N) or atoms (every atom its own unit: network solids, metals; "
                        "kJ/mol and per-molecule values are then per atom)")
    g.add_argument("--lid-kjmol", type=float, help="lid above the start energy, kJ/mol per molecule")
    g.add_argument("--lid-eV-per-atom", dest="lid_eV_per_atom", type=float, help="lid, eV/atom")
    g.add_argument("--lid-raise-kjmol", type=float, help="raise the lid by this (kJ/mol per molecule)")
    g.add_argument("--lid-raise-eV-per-atom", dest="lid_raise_eV_per_atom", type=float)
    g.add_argument("--lid-every", type=positive_int, help="raise the lid every K steps")
    g.add_argument("--max-lid-raises", type=nonnegative_int, default=None)
    g.add_argument("--moves", default=None,
                   help="NAME=PROB[:STEP],... with NAME in translate (Å), rotate (deg), displace "
                        "(Å), cell_length (fraction), cell_angle (deg), cell_volume (fraction); "
                        f"default {DEFAULT_MOVES} ({DEFAULT_ATOM_MOVES} with --units atoms)")
    g.add_argument("--adaptive-target", type=float, default=None, help="target acceptance fraction (0-1)")
    g.add_argument("--adaptive-every", type=positive_int, default=50)
    g.add_argument("--seed", type=nonnegative_int, default=0)
    g.add_argument("--no-plots", action="store_true")
    add_bias_arguments(p)
    return p


def settings_from_args(args) -> MCSettings:
    return MCSettings(
        steps=args.steps, n_starts=args.n_starts, mode=args.mode, lid_kjmol=args.lid_kjmol,
        lid_eV_per_atom=args.lid_eV_per_atom, lid_raise_kjmol=args.lid_raise_kjmol,
        lid_raise_eV_per_atom=args.lid_raise_eV_per_atom, lid_every=args.lid_every,
        max_lid_raises=args.max_lid_raises,
        moves=parse_moves(args.moves if args.moves is not None
                          else DEFAULT_ATOM_MOVES if args.units == "atoms" else DEFAULT_MOVES),
        adaptive_target=args.adaptive_target, adaptive_every=args.adaptive_every, seed=args.seed,
        plots=not args.no_plots, units=args.units, bias=bias_from_args(args))


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    settings = settings_from_args(args)
    structures = read_structures(args.structures, labels=False)
    # the committee reports σ_E per molecule (or atom) with this count too (labels, trajectory)
    molecules = unit_count(structures, settings.units, args.molecules)
    committee = load_committee_from_args(args, molecules=molecules)
    check_species(committee, structures)
    gate = build_gate(args, "mc", committee=committee, molecules=molecules)
    info = {"structures": str(args.structures),
            "argv": list(argv) if argv is not None else sys.argv[1:]}
    totals = run_threshold_mc(structures, gate, args.out, settings, info=info)
    print(summary_line(totals, args.out))
    return 0


def summary_line(totals: dict, out) -> str:
    """The one line the driver ends with (the numbers are in ``<out>/summary.json``)."""
    chains = totals["chains"]
    steps, accepted = sum(c["steps"] for c in chains), sum(c["accepted"] for c in chains)
    retrains = totals["n_retrains_this_session"]
    return (f"mc: {len(chains)} chain{'s' * (len(chains) != 1)}, {steps} steps, {accepted} accepted "
            f"({100 * accepted / max(1, steps):.0f} %), {totals['n_terminated']} terminated; this session "
            f"{totals['n_committee_calls_this_session']} committee and {totals['n_reference_calls_this_session']} "
            f"reference calls{f', {retrains} retrains' if retrains else ''}; summary in {Path(out) / 'summary.md'}")


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
