"""committee-mc: threshold (lid) or downhill Monte Carlo with on-the-fly learning.

::

    committee-mc landscape.extxyz --committee committee.yaml --out mc/ \\
        --n-starts 5 --steps 2000 --lid-kjmol 10 \\
        --reference dft.yaml --labels labels.extxyz \\
        --threshold-energy-std-per-molecule-kjmol 2 --cap-energy-std-per-molecule-kjmol 50

Start structures: the lowest-energy structure of the input, then farthest
point sampling in descriptor space (``--n-starts``).  Lids are in kJ/mol per
molecule (``--lid-kjmol``, molecular crystals) or eV/atom (``--lid-eV-per-atom``).

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
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("committee_calc.mc")

CSV_COLUMNS = ("step", "move", "accepted", "trial_energy_eV", "energy_eV", "lid_eV",
               "energy_std_eV", "energy_std_per_molecule_kjmol", "energy_std_per_atom_meV",
               "forces_std_max_eVA", "gate_decision", "gate_reason", "label_index", "step_size")
DEFAULT_MOVES = "translate=2:0.3,rotate=2:10,cell_length=1:0.02,cell_angle=1:1.5,cell_volume=1:0.03"


def parse_moves(text: str) -> dict:
    """'translate=2:0.3,rotate=1' -> {name: {probability, step}} (step optional)."""
    from committee_calc.errors import ConfigError

    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, spec = item.partition("=")
        if not spec:
            raise ConfigError(f"--moves item {item!r} must be NAME=PROBABILITY[:STEP]")
        p, _, s = spec.partition(":")
        try:
            out[name.strip()] = {"probability": float(p), **({"step": float(s)} if s else {})}
        except ValueError:
            raise ConfigError(f"--moves item {item!r}: probability and step must be numbers") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    from committee_calc.cli import add_committee_arguments, add_gate_arguments

    p = argparse.ArgumentParser(prog="committee-mc", description=__doc__.split("\n\n")[0])
    p.add_argument("structures", help="start structure(s) or landscape (any ASE format, or a folder)")
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    add_committee_arguments(p)
    add_gate_arguments(p)
    g = p.add_argument_group("Monte Carlo")
    g.add_argument("--n-starts", type=int, default=1, help="chains: start structures chosen by FPS")
    g.add_argument("--steps", type=int, default=1000, help="MC steps per chain")
    g.add_argument("--mode", choices=("threshold", "downhill"), default="threshold")
    g.add_argument("--lid-kjmol", type=float, help="lid above the start energy, kJ/mol per molecule")
    g.add_argument("--lid-eV-per-atom", dest="lid_eV_per_atom", type=float, help="lid, eV/atom")
    g.add_argument("--lid-raise-kjmol", type=float, help="raise the lid by this (kJ/mol per molecule)")
    g.add_argument("--lid-raise-eV-per-atom", dest="lid_raise_eV_per_atom", type=float)
    g.add_argument("--lid-every", type=int, help="raise the lid every K steps")
    g.add_argument("--max-lid-raises", type=int, default=None)
    g.add_argument("--moves", default=DEFAULT_MOVES,
                   help="NAME=PROB[:STEP],... with NAME in translate (Å), rotate (deg), displace "
                        "(Å), cell_length (fraction), cell_angle (deg), cell_volume (fraction)")
    g.add_argument("--adaptive-target", type=float, default=None, help="target acceptance (0-1)")
    g.add_argument("--adaptive-every", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-plots", action="store_true")
    return p


def _lids(args, atoms, n_mol):
    from committee_calc.errors import ConfigError
    from committee_calc.mc.threshold import lid_from_units

    if args.mode == "downhill":
        lid = None
    elif args.lid_kjmol is None and args.lid_eV_per_atom is None:
        raise ConfigError("threshold mode needs a lid: --lid-kjmol (per molecule) or --lid-eV-per-atom")
    else:
        lid = lid_from_units(len(atoms), n_mol, lid_kjmol=args.lid_kjmol, lid_eV_per_atom=args.lid_eV_per_atom)
    raise_ = 0.0
    if args.lid_raise_kjmol is not None or args.lid_raise_eV_per_atom is not None:
        raise_ = lid_from_units(len(atoms), n_mol, lid_kjmol=args.lid_raise_kjmol,
                                lid_eV_per_atom=args.lid_raise_eV_per_atom)
        if not args.lid_every:
            raise ConfigError("--lid-raise-* needs --lid-every K")
    return lid, raise_


def _caps(args):
    """Hard caps for a committee-only run (no --reference; the gate applies them otherwise)."""
    from committee_calc.cli import measures_from_args

    return measures_from_args(args, "cap_", parse_mol(args))


def parse_mol(args):
    from committee_calc.cli import parse_molecules

    return parse_molecules(args.molecules) or "auto"


def _calculator(args, committee):
    from committee_calc.cli import THRESHOLD_OPTIONS, build_gate_from_args

    has_thr = any(getattr(args, "threshold_" + o, None) is not None for o in THRESHOLD_OPTIONS)
    if args.reference is None and not has_thr:
        if args.retrain_every:
            from committee_calc.errors import ConfigError

            raise ConfigError("--retrain-every needs --reference and --labels (labels to train on)")
        return committee, _caps(args)
    return build_gate_from_args(args, "mc", committee=committee, n_molecules=parse_mol(args)), {}


def _trajectory_frame(mc, rec):
    from committee_calc.io import attach_uncertainties

    a = mc.atoms.copy()
    attach_uncertainties(a, rec.get("results") or {}, members=False)
    a.info.update(mc_step=rec["step"], mc_energy_eV=mc.energy, mc_lid_eV=rec["lid_eV"],
                  gate_decision=rec["gate_decision"] or "")
    return a


def _truncate_outputs(folder, state):
    """Make trajectory and CSV agree with state.json after a kill (drop anything newer)."""
    from committee_calc.fileio import atomic_write_text, read_frames_repair, write_structures_atomic

    traj, csvp = folder / "trajectory.extxyz", folder / "steps.csv"
    if traj.exists():
        frames = read_frames_repair(traj)  # a frame torn by the kill is cut off
        if len(frames) > state["n_accepted"] + 1:
            write_structures_atomic(traj, frames[: state["n_accepted"] + 1])
    if csvp.exists():
        lines = csvp.read_text().splitlines(keepends=True)
        keep = [lines[0]] + [ln for ln in lines[1:] if ln.endswith("\n")
                             and int(ln.split(",", 1)[0]) <= state["step"]]
        if len(keep) != len(lines):
            atomic_write_text(csvp, "".join(keep))


def run_chain(folder, atoms, calc, caps, args, seed, run_id, store):
    from committee_calc.fileio import CsvLog, append_frame, load_json, save_json_atomic
    from committee_calc.mc.moves import make_whole
    from committee_calc.mc.threshold import ThresholdMC, label_replay
    from committee_calc.units import KJMOL

    folder.mkdir(parents=True, exist_ok=True)
    state = load_json(folder / "state.json")
    if state is not None:
        _truncate_outputs(folder, state)
        mc = ThresholdMC.from_state(state, calc)
        mc.label_lookup = label_replay(store, run_id)
        log.info("%s: resuming at step %d", folder.name, mc.step_index)
    else:
        _, topo = make_whole(atoms)
        lid, raise_ = _lids(args, atoms, topo.n_molecules)
        mc = ThresholdMC(atoms, calc, parse_moves(args.moves), lid_eV=lid, mode=args.mode,
                         lid_raise_eV=raise_, lid_every=args.lid_every,
                         max_lid_raises=args.max_lid_raises, seed=seed,
                         adaptive_target=args.adaptive_target, adaptive_every=args.adaptive_every,
                         run_id=run_id, hard_cap=caps)
        for f in ("trajectory.extxyz", "steps.csv"):
            (folder / f).unlink(missing_ok=True)
    csv = CsvLog(folder / "steps.csv", CSV_COLUMNS)
    n_mol, n_at = mc.n_molecules, len(mc.atoms)

    def on_step(mc, rec):
        if rec["accepted"]:
            append_frame(folder / "trajectory.extxyz", _trajectory_frame(mc, rec))
        row = {k: rec.get(k) for k in CSV_COLUMNS}
        row["energy_std_per_molecule_kjmol"] = rec["energy_std_eV"] / n_mol / KJMOL
        row["energy_std_per_atom_meV"] = rec["energy_std_eV"] / n_at * 1e3
        row["accepted"] = int(rec["accepted"])
        row["label_index"] = "" if rec.get("label_index") is None else rec["label_index"]
        csv.append(row)
        save_json_atomic(folder / "state.json", mc.state())

    if not mc.terminated and mc.step_index < args.steps:
        mc.run(args.steps, callback=on_step)
    if mc.terminated:
        log.info("%s: terminated at step %d: %s", folder.name, mc.step_index, mc.terminated)
    if not args.no_plots:
        plot_chain(folder)
    return mc


def plot_chain(folder):
    """energy.png (energy, lid, trial energies; labelled steps marked) and uncertainty.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from committee_calc.fileio import CsvLog

    rows = CsvLog(folder / "steps.csv", CSV_COLUMNS).rows()
    if not rows:
        return

    def col(k):
        return np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])

    step, e, lid, trial = col("step"), col("energy_eV"), col("lid_eV"), col("trial_energy_eV")
    unc = col("energy_std_per_molecule_kjmol")
    lab = np.array([r["gate_decision"] == "reference" for r in rows])
    e0 = e[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step, trial - e0, ".", ms=2, color="0.7", label="trial")
    ax.step(step, e - e0, where="post", label="current")
    if np.isfinite(lid).any():
        ax.step(step, lid - e0, where="post", color="r", label="lid")
    ax.plot(step[lab], (trial - e0)[lab], "kx", label="labelled (reference)")
    ax.set_xlabel("MC step")
    ax.set_ylabel("E - E0 (eV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "energy.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(step, unc, ".", ms=3, label="committee σ_E")
    ax.semilogy(step[lab], unc[lab], "kx", label="labelled")
    ax.set_xlabel("MC step")
    ax.set_ylabel("σ_E per molecule (kJ/mol)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "uncertainty.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from committee_calc.cli import load_committee_from_args, read_structures, run_cli

    def _main(argv):
        from committee_calc.errors import ConfigError
        from committee_calc.fileio import load_json, save_json_atomic
        from committee_calc.mc.threshold import select_starts

        args = build_parser().parse_args(argv)
        if args.steps < 0 or args.n_starts < 1:
            raise ConfigError("--steps must be >= 0 and --n-starts >= 1")
        parse_moves(args.moves)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        structures = read_structures(args.structures)
        if args.molecules is None:
            # rigid-molecule MC keeps the molecule count of the start: fix it for the
            # per-molecule measures (a count from connectivity per trial would drift on contacts)
            from committee_calc.molecules import count_molecules

            counts = {count_molecules(a) for a in structures}
            args.molecules = str(counts.pop()) if len(counts) == 1 else "auto"
        committee = load_committee_from_args(args)
        calc, caps = _calculator(args, committee)
        run = load_json(out / "run.json")
        if run is None:
            starts = select_starts(structures, args.n_starts, committee=committee) \
                if len(structures) > 1 else [0]
            run = {"starts": starts, "seed": args.seed, "structures": str(args.structures),
                   "argv": list(argv) if argv is not None else sys.argv[1:]}
            save_json_atomic(out / "run.json", run)
        elif run["seed"] != args.seed:
            raise ConfigError(f"{out} was started with --seed {run['seed']}; resume with the same "
                              "seed or use a new --out")
        store = getattr(calc, "label_store", None)
        summary = []
        for c, idx in enumerate(run["starts"]):
            mc = run_chain(out / f"chain_{c:03d}", structures[idx], calc, caps, args,
                           seed=[run["seed"], c], run_id=f"{out.resolve().name}/chain_{c:03d}",
                           store=store)
            summary.append({"chain": c, "start_index": idx, "steps": mc.step_index,
                            "accepted": mc.n_accepted, "terminated": mc.terminated,
                            "e0_eV": mc.e0, "energy_eV": mc.energy})
        totals = {"chains": summary,
                  "n_terminated": sum(1 for s in summary if s["terminated"]),
                  "n_reference_calls_this_session": getattr(calc, "n_reference_calls", 0),
                  "n_committee_calls_this_session": getattr(calc, "n_committee_calls", None),
                  "n_retrains_this_session": getattr(calc, "n_retrains", 0)}
        save_json_atomic(out / "summary.json", totals)
        print(json.dumps({k: v for k, v in totals.items() if k != "chains"}))
        return 0

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
