"""Time per energy+forces call of the native n2p2 evaluator (H2O RPBE-D3, rc = 12 Bohr).

Usage: python benchmarks/n2p2_speed.py [--sizes 192 1536 12288] [--threads 1] [--repeat 2]

Builds 1x1x1, 2x2x2 and 4x4x4 supercells of the 192-atom water box of the test
fixture, prints the best wall time (and process CPU time, a steadier figure on
a shared machine) per call and the scaling exponent (slope of log t vs log N).
Set COMMITTEE_CALC_N2P2_KERNEL=torch to time the PyTorch autograd fallback instead of the compiled (numba) kernels.
"""
import argparse
import os
import time

import numpy as np
import torch

from committee_calc.members.n2p2 import N2P2Member, read_input_data

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "tests", "data", "n2p2", "H2O_RPBE-D3")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 1536, 12288])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    member = N2P2Member(MODEL, length_unit="Bohr", energy_unit="Hartree")
    base = read_input_data(os.path.join(MODEL, "input.data"))[0]
    base.set_cell(base.cell.array * 0.529177210903, scale_atoms=True)
    t0 = time.perf_counter()
    member.predict(base, ["energy", "forces"])  # warm-up: compiles or loads the numba kernels
    print(f"kernel: {member.engine.kernel} (first call incl. compile/load "
          f"{time.perf_counter() - t0:.2f} s), torch threads: {torch.get_num_threads()}")
    ns, ts = [], []
    print(f"{'atoms':>7} {'s/call':>9} {'ms/atom':>8} {'cpu s/call':>10}")
    for n in args.sizes:
        k = round((n / len(base)) ** (1 / 3))
        atoms = base.repeat((k, k, k))
        best = cpu = np.inf
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            member.predict(atoms, ["energy", "forces"])
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        ns.append(len(atoms))
        ts.append(best)
        print(f"{len(atoms):7d} {best:9.3f} {1e3 * best / len(atoms):8.3f} {cpu:10.3f}", flush=True)
    if len(ns) > 1:
        slope = np.polyfit(np.log(ns), np.log(ts), 1)[0]
        print(f"scaling exponent (log t vs log N): {slope:.2f}")


if __name__ == "__main__":
    main()
