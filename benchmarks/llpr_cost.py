"""LLPR (one MACE model + last-layer covariance) against a deep committee: cost and ranking.

Part 1, accuracy: 4 small MACE models are trained by ``committee_calc.train.train_committee``
on the Si demo seed set (``examples/si_demo/data/seed.extxyz``, GPAW labels ``REF_*``), split
into ``train`` (85 %) and ``calib`` (15 %, never trained on).  Member 0 gets its LLPR covariance
from ``train`` and its calibration α, ς from ``calib`` (:func:`~committee_calc.members.mace_llpr_fit.fit_llpr`).
On the held-out frames (``examples/si_demo/data/heldout.extxyz``) the script prints the Spearman
rank correlation of σ_E with the absolute energy error for

* LLPR: analytic σ of member 0 against |E_0 − E_ref|;
* LLPR K = 8 pseudo-members (committee spread) against |E_0 − E_ref|, full posterior,
  ``rank`` r = ``--ranks`` (:meth:`~committee_calc.members.mace_llpr.LLPRModel.sample`) and
  ``sampling: sigma`` (members E + z_k σ, whose spread is σ exactly);
* the deep committee of the 4 models (spread) against |Ē − E_ref|.

and, per rank r, the fraction of the posterior energy variance kept: averaged over the training
set (``variance_kept``) and on the held-out frames (mean σ_r² / mean σ²), with the Spearman
correlation of the rank-r analytic σ_r.  Forces: the exact posterior force variance of member 0
(Σ_j (∇(φ·b_j))² over the D columns b_j of α(C + ς²I)^(-1/2), D gradient rows), the share of it
that rank r and ``sampling: sigma`` keep on the held-out frames, and the Spearman correlation of
each one's RMS σ_F with the frame's force RMSE (member 0; the deep committee: its mean).

Part 2, cost: median process CPU time per call (one thread, interleaved repeats; a new
structure every call) on rattled Si8 and Si64 cells for

* ``model E`` / ``model EFS``: member 0 alone (:class:`~committee_calc.members.mace.MACEMember`,
  TorchScript): its forward pass for the energy only (graph included, no backward) / its
  ``predict`` of energy + forces + stress;
* ``LLPR E+σ``: :class:`~committee_calc.members.mace_llpr.LLPRCalculator`, energy and σ (no backward);
* ``LLPR EFS+σ``: the same with forces and stress;
* ``LLPR K=8 EFS``: a CommitteeCalculator of 8 pseudo-members (energy, forces, stress of each;
  full posterior: one backward pass of 1 + 4 gradient rows);
* ``K=8 r=R EFS``: the same with ``rank: R`` (1 + R rows);
* ``K=8 σ EFS``: the same with ``sampling: sigma`` (1 + 1 rows);
* ``deep M=8 EFS``: a CommitteeCalculator of 8 MACE members (the 4 models, twice).

Ratios are to ``model E`` (for E+σ) and ``model EFS`` (the others).  Models are cached in
``--work``.  Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llpr_cost.py [--repeats 30] [--epochs 40] \
        [--ranks 1,2,3] [--tune-malloc]

``--tune-malloc`` keeps freed memory in glibc's heap (``mallopt``, the same as the environment
variables ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``): a batched
backward pass allocates tensors R times larger, which glibc by default maps fresh (page faults)
on every call.  The note reports both.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "si_demo" / "data"
MACE_OPTIONS = {"num_channels": 16, "max_L": 0, "r_max": 4.5, "num_interactions": 2, "correlation": 2,
                "max_ell": 2, "num_radial_basis": 6, "MLP_irreps": "16x0e", "radial_MLP": "[16]",
                "batch_size": 5, "valid_batch_size": 10, "lr": 0.01, "energy_weight": 20,
                "forces_weight": 1}


def split_seed(work: Path, seed=0):
    from ase.io import read, write

    frames = read(str(DATA / "seed.extxyz"), ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    n_cal = max(2, int(round(0.15 * len(frames))))
    cal, train = [frames[i] for i in order[:n_cal]], [frames[i] for i in order[n_cal:]]
    write(str(work / "train.extxyz"), train)
    write(str(work / "calib.extxyz"), cal)
    return train, cal


def train_models(work: Path, epochs: int, jobs: int) -> list:
    from committee_calc.train import train_committee

    models = sorted((work / "committee").glob("*.model"))
    if len(models) < 4:
        t0 = time.perf_counter()
        train_committee(work / "train.extxyz", work / "committee", backend="mace", n_members=4,
                        max_epochs=epochs, model_options=MACE_OPTIONS, n_jobs=jobs)
        print(f"trained 4 MACE members in {time.perf_counter() - t0:.0f} s", flush=True)
        models = sorted((work / "committee").glob("*.model"))
    return [str(p) for p in models]


def low_rank_sigma(core, phi, rank):
    """Analytic σ (n,) [eV] of the rank-r posterior of :meth:`LLPRModel.sample` (None: full)."""
    lam, vec, reg = core.eig
    top = np.arange(len(lam)) if rank is None else np.argsort(-lam, kind="stable")[:rank]
    return core.alpha * np.sqrt(((phi @ vec[:, top]) ** 2 / (lam[top] + reg)).sum(axis=1))


def accuracy(models, train, cal, heldout, ranks):
    from scipy.stats import spearmanr

    from committee_calc.committee import CommitteeCalculator
    from committee_calc.members.mace import MACEMember
    from committee_calc.members.mace_llpr import LLPRCalculator, LLPRMember
    from committee_calc.members.mace_llpr_fit import features, fit_llpr

    fit = fit_llpr(models[0], train, cal)
    e_ref = np.array([a.info["REF_energy"] for a in heldout])
    llpr = LLPRCalculator(models[0])
    calcs = {"llpr": llpr, "pseudo": CommitteeCalculator(LLPRMember.from_file(models[0], members=8, seed=0))}
    for r in ranks:
        calcs[f"pseudo r={r}"] = CommitteeCalculator(LLPRMember.from_file(models[0], members=8, seed=0, rank=r))
    calcs["pseudo sigma"] = CommitteeCalculator(LLPRMember.from_file(models[0], members=8, sampling="sigma"))
    calcs["deep"] = CommitteeCalculator([MACEMember.from_file(p) for p in models])
    out = {}
    for name, calc in calcs.items():
        e, s = [], []
        for a in heldout:
            b = a.copy()
            b.calc = calc
            e.append(b.get_potential_energy())
            s.append(calc.get_property("energy_std", b))
        err = np.abs(np.array(e) - e_ref)
        out[name] = (float(spearmanr(s, err).statistic), float(np.sqrt(np.mean(err ** 2))),
                     float(np.sqrt(np.mean(np.square(s)))))
    core, kept = llpr.core, {}  # the rank-r posterior's analytic σ on held-out frames
    phi, pred = features(core, heldout)
    full = low_rank_sigma(core, phi, None)
    for r in ranks:
        sig = low_rank_sigma(core, phi, r)
        variance = LLPRMember.from_file(models[0], members=2, rank=r)[0].core.variance_kept
        kept[r] = (variance, float(np.mean(sig ** 2) / np.mean(full ** 2)),
                   float(spearmanr(sig, np.abs(pred - e_ref)).statistic))
    return fit, out, kept, force_uncertainty(models, heldout, ranks)


def force_uncertainty(models, heldout, ranks):
    """Held-out force variance kept (rank r, sigma) and Spearman(RMS σ_F, force RMSE) per kind."""
    import torch
    from scipy.stats import spearmanr

    from committee_calc import keys as K
    from committee_calc.committee import CommitteeCalculator
    from committee_calc.members.mace import MACEMember
    from committee_calc.members.mace_llpr import LLPRModel

    core = LLPRModel(models[0], members=2)
    dim = core.last.dim
    core.dw = torch.tensor((core.alpha * core.proj).T, dtype=core.last.w.dtype)  # D exact rows
    order = np.argsort(-core.eig[0], kind="stable")  # eigen-directions by λ, as rank r keeps them
    sigma_core = LLPRModel(models[0], members=8, sampling="sigma")
    deep = CommitteeCalculator([MACEMember.from_file(p) for p in models])
    var = {"full": [], "sigma": [], **{r: [] for r in ranks}, "deep": []}
    err, err_deep = [], []
    for a in heldout:
        means, per = core.run([a], ("energy", "forces"), members=range(0, 2 * dim, 2))
        g = np.array([per[0][k]["forces"] - means[0]["forces"] for k in range(0, 2 * dim, 2)])  # (D,N,3)
        var["full"].append(np.mean((g ** 2).sum(0)))
        for r in ranks:
            var[r].append(np.mean((g[order[:r]] ** 2).sum(0)))
        _, ps = sigma_core.run([a], ("energy", "forces"), members=range(8))
        var["sigma"].append(np.mean(np.var([p["forces"] for p in ps[0].values()], axis=0, ddof=1)))
        err.append(np.sqrt(np.mean((means[0]["forces"] - a.arrays["REF_forces"]) ** 2)))
        b = a.copy()
        b.calc = deep
        err_deep.append(np.sqrt(np.mean((b.get_forces() - a.arrays["REF_forces"]) ** 2)))
        var["deep"].append(np.mean(deep.results[K.FORCES_MEMBERS].var(axis=0, ddof=1)))
    full = np.mean(var["full"])
    return {k: (float(np.mean(v) / full) if k != "deep" else float("nan"),
                float(spearmanr(np.sqrt(v), err_deep if k == "deep" else err).statistic))
            for k, v in var.items()}


def cost(models, repeats, ranks):
    import torch
    from ase.build import bulk
    from ase.calculators.calculator import all_changes

    from committee_calc.committee import CommitteeCalculator
    from committee_calc.members.mace import MACEMember
    from committee_calc.members.mace_llpr import LLPRCalculator, LLPRMember

    one = MACEMember.from_file(models[0])
    llpr = LLPRCalculator(models[0])
    pseudo = CommitteeCalculator(LLPRMember.from_file(models[0], members=8, seed=0))
    low = {r: CommitteeCalculator(LLPRMember.from_file(models[0], members=8, seed=0, rank=r)) for r in ranks}
    shift = CommitteeCalculator(LLPRMember.from_file(models[0], members=8, sampling="sigma"))
    deep = CommitteeCalculator([MACEMember.from_file(p) for p in models + models])

    def calc_call(calc, props):  # one calculation of all props (as ASE's get_property would per prop)
        return lambda a: calc.calculate(a, list(props), all_changes)

    def model_energy(a):  # the model's energy alone: one forward pass, no backward
        with torch.no_grad():
            one.model(one.build_batch([a]).to_dict(), compute_force=False, training=False)

    fns = {"model E": model_energy,
           "model EFS": lambda a: one.predict(a, ("energy", "forces", "stress")),
           "LLPR E+σ": calc_call(llpr, ("energy", "energy_std")),
           "LLPR EFS+σ": calc_call(llpr, ("energy", "forces", "stress", "energy_std")),
           "LLPR K=8 EFS": calc_call(pseudo, ("energy", "forces", "stress")),
           **{f"K=8 r={r} EFS": calc_call(low[r], ("energy", "forces", "stress")) for r in ranks},
           "K=8 σ EFS": calc_call(shift, ("energy", "forces", "stress")),
           "deep M=8 EFS": calc_call(deep, ("energy", "forces", "stress"))}
    rows = {}
    for label, rep in (("Si8", (1, 1, 1)), ("Si64", (2, 2, 2))):
        base = bulk("Si", "diamond", 5.43, cubic=True) * rep
        base.rattle(0.05, seed=1)
        times = {k: [] for k in fns}
        for r in range(repeats + 2):
            for k, fn in fns.items():
                a = base.copy()
                a.positions[0, 0] += 1e-4 * r
                c0 = time.process_time()
                fn(a)
                if r >= 2:
                    times[k].append(time.process_time() - c0)
        rows[label] = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return rows


def tune_malloc() -> None:
    """glibc mallopt: no mmap below 32 MiB, trim above 1 GiB, 64 MiB top pad (process-wide)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = all(libc.mallopt(opt, val) == 1 for opt, val in ((-3, 32 << 20), (-1, 1 << 30), (-2, 64 << 20)))
    if not ok:
        raise SystemExit("mallopt failed (not glibc?): run without --tune-malloc")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/llpr_cost_work", help="models and data splits (cached)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=2, help="members trained at a time")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--ranks", default="1,2,3", help="comma-separated ranks r of low-rank pseudo-members")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="keep freed memory in glibc's heap (mallopt, as MALLOC_MMAP_THRESHOLD_=32 MiB "
                         "MALLOC_TRIM_THRESHOLD_=1 GiB MALLOC_TOP_PAD_=64 MiB): no page faults on the "
                         "large tensors of batched backward passes")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    sys.path.insert(0, str(ROOT))
    if args.tune_malloc:
        tune_malloc()
    import torch
    from ase.io import read

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, cal = split_seed(work)
    heldout = read(str(DATA / "heldout.extxyz"), ":")
    models = train_models(work, args.epochs, args.jobs)
    print(f"torch {torch.__version__}, 1 thread; MACE options {MACE_OPTIONS}, {args.epochs} epochs; "
          f"{len(train)} train / {len(cal)} calib / {len(heldout)} held-out frames (Si8, GPAW)")
    fit, acc, kept, force = accuracy(models, train, cal, heldout, ranks)
    print(f"\nLLPR fit of member 0: D = {fit['features']} features, ς² = {fit['regularizer']:.3g}, "
          f"α = {fit['alpha']:.3g} (calib NLL {fit['nll']:.3f}, calib Spearman {fit['spearman']:.3f})")
    print(f"\n{'held-out ranking':<34} {'Spearman(σ,|err|)':>18} {'RMSE eV':>9} {'RMS σ eV':>9}")
    names = {"llpr": "LLPR σ (member 0, one pass)", "pseudo": "LLPR K=8 pseudo-members",
             "deep": "deep committee M=4", "pseudo sigma": "LLPR K=8 pseudo-members, sigma",
             **{f"pseudo r={r}": f"LLPR K=8 pseudo-members rank {r}" for r in ranks}}
    for k, (rho, rmse, rms) in acc.items():
        print(f"{names[k]:<34} {rho:>18.3f} {rmse:>9.4f} {rms:>9.4f}")
    better = "LLPR" if acc["llpr"][0] > acc["deep"][0] else "the deep committee"
    print(f"-> on these {len(heldout)} held-out frames {better} ranks the energy errors better "
          f"(Spearman {acc['llpr'][0]:.3f} LLPR vs {acc['deep'][0]:.3f} deep)")
    print(f"\n{'low-rank posterior':<22} {'train var kept':>15} {'held-out σ² kept':>17} "
          f"{'held-out Spearman (analytic σ)':>31}")
    print(f"{'full (rank ' + str(fit['features']) + ')':<22} {1.0:>15.3f} {1.0:>17.3f} {acc['llpr'][0]:>31.3f}")
    for r, (var, held, rho) in kept.items():
        print(f"{'rank ' + str(r):<22} {var:>15.3f} {held:>17.3f} {rho:>31.3f}")
    print(f"\n{'held-out forces':<34} {'force var kept':>15} {'Spearman(RMS σ_F, force RMSE)':>31}")
    fnames = {"full": "LLPR posterior (exact, D rows)", "sigma": "LLPR K=8 sampling: sigma",
              "deep": "deep committee M=4", **{r: f"LLPR posterior rank {r}" for r in ranks}}
    for k, (share, rho) in force.items():
        print(f"{fnames[k]:<34} {share:>15.3f} {rho:>31.3f}")
    rows = cost(models, args.repeats, ranks)
    cols = list(next(iter(rows.values())))
    print(f"\nCPU ms per call (median of {args.repeats}, 1 thread, malloc "
          f"{'tuned (--tune-malloc)' if args.tune_malloc else 'glibc default'}); ratio to one model "
          "(E for E+σ, EFS otherwise)")
    print(f"{'cell':<5} " + " ".join(f"{c:>13}" for c in cols))
    for label, med in rows.items():
        print(f"{label:<5} " + " ".join(f"{med[c]:13.2f}" for c in cols))
        ratio = {c: med[c] / (med["model E"] if c in ("model E", "LLPR E+σ") else med["model EFS"])
                 for c in cols}
        print(f"{'':<5} " + " ".join(f"{ratio[c]:12.2f}x" for c in cols))


if __name__ == "__main__":
    main()
