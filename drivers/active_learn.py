"""committee-learn: active learning over a CSP landscape (query by committee).

    committee-learn landscape.extxyz --reference ref.yaml --out al/ \
        --strategy highest_uncertainty --quantity dE --batch-size 10 \
        --threshold-kjmol 2 --energy-cutoff-kjmol 20 --target-fraction 0.05

Stateless and resumable: rerun the same command after a kill; labels already
in ``<out>/labels.extxyz`` are never recomputed.  ``--backend ridge`` trains
the in-process ridge resampling committee; other backends go through
``committee_calc.train.train_committee``.  Writes ``<out>/summary.json``.
"""
from __future__ import annotations

import argparse

from committee_calc.cli import run_cli


def add_landscape_arguments(p):
    p.add_argument("landscape", help="landscape file (extxyz, ASE db, folder) with baseline values")
    p.add_argument("--baseline-energy-key", default="baseline_energy", help="info key of baseline energies [eV]")
    p.add_argument("--baseline-forces-key", default="baseline_forces", help="arrays key of baseline forces [eV/Å]")
    p.add_argument("--molecules", default="auto",
                   help="molecules per structure: 'auto', an int, or 'none' (per-atom energies)")


def landscape_from_args(args):
    from committee_calc.cli import parse_molecules
    from committee_calc.analysis.landscape import load_landscape

    mol = None if str(args.molecules).lower() == "none" else parse_molecules(args.molecules)
    return load_landscape(args.landscape, baseline_energy_key=args.baseline_energy_key,
                          baseline_forces_key=args.baseline_forces_key, molecules=mol)


def energy_arg(args, name, unit):
    """Per-unit energy option in eV: --NAME-kjmol (per molecule) or --NAME-mev-atom."""
    from committee_calc.errors import ConfigError
    from committee_calc.units import KJMOL

    kj, mev = getattr(args, f"{name}_kjmol"), getattr(args, f"{name}_mev_atom")
    if kj is not None and mev is not None:
        raise ConfigError(f"give --{name.replace('_', '-')}-kjmol or --{name.replace('_', '-')}-mev-atom, not both")
    if kj is not None:
        if unit != "molecule":
            raise ConfigError(f"--{name.replace('_', '-')}-kjmol is per molecule; use --molecules auto/N")
        return kj * KJMOL
    if mev is not None:
        if unit != "atom":
            raise ConfigError(f"--{name.replace('_', '-')}-mev-atom is per atom; use --molecules none")
        return mev * 1e-3
    return None


def make_trainer(backend, species, n_members, molecules, seed=0):
    if backend == "ridge":
        from committee_calc.members.ridge import RidgeTrainer

        return RidgeTrainer(species, molecules=molecules, n_members=n_members, seed=seed)
    from committee_calc.active.learner import BackendTrainer

    return BackendTrainer(backend=backend, n_members=n_members)


def run(argv=None):
    from committee_calc.analysis import select
    from committee_calc.active.learner import QUANTITIES, ActiveLearner
    from committee_calc.errors import ConfigError
    from committee_calc.fileio import save_json_atomic

    p = argparse.ArgumentParser(prog="committee-learn", description=__doc__.split("\n")[0])
    add_landscape_arguments(p)
    p.add_argument("--reference", required=True, help="reference-calculator YAML")
    p.add_argument("--out", required=True, help="output folder (state, labels, training files)")
    p.add_argument("--backend", default="ridge", help="trainer backend: ridge, mace, nequip, schnetpack")
    p.add_argument("--n-members", type=int, default=8)
    p.add_argument("--strategy", choices=select.STRATEGIES, default="highest_uncertainty")
    p.add_argument("--quantity", choices=list(QUANTITIES), default="dE")
    p.add_argument("--batch-size", type=int, default=10, help="labels per iteration (retrain interval)")
    p.add_argument("--initial-size", type=int, default=None)
    for name in ("threshold", "energy_cutoff", "ei_window"):
        flag = name.replace("_", "-")
        p.add_argument(f"--{flag}-kjmol", dest=f"{name}_kjmol", type=float, default=None)
        p.add_argument(f"--{flag}-mev-atom", dest=f"{name}_mev_atom", type=float, default=None)
    p.add_argument("--target-fraction", type=float, default=0.05,
                   help="stop when at most this fraction of candidates is above the threshold")
    p.add_argument("--max-train-size", type=int, default=None)
    p.add_argument("--max-iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    ls = landscape_from_args(args)
    threshold = energy_arg(args, "threshold", ls.unit)
    if threshold is None:
        raise ConfigError("give the uncertainty threshold: --threshold-kjmol (per molecule) or --threshold-mev-atom")
    species = sorted({s for a in ls.structures for s in a.get_chemical_symbols()})
    molecules = None if ls.unit == "atom" else "auto"
    trainer = make_trainer(args.backend, species, args.n_members, molecules, args.seed)
    from committee_calc.reference import load_reference

    learner = ActiveLearner(ls, load_reference(args.reference), trainer, args.out, strategy=args.strategy,
                            quantity=args.quantity, batch_size=args.batch_size,
                            initial_size=args.initial_size, threshold_eV=threshold,
                            energy_cutoff_eV=energy_arg(args, "energy_cutoff", ls.unit),
                            target_fraction=args.target_fraction, max_train_size=args.max_train_size,
                            max_iterations=args.max_iterations,
                            ei_window_eV=energy_arg(args, "ei_window", ls.unit) or 0.0,
                            seed=args.seed, progress=not args.no_progress)
    save_json_atomic(learner.out_dir / "trainer.json", {"backend": args.backend, "species": species,
                                                         "n_members": args.n_members, "seed": args.seed,
                                                         "quantity": args.quantity, "molecules": molecules})
    res = learner.run()
    summary = {k: v for k, v in res.items() if k != "committee"}
    save_json_atomic(learner.out_dir / "summary.json", summary)
    print(f"stopped: {res['stopped']} after {res['iterations']} iterations; "
          f"{res['n_train']} labels of {res['pool_size']} candidates")
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
