"""Learning curves on the Si GPAW labels: MACE from scratch, Δ-MACE on CHGNet, fine-tuned CHGNet, bare CHGNet.

Data: ``examples/si_demo/data/seed.extxyz`` (130 GPAW-labelled Si8 frames, ``REF_energy`` /
``REF_forces`` / ``REF_stress``) is the training pool; ``heldout.extxyz`` (19 Si8 frames, never
trained on) is the test set.  Training subsets are nested: the first n frames of one permutation of
the pool drawn with ``--seed`` (n = ``--sizes``).  Per size, every trained route is a committee of
``--members`` members made by :func:`committee_calc.train.train_committee` (seeds 1000 + k,
bootstrap subsets, one member process at a time, ``n_jobs=1``):

* ``mace``: MACE from scratch (``MACE_OPTIONS``, float64, E0 = average per-atom energy);
* ``delta_mace``: the same MACE members on reference − CHGNet 0.3.0 labels, through the library's
  Δ path (``train_committee(..., baseline={backend: chgnet, version: 0.3.0})``; the written YAML
  loads as a :class:`~committee_calc.delta.DeltaCalculator`);
* ``chgnet_ft``: CHGNet 0.3.0 fine-tuned by the library's ``chgnet`` trainer (``CHGNET_OPTIONS``,
  the si_demo committee's settings: all weights trained, per-element reference energy refitted);
* ``chgnet``: bare CHGNet 0.3.0 (no training; the same at every size) and ``chgnet+offset``: the
  same with a per-atom energy offset fitted on the training subset by the library's offset
  alignment (:func:`committee_calc.calibration_offsets.fit_offsets` against the reference, applied
  by :func:`~committee_calc.calibration_offsets.apply_offsets`).

Epochs per fit: ``ceil(--structure-epochs / n)`` clipped to [``--min-epochs``, ``--max-epochs``]
(small sets get more passes, every fit a comparable number of gradient steps).  Reported per route
and size on the held-out frames: energy MAE and RMSE [meV/atom], force RMSE [eV/Å] (all
components), Spearman ρ of the committee's energy σ (raw, uncalibrated: ρ does not depend on α)
with |energy error|, labels used (n), training wall time and CPU time of the member processes.
Fitted committees are cached in ``--work`` (reused with their recorded times).  Outputs:
``OUT/foundation_learning_curve.{md,json,png}``.  Run (~30 min of CPU on one core)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/foundation_learning_curve.py
    .venv/bin/python benchmarks/foundation_learning_curve.py --quick --out /tmp/flc --work /tmp/flc/work
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from committee_calc import keys as K  # noqa: E402
from committee_calc.calibration_offsets import apply_offsets, fit_offsets  # noqa: E402
from committee_calc.config import load_committee  # noqa: E402
from committee_calc.members import build_members  # noqa: E402
from committee_calc.plotting import pyplot, save_figure  # noqa: E402
from committee_calc.units import ENERGY_SUFFIXES  # noqa: E402

DATA = ROOT / "examples" / "si_demo" / "data"
OUT = Path(__file__).resolve().parent / "out"
NAME = "foundation_learning_curve"
TARGET_MEV = 10.0
MEV = ENERGY_SUFFIXES["meV"]  # eV per meV
BASELINE = {"backend": "chgnet", "version": "0.3.0"}
MACE_OPTIONS = {"num_channels": 16, "max_L": 0, "r_max": 4.5, "num_interactions": 2, "correlation": 2,
                "max_ell": 2, "num_radial_basis": 6, "MLP_irreps": "16x0e", "radial_MLP": "[16]",
                "batch_size": 5, "valid_batch_size": 10, "lr": 0.01, "energy_weight": 20,
                "forces_weight": 1}
CHGNET_OPTIONS = {"version": "0.3.0", "learning_rate": 1e-3, "batch_size": 4, "stress_loss_ratio": 0.3,
                  "train_composition_model": True, "valid_fraction": 0.1}
TRAINED = {"mace": ("mace", None, MACE_OPTIONS), "delta_mace": ("mace", BASELINE, MACE_OPTIONS),
           "chgnet_ft": ("chgnet", None, CHGNET_OPTIONS)}
ROUTES = ("mace", "delta_mace", "chgnet_ft", "chgnet", "chgnet+offset")
LABELS = {"mace": "(a) MACE from scratch", "delta_mace": "(b) Δ-MACE on CHGNet 0.3.0",
          "chgnet_ft": "(c) fine-tuned CHGNet 0.3.0", "chgnet": "(d) bare CHGNet 0.3.0",
          "chgnet+offset": "(d') bare CHGNet 0.3.0 + per-atom offset"}
COLUMNS = ("route", "labels", "epochs", "E MAE meV/atom", "E RMSE meV/atom", "F RMSE eV/Å",
           "Spearman(σ_E,|ΔE|)", "ρ aligned", "train wall s", "train CPU s")
FULL = {"sizes": (10, 20, 40, 80, 130), "members": 3, "structure_epochs": 2000, "min_epochs": 15,
        "max_epochs": 100}
QUICK = {"sizes": (8, 16), "members": 2, "structure_epochs": 16, "min_epochs": 1, "max_epochs": 2}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(OUT), help="folder of the .md/.json/.png outputs")
    ap.add_argument("--work", default="/tmp/foundation_lc_work", help="fitted committees (cached)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    ap.add_argument("--sizes", type=int, nargs="+", help=f"training-set sizes (default {FULL['sizes']})")
    ap.add_argument("--members", type=int, help=f"committee members (default {FULL['members']})")
    ap.add_argument("--structure-epochs", type=int, help="structure-epochs per fit (epochs = this / n)")
    ap.add_argument("--min-epochs", type=int)
    ap.add_argument("--max-epochs", type=int)
    ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    ap.add_argument("--seed", type=int, default=0, help="permutation of the pool (nested subsets)")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key in base:
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    return args


def validate(args, n_pool) -> str | None:
    """The problem with the arguments (and its fix), or None."""
    sizes = list(args.sizes)
    if sizes != sorted(set(sizes)) or sizes[0] < 4 or sizes[-1] > n_pool:
        return (f"--sizes must be increasing, distinct, between 4 and the pool's {n_pool} frames; "
                f"got {sizes}")
    if args.members < 2:
        return f"--members must be >= 2 (a committee spread needs two), got {args.members}"
    if not 1 <= args.min_epochs <= args.max_epochs or args.structure_epochs < 1:
        return ("need 1 <= --min-epochs <= --max-epochs and --structure-epochs >= 1; got "
                f"{args.min_epochs}, {args.max_epochs}, {args.structure_epochs}")
    return None


def epochs_for(n, args) -> int:
    return int(min(args.max_epochs, max(args.min_epochs, math.ceil(args.structure_epochs / n))))


def fit(route, train_file, work, n_members, epochs) -> dict:
    """Train (or reuse, same epochs and members) the committee of ``route``; {yaml, wall_s, cpu_s, ...}."""
    from committee_calc.train import train_committee

    done = work / "timing.json"
    if done.is_file() and (work / "committee.yaml").is_file():
        rec = json.loads(done.read_text())
        if rec.get("epochs", epochs) == epochs and rec.get("members", n_members) == n_members:
            return rec  # the same fit, cached
    backend, baseline, options = TRAINED[route]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    yaml_path = train_committee(train_file, work, backend=backend, n_members=n_members, bootstrap=True,
                                max_epochs=epochs, model_options=options, baseline=baseline, n_jobs=1)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rec = {"yaml": yaml_path, "wall_s": time.perf_counter() - t0,
           "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
           "epochs": epochs, "members": n_members}
    done.write_text(json.dumps(rec))
    return rec


def scores(results, heldout) -> dict:
    """Held-out errors of schema results (one per held-out frame)."""
    from scipy.stats import spearmanr

    n_at = np.array([len(a) for a in heldout], float)
    err = (np.array([r[K.ENERGY] for r in results]) - np.array([a.info["REF_energy"] for a in heldout])) / n_at
    df = np.concatenate([np.asarray(r[K.FORCES]) - a.arrays["REF_forces"] for r, a in zip(results, heldout)])
    out = {"energy_mae_meV_atom": float(np.mean(np.abs(err)) / MEV),
           "energy_rmse_meV_atom": float(np.sqrt(np.mean(err ** 2)) / MEV),
           "forces_rmse_eVA": float(np.sqrt(np.mean(df ** 2))), "spearman_sigma_abs_error": None}
    if all(K.ENERGY_STD in r for r in results):
        sigma = np.array([r[K.ENERGY_STD] for r in results])
        out["spearman_sigma_abs_error"] = float(spearmanr(sigma, np.abs(err)).statistic)
    return out


def aligned_spearman(calc, train_frames, results, heldout) -> float:
    """Spearman ρ of σ_E with |energy error| after aligning the members' energies: per-member, per-atom
    offsets fitted on the training subset against the reference (library ``fit_offsets``,
    ``apply_offsets``); removes the constant per-member shift that e.g. CHGNet members with their own
    refitted reference energies carry, which otherwise dominates the raw spread."""
    from scipy.stats import spearmanr

    train_res = calc.predict(train_frames)
    names = [f"m{k}" for k in range(len(results[0][K.ENERGY_MEMBERS]))]
    offsets, _ = fit_offsets(np.array([r[K.ENERGY_MEMBERS] for r in train_res]),
                             [a.numbers for a in train_frames], names,
                             reference=[a.info["REF_energy"] for a in train_frames])
    sigma, err = [], []
    for r, a in zip(results, heldout):
        e = np.array([p[K.ENERGY] for p in apply_offsets([{K.ENERGY: v} for v in r[K.ENERGY_MEMBERS]],
                                                          a.numbers, offsets)])
        sigma.append(e.std(ddof=1))
        err.append(abs(e.mean() - a.info["REF_energy"]))
    return float(spearmanr(sigma, err).statistic)


def bare_rows(sizes, pool_subsets, heldout, want) -> list:
    """Bare CHGNet 0.3.0 on the held-out frames; with ``chgnet+offset`` also per size with the
    library's per-atom offset (fit_offsets on the training subset, apply_offsets)."""
    (bare,) = build_members(dict(BASELINE))

    def predict(frames):
        return [p[0] for p in type(bare).predict_batch([bare], frames, ("energy", "forces"))]

    res = predict(heldout)
    rows = []
    if "chgnet" in want:
        rows.append({"route": "chgnet", "labels": 0, "epochs": 0, **scores(res, heldout),
                     "train_wall_s": 0.0, "train_cpu_s": 0.0})
    if "chgnet+offset" in want:
        for n in sizes:
            frames = pool_subsets[n]
            t0 = time.perf_counter()
            e_train = np.array([[r[K.ENERGY]] for r in predict(frames)])
            with warnings.catch_warnings():  # its spread report needs >= 2 members: NaN for one
                warnings.simplefilter("ignore", RuntimeWarning)
                offsets, _ = fit_offsets(e_train, [a.numbers for a in frames], [bare.name],
                                         reference=[a.info["REF_energy"] for a in frames])
            shifted = [apply_offsets([r], a.numbers, offsets)[0] for r, a in zip(res, heldout)]
            rows.append({"route": "chgnet+offset", "labels": n, "epochs": 0, **scores(shifted, heldout),
                         "train_wall_s": time.perf_counter() - t0, "train_cpu_s": 0.0,
                         "offset_eV_per_atom": offsets.offsets[0]})
    return rows


