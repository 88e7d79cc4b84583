"""Committee overhead for MACE members: ours vs MACE's committee mode vs a loop.

For M = 1, 2, 4, 6 tiny MACE members on 8- and 64-atom Si cells, prints the
time per energy+forces+stress call of

* ``ours``:  :class:`committee_calc.CommitteeCalculator` (one shared graph per
  structure, M forward passes of TorchScript-compiled members; for M = 1 the
  same member path without the committee, which needs M ≥ 2),
* ``eager``: the same with ``jit=False`` members (shows what the shared graph
  alone buys),
* ``mace``:  ``MACECalculator(models=[...])`` committee mode,
* ``loop``:  M separate ``MACECalculator`` objects called one after another,

and the ratios ours/mace and ours/loop.  Calls of the three variants are
interleaved; the median over repeats of the process CPU time (single thread,
so insensitive to other load on a shared machine) is the main figure, the
median wall time is printed beside it.  Models are random tiny MACE models (timing does not depend on
training).  Run::

    .venv/bin/python benchmarks/committee_overhead.py [--repeats 30] [--channels 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402


def build_models(n, channels, r_max, folder):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from tiny_models import build_mace, labelled_si

    frames = labelled_si(4, seed=0)
    paths = []
    for k in range(n):
        p = os.path.join(folder, f"mace_{k}.model")
        if not os.path.exists(p):
            build_mace(p, frames, seed=k, r_max=r_max, channels=channels, steps=0)
        paths.append(p)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--r-max", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--members", default="1,2,4,6")
    ap.add_argument("--models-dir", default=os.path.join("/tmp", "committee_overhead_models"))
    args = ap.parse_args(argv)

    import torch
    from ase.build import bulk
    from mace.calculators import MACECalculator

    from committee_calc.committee import CommitteeCalculator
    from committee_calc.members.mace import MACEMember

    torch.set_num_threads(args.threads)
    os.makedirs(args.models_dir, exist_ok=True)
    ms = [int(x) for x in args.members.split(",")]
    paths = build_models(max(ms), args.channels, args.r_max, args.models_dir)
    print(f"torch {torch.__version__}, threads {args.threads}, channels {args.channels}, "
          f"r_max {args.r_max} Å, repeats {args.repeats} (median ms per call, E+F+stress)")
    print(f"{'':>8} {'-------- CPU ms per call --------':^36} {'-- ratios (ours/...) --':^30}"
          f"  {'---- wall ms ----':^26}")
    print(f"{'cell':>5} {'M':>2} {'ours':>8} {'eager':>8} {'mace':>8} {'loop':>8} {'/mace':>9} "
          f"{'/loop':>9} {'eager/loop':>10}  {'ours':>8} {'mace':>8} {'loop':>8}")
    rows = []
    for label, rep in (("Si8", (1, 1, 1)), ("Si64", (2, 2, 2))):
        base = bulk("Si", "diamond", 5.43, cubic=True) * rep
        base.rattle(0.03, seed=1)
        for m in ms:
            def make_ours(members):
                if len(members) >= 2:
                    ours = CommitteeCalculator(members)

                    def call_ours(a):
                        a.calc = ours
                        a.get_potential_energy(), a.get_forces(), a.get_stress()
                else:
                    def call_ours(a):
                        MACEMember.predict_group(members, a.copy(), ("energy", "forces", "stress"))
                return call_ours

            call_ours = make_ours([MACEMember.from_file(p) for p in paths[:m]])
            call_eager = make_ours([MACEMember.from_file(p, jit=False) for p in paths[:m]])
            mace = MACECalculator(model_paths=paths[:m], device="cpu", default_dtype="float64")
            loop = [MACECalculator(model_paths=[p], device="cpu", default_dtype="float64")
                    for p in paths[:m]]

            def call_calc(a, c):
                a.calc = c
                a.get_potential_energy(), a.get_forces(), a.get_stress()

            fns = {"ours": call_ours, "eager": call_eager, "mace": lambda a: call_calc(a, mace),
                   "loop": lambda a: [call_calc(a, c) for c in loop]}
            times = {k: [] for k in fns}
            walls = {k: [] for k in fns}
            for r in range(args.repeats + 2):
                for k, fn in fns.items():
                    a = base.copy()
                    a.positions[0, 0] += 1e-4 * r  # a new structure every call
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn(a)
                    if r >= 2:  # warm-up
                        times[k].append(time.process_time() - c0)
                        walls[k].append(time.perf_counter() - t0)
            med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
            wall = {k: 1000 * float(np.median(v)) for k, v in walls.items()}
            rows.append((label, m, med, wall))
            print(f"{label:>5} {m:>2} {med['ours']:8.1f} {med['eager']:8.1f} {med['mace']:8.1f} "
                  f"{med['loop']:8.1f} {med['ours'] / med['mace']:9.2f} {med['ours'] / med['loop']:9.2f} "
                  f"{med['eager'] / med['loop']:10.2f}  "
                  f"{wall['ours']:8.1f} {wall['mace']:8.1f} {wall['loop']:8.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
