"""Batched in-flight vs per-structure relaxation of the same candidate pools (issue 15).

The same pool is relaxed twice in one process by :class:`committee_calc.relax.pool.RelaxPool`
(the ``committee-relax`` library path, with its files): ``batch=False`` (one candidate after
another, the path before batching) and ``batch=True`` (all candidates in flight, one batched
committee call per round, atom budget grown from timings).  For an 8-atom and a 64-atom Si
pool it prints structures per second of each (process CPU time, one torch thread, so
insensitive to other load on a shared machine; wall time beside it), their ratio, and whether
the trajectories are identical (every candidate: same statuses and step counts, every frame's
positions and cell within 1e-8 Å).  Last line::

    batched/per-structure: Si8 X.X×, Si64 Y.Y×; identical trajectories: yes|no

Committee: 4 MACE members (float64, TorchScript as ``committee-relax`` loads them) built at run
time with fixed seeds and trained briefly on Stillinger-Weber-labelled rattled Si cells
(LAMMPS, or Lennard-Jones without it: ``tests/tiny_models.labelled_si``); width from the
options (default 32 channels, L_max 0: hidden irreps 32x0e, a small MACE; 2 interactions,
correlation 2, max_ell 2, r_max 5 Å, 8 Bessel functions, radial MLP [64, 64, 64];
``--channels 64 --lmax 1`` gives 64x0e+64x1o; max_ell 3 and correlation 3 triple the CPU
time).  Gate: committee only, FIRE, fixed cell.  For each pool it also prints the CPU time of
the model passes alone (graph prebuilt), one structure at a time and batched: on one CPU
thread a float64 MACE of this width is compute-bound, and the per-structure time per
evaluation divided by the batched model time bounds the ratio batching can reach.
Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batched_relax.py [--n8 200 --n64 50]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402


def build_model(seed, frames, a):
    """One MACE model (width of the options ``a``), trained ``a.epochs`` epochs."""
    import torch
    from e3nn import o3
    from mace import data as mace_data
    from mace import modules
    from mace.tools import torch_geometric, torch_tools, utils

    torch.manual_seed(seed)
    hidden = "+".join(f"{a.channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(a.lmax + 1))
    with torch_tools.default_dtype("float64"):
        z_table = utils.AtomicNumberTable([14])
        e0 = np.mean([f.info["REF_energy"] / len(f) for f in frames])
        model = modules.MACE(
            r_max=a.r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=a.max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2, num_elements=1, hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.array([e0]), avg_num_neighbors=16.0,
            atomic_numbers=[14], correlation=a.correlation, gate=torch.nn.functional.silu,
            radial_MLP=[64, 64, 64])
        keyspec = mace_data.KeySpecification(info_keys={"energy": "REF_energy"},
                                             arrays_keys={"forces": "REF_forces"})
        graphs = [mace_data.AtomicData.from_config(
            mace_data.config_from_atoms(f, key_specification=keyspec), z_table=z_table,
            cutoff=a.r_max) for f in frames]
        loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=5, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(a.epochs):
            for batch in loader:
                out = model(batch.to_dict(), training=True)
                n = (batch["ptr"][1:] - batch["ptr"][:-1]).to(out["energy"].dtype)
                loss = (((out["energy"] - batch["energy"]) / n) ** 2).mean() \
                    + 10 * ((out["forces"] - batch["forces"]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model


def pool(n, repeat, seed):
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        at = bulk("Si", "diamond", 5.43 * (1 + rng.uniform(-0.02, 0.02)), cubic=True) * repeat
        at.rattle(0.1, seed=seed * 100000 + k)
        out.append(at)
    return out


def relax(relaxer, images, out, batch, budget):
    from committee_calc.relax.pool import RelaxPool

    p = RelaxPool(relaxer, out, progress=False, batch=batch, atom_budget=budget)
    c0, t0 = time.process_time(), time.perf_counter()
    rows = p.run(images)
    return rows, time.process_time() - c0, time.perf_counter() - t0, p.batched


def model_only(members, images, reps=5) -> float:
    """CPU seconds per structure of the committee's model passes alone (forward + forces of
    every member, graph prebuilt) when ``images`` are evaluated in one batch."""
    batch = members[0].build_batch(images).to_dict()
    for _ in range(3):  # warm-up of this shape (TorchScript's profiling executor specialises on call 2)
        for m in members:
            m.run_model(batch, False, batched=len(images) > 1)
    c0 = time.process_time()
    for _ in range(reps):
        for m in members:
            m.run_model(batch, False, batched=len(images) > 1)
    return (time.process_time() - c0) / reps / len(images)


def ceiling(members, images, sizes) -> str:
    """Model passes alone per structure at each batch size of ``sizes``: the batching ceiling."""
    one = model_only(members, images[:1])
    parts = [f"{k}: {1e3 * model_only(members, images[:k]):.1f} ms" for k in sizes if k <= len(images)]
    return f"{1e3 * one:.1f} ms one at a time; in batches of " + ", ".join(parts)


def identical(out_a, out_b, rows_a, rows_b, tol=1e-8) -> tuple:
    """(all identical, largest position/cell difference [Å]) of two pool folders."""
    from ase.io import read

    worst, same = 0.0, True
    for ra, rb in zip(rows_a, rows_b):
        same &= (ra["id"], ra["status"], ra["steps"]) == (rb["id"], rb["status"], rb["steps"])
        fa = read(Path(out_a) / "trajectories" / f"{ra['id']}.extxyz", ":")
        fb = read(Path(out_b) / "trajectories" / f"{rb['id']}.extxyz", ":")
        same &= len(fa) == len(fb)
        for x, y in zip(fa, fb):
            d = max(np.abs(x.positions - y.positions).max(), np.abs(x.cell[:] - y.cell[:]).max())
            worst = max(worst, float(d))
    return bool(same and worst <= tol), worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n8", type=int, default=200, help="candidates of the Si8 pool")
    ap.add_argument("--n64", type=int, default=50, help="candidates of the Si64 pool")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--lmax", type=int, default=0, help="L of the hidden irreps")
    ap.add_argument("--max-ell", type=int, default=2)
    ap.add_argument("--correlation", type=int, default=2)
    ap.add_argument("--r-max", type=float, default=5.0)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per member")
    ap.add_argument("--eager", action="store_true", help="members without TorchScript")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--atom-budget", type=int, default=None, help="fixed (default: from timings)")
    ap.add_argument("--out", default=None, help="folder for the pool runs (default: temporary)")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="only the model passes alone at batch sizes 1-64 (no relaxations)")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    from committee_calc import CommitteeCalculator
    from committee_calc.gate import Gate
    from committee_calc.members.mace import MACEMember
    from committee_calc.relax.gated import GatedRelaxer
    from tiny_models import labelled_si

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    frames = labelled_si(20, seed=0)
    members = [MACEMember(build_model(k, frames, a), name=f"mace{k}", jit=not a.eager)
               for k in range(4)]
    width = (f"4 MACE members, {a.channels} channels, L_max {a.lmax}, max_ell {a.max_ell}, "
             f"correlation {a.correlation}, 2 interactions, r_max {a.r_max} Å, float64, "
             f"{a.epochs} epochs on 20 SW-labelled Si8 cells, {'eager' if a.eager else 'TorchScript'}")
    print(f"committee: {width} (built in {time.perf_counter() - t0:.0f} s); torch "
          f"{torch.__version__}, 1 thread; FIRE, fmax {a.fmax} eV/Å, max_steps {a.max_steps}, "
          f"fixed cell, committee-only gate", flush=True)
    base = Path(a.out or tempfile.mkdtemp(prefix="batched_relax_"))
    ratios, same_all = {}, True
    for label, n, rep in (("Si8", a.n8, (1, 1, 1)), ("Si64", a.n64, (2, 2, 2))):
        images = pool(n, rep, seed=1 if label == "Si8" else 2)
        sizes = (2, 4, 8, 16, 32, 64) if label == "Si8" else (2, 4, 8)
        print(f"{label} model passes alone (4 members, forward + forces, graph prebuilt, CPU per "
              f"structure): {ceiling(members, images, sizes)}", flush=True)
        if a.ceiling_only:
            continue
        gate = Gate(CommitteeCalculator(members))
        relaxer = GatedRelaxer(gate, optimizer="FIRE", fmax=a.fmax, max_steps=a.max_steps)
        relaxer.relax(images[0])  # warm-up (TorchScript compilation) outside the timings
        gate.committee.predict(images[:4], batch_size=4)
        rows_s, cpu_s, wall_s, _ = relax(relaxer, images, base / f"{label}_per_structure", False, None)
        rows_b, cpu_b, wall_b, run = relax(relaxer, images, base / f"{label}_batched", True,
                                           a.atom_budget)
        same, worst = identical(base / f"{label}_per_structure", base / f"{label}_batched",
                                rows_s, rows_b)
        same_all &= same
        ratios[label] = cpu_s / cpu_b
        status = {}
        for r in rows_b:
            status[r["status"]] = status.get(r["status"], 0) + 1
        evals = sum(int(r["steps"]) + 1 for r in rows_b)
        print(f"{label}: {n} candidates, {evals} evaluations, statuses {status}", flush=True)
        print(f"  per-structure: {n / cpu_s:7.2f} structures/s CPU ({n / wall_s:7.2f} wall), "
              f"{1e3 * cpu_s / evals:.1f} ms CPU per evaluation", flush=True)
        print(f"  batched:       {n / cpu_b:7.2f} structures/s CPU ({n / wall_b:7.2f} wall), "
              f"{1e3 * cpu_b / evals:.1f} ms CPU per evaluation; {run.describe()}", flush=True)
        k = max(1, run.budget.atoms // len(images[0]))
        single, batched = model_only(members, images[:1]), model_only(members, images[:k])
        print(f"  model passes alone (4 members, forward + forces, graph prebuilt): "
              f"{1e3 * single:.1f} ms CPU per structure one at a time, {1e3 * batched:.1f} ms in "
              f"batches of {k}: the most batching can give here is per-structure time per "
              f"evaluation / batched model time = {cpu_s / evals / batched:.1f}x", flush=True)
        print(f"  ratio {ratios[label]:.2f}x CPU ({wall_s / wall_b:.2f}x wall); identical "
              f"trajectories: {'yes' if same else 'no'} (largest difference {worst:.2g} Å)",
              flush=True)
    if a.ceiling_only:
        return
    print(f"batched/per-structure: Si8 {ratios['Si8']:.1f}×, Si64 {ratios['Si64']:.1f}×; "
          f"identical trajectories: {'yes' if same_all else 'no'}")


if __name__ == "__main__":
    main()