def table(rows) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["route"], str(r["labels"]), str(r["epochs"]), f(r["energy_mae_meV_atom"], ".1f"),
                 f(r["energy_rmse_meV_atom"], ".1f"), f(r["forces_rmse_eVA"], ".3f"),
                 f(r["spearman_sigma_abs_error"], ".2f"), f(r.get("spearman_aligned"), ".2f"),
                 f(r["train_wall_s"], ".0f"), f(r["train_cpu_s"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows, n_max, n_pool) -> str:
    hits = [r for r in rows if r["energy_mae_meV_atom"] <= TARGET_MEV]
    if hits:
        best = min(hits, key=lambda r: (r["labels"], r["energy_mae_meV_atom"]))
        return (f"-> {LABELS[best['route']]} reaches {TARGET_MEV:g} meV/atom held-out energy MAE with the "
                f"fewest labels: {best['labels']} ({best['energy_mae_meV_atom']:.1f} meV/atom)")
    best = min(rows, key=lambda r: r["energy_mae_meV_atom"])
    return (f"-> no route reaches {TARGET_MEV:g} meV/atom held-out energy MAE within {n_max} labels "
            f"(pool: {n_pool}); best: {LABELS[best['route']]} at {best['labels']} labels, "
            f"{best['energy_mae_meV_atom']:.1f} meV/atom")


def figure(rows, path) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    plt = pyplot()
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.2))
    sizes = sorted({r["labels"] for r in rows if r["labels"]})
    styles = {"mace": "o-", "delta_mace": "s-", "chgnet_ft": "^-", "chgnet+offset": "d:"}
    for route in ROUTES:
        rs = sorted((r for r in rows if r["route"] == route), key=lambda r: r["labels"])
        if not rs:
            continue
        if route == "chgnet":  # no labels: a horizontal line over the whole range
            for ax, key in ((ax_e, "energy_mae_meV_atom"), (ax_f, "forces_rmse_eVA")):
                ax.axhline(rs[0][key], color="grey", lw=1.5, label=LABELS[route])
            continue
        x = [r["labels"] for r in rs]
        ax_e.plot(x, [r["energy_mae_meV_atom"] for r in rs], styles[route], label=LABELS[route])
        ax_f.plot(x, [r["forces_rmse_eVA"] for r in rs], styles[route], label=LABELS[route])
    ax_e.axhline(TARGET_MEV, color="k", ls="--", lw=1, label=f"{TARGET_MEV:g} meV/atom target")
    ax_e.set_yscale("log")
    top = max(r["energy_mae_meV_atom"] for r in rows)
    ax_e.set_yticks([t for t in (5, 10, 20, 30, 50, 70, 100, 200, 300, 500) if t <= 1.3 * top])
    for ax, ylabel in ((ax_e, "held-out energy MAE [meV/atom]"), (ax_f, "held-out force RMSE [eV/Å]")):
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xlim(sizes[0] / 1.15, sizes[-1] * 1.15)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training labels (GPAW Si8 frames)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_e.legend(fontsize=7)
    fig.suptitle("Si: held-out errors (19 frames) vs training labels", fontsize=10)
    save_figure(fig, path)


