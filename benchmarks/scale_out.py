"""Pool relaxation in one process vs on a local Dask cluster of 2 workers (issue 16).

The same pool (default 200 rattled, strained fcc cells of 32 atoms, Cu and Al) is relaxed twice
with ``committee-relax``, each run in its own fresh process (``python -m drivers.relax``), first in
that process, then with ``--workers 2`` (a ``distributed.LocalCluster`` of 2 single-threaded
worker processes, cluster start-up included in its time).  Committee: two EMT variants (EMT and
EMT with ASAP cutoffs, so they disagree a little); reference: EMT, asked where the force spread
exceeds ``--threshold`` eV/Å and at every committee minimum (verification), so the run labels and
the work is CPU-bound.  Prints both wall times, the speed-up, and whether both runs agree
(statuses, steps, final structures within 1e-10 Å, the same labels).  Last line::

    scale-out: in-process X s, --workers 2 Y s, speed-up Z.ZZ×; same results: yes|no

The speed-up needs 2 idle cores (the figure of issue 16 is ≥ 1.7× on this 2-core machine).
Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_out.py [--n 200 --repeat 2] [--save]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMMITTEE = """members:
  - {backend: ase, calculator: ase.calculators.emt.EMT}
  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {asap_cutoff: true}}
"""
REFERENCE = "calculator: ase.calculators.emt.EMT\nparameters: {}\n"


def pool(n: int, repeat: int, seed: int = 7) -> list:
    """``n`` cubic fcc cells (4·repeat³ atoms), Cu and Al alternating, lattice ±2 %, rattled 0.1 Å."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        el, a0 = (("Cu", 3.61), ("Al", 4.05))[k % 2]
        at = bulk(el, "fcc", a0 * (1 + rng.uniform(-0.02, 0.02)), cubic=True) * repeat
        at.rattle(0.1, seed=seed * 100000 + k)
        at.info["name"] = f"{el}{k:04d}"
        out.append(at)
    return out


def run(inputs: dict, out: Path, labels: Path, a, *extra) -> float:
    """Wall time [s] of one ``committee-relax`` run in a fresh process."""
    argv = [sys.executable, "-m", "drivers.relax", inputs["pool"], "--committee", inputs["committee"],
            "--reference", inputs["reference"], "--labels", str(labels), "--out", str(out),
            "--threshold-forces-std-max-eVA", str(a.threshold), "--fmax-eVA", str(a.fmax),
            "--max-steps", str(a.max_steps), "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"committee-relax failed ({res.returncode}):\n{res.stderr[-3000:]}")
    tail = [line for line in res.stdout.splitlines() if line.strip()]
    print(f"  {tail[-1] if tail else ''}")
    return wall


def same_results(a: Path, b: Path, la: Path, lb: Path) -> bool:
    from ase.io import read

    def rows(p):
        with open(p / "summary.csv", newline="") as fh:
            return [(r["id"], r["status"], r["steps"], r["labels"]) for r in csv.DictReader(fh)]

    if rows(a) != rows(b):
        return False
    fa, fb = read(a / "relaxed.extxyz", ":"), read(b / "relaxed.extxyz", ":")
    if len(fa) != len(fb) or any(np.abs(x.positions - y.positions).max() > 1e-10 for x, y in zip(fa, fb)):
        return False
    ha = sorted(f.info["label_hash"] for f in read(la, ":")) if la.exists() else []
    hb = sorted(f.info["label_hash"] for f in read(lb, ":")) if lb.exists() else []
    return ha == hb and len(set(hb)) == len(hb)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="candidates")
    ap.add_argument("--repeat", type=int, default=2, help="cubic cell repeated n×n×n (2: 32 atoms)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.05, help="force-spread threshold [eV/Å]")
    ap.add_argument("--fmax", type=float, default=0.03)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--save", action="store_true", help="also write benchmarks/out/scale_out.txt")
    a = ap.parse_args(argv)
    from ase.io import write

    with tempfile.TemporaryDirectory(prefix="scale_out_") as tmp:
        d = Path(tmp)
        images = pool(a.n, a.repeat)
        write(d / "pool.extxyz", images)
        (d / "committee.yaml").write_text(COMMITTEE)
        (d / "ref.yaml").write_text(REFERENCE)
        inputs = {"pool": str(d / "pool.extxyz"), "committee": str(d / "committee.yaml"),
                  "reference": str(d / "ref.yaml")}
        print(f"pool: {a.n} fcc cells of {len(images[0])} atoms (Cu, Al); committee 2 EMT variants, "
              f"reference EMT; {os.cpu_count()} CPUs")
        t_in = run(inputs, d / "in", d / "labels_in.extxyz", a)
        print(f"in-process:       {t_in:8.1f} s")
        t_dask = run(inputs, d / "dask", d / "labels_dask.extxyz", a, "--workers", str(a.workers))
        print(f"--workers {a.workers}:      {t_dask:8.1f} s")
        same = same_results(d / "in", d / "dask", d / "labels_in.extxyz", d / "labels_dask.extxyz")
    line = (f"scale-out: in-process {t_in:.1f} s, --workers {a.workers} {t_dask:.1f} s, speed-up "
            f"{t_in / t_dask:.2f}×; same results: {'yes' if same else 'no'}")
    print(line)
    if a.save:
        out = ROOT / "benchmarks" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale_out.txt").write_text(
            f"{' '.join(['benchmarks/scale_out.py', *(argv if argv is not None else sys.argv[1:])])}\n"
            f"{a.n} candidates × {len(images[0])} atoms, {os.cpu_count()} CPUs\n{line}\n")


if __name__ == "__main__":
    main()