def main(argv=None) -> int:
    from ase.io import read, write

    args = parse(argv)
    pool = read(str(DATA / "seed.extxyz"), ":")
    heldout = read(str(DATA / "heldout.extxyz"), ":")
    problem = validate(args, len(pool))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    out, work = Path(args.out), Path(args.work)
    order = np.random.default_rng(args.seed).permutation(len(pool))
    subsets = {n: [pool[i] for i in order[:n]] for n in args.sizes}
    header = (f"torch {torch.__version__}, 1 thread, members trained one at a time; pool {len(pool)} / held-out "
          f"{len(heldout)} Si8 frames (GPAW PBE); nested subsets {list(args.sizes)} (permutation seed "
          f"{args.seed}); committees of {args.members} members (seeds 1000+k, bootstrap); epochs = "
          f"ceil({args.structure_epochs}/n) in [{args.min_epochs}, {args.max_epochs}]; routes {args.routes}")
    print(header)
    print(f"MACE options {MACE_OPTIONS}\nCHGNet fine-tune options {CHGNET_OPTIONS}; Δ baseline {BASELINE}",
          flush=True)
    rows = bare_rows(args.sizes, subsets, heldout, args.routes)
    for n in args.sizes:
        sub = work / f"n{n:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        train_file = sub / "train.extxyz"
        write(str(train_file), subsets[n], format="extxyz")
        epochs = epochs_for(n, args)
        for route in (r for r in ROUTES if r in TRAINED and r in args.routes):
            rec = fit(route, train_file, sub / route, args.members, epochs)
            calc = load_committee(rec["yaml"])
            res = calc.predict(heldout)
            row = {"route": route, "labels": n, "epochs": epochs, **scores(res, heldout),
                   "spearman_aligned": aligned_spearman(calc, subsets[n], res, heldout),
                   "train_wall_s": rec["wall_s"], "train_cpu_s": rec["cpu_s"]}
            rows.append(row)
            print(f"  n={n:4d} {route:<11} E MAE {row['energy_mae_meV_atom']:7.1f} meV/atom  F RMSE "
                  f"{row['forces_rmse_eVA']:.3f} eV/Å  ρ {row['spearman_sigma_abs_error']:+.2f} "
                  f"(aligned {row['spearman_aligned']:+.2f})  "
                  f"train {rec['wall_s']:.0f} s wall", flush=True)
    rows.sort(key=lambda r: (ROUTES.index(r["route"]), r["labels"]))
    text = table(rows)
    line = verdict(rows, max(args.sizes), len(pool))
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    (out / f"{NAME}.md").write_text(f"{header}\n\n{text}\n\n{line}\n")
    (out / f"{NAME}.json").write_text(json.dumps(
        {"settings": settings, "mace_options": MACE_OPTIONS, "chgnet_options": CHGNET_OPTIONS,
         "baseline": BASELINE, "n_heldout": len(heldout), "target_meV_atom": TARGET_MEV, "rows": rows,
         "verdict": line, "header": header}, indent=1))
    figure(rows, out / f"{NAME}.png")
    print(f"\n{text}\n\nwritten: {out / NAME}.{{md,json,png}}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
