"""Shared pieces of the retraining adapters: training set, seeds, bootstrap, jobs, YAML."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, StructureReadError, TrainingError
from ..fileio import atomic_write_bytes, atomic_write_text


def read_training_set(path, energy_key: str, forces_key: str | None) -> list:
    """Read an extxyz training set (label-store format) and check its keys.

    ``forces_key=None`` trains on energies only (no forces check)."""
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"training file {str(path)!r} does not exist")
    try:
        frames = read(str(path), index=":")
    except Exception as exc:
        raise StructureReadError(f"cannot read training file {str(path)!r}: {exc}") from exc
    if len(frames) < 2:
        raise StructureReadError(f"training file {str(path)!r} holds {len(frames)} structure(s); need ≥ 2")
    lacking = [i for i, a in enumerate(frames) if energy_key not in a.info]
    if lacking:
        raise ConfigError(
            f"{len(lacking)} structure(s) of {str(path)!r} lack the energy key {energy_key!r} "
            f"(first: index {lacking[0]}); set energy_key to the label store's key"
        )
    lacking = [i for i, a in enumerate(frames) if forces_key and forces_key not in a.arrays]
    if lacking:
        raise ConfigError(f"{len(lacking)} structure(s) lack the forces array {forces_key!r}")
    return frames


def member_seeds(n_members: int, seeds) -> list:
    if not isinstance(n_members, (int, np.integer)) or n_members < 1:
        raise ConfigError(f"n_members must be a positive int, got {n_members!r}")
    if seeds is None:
        return [1000 + k for k in range(n_members)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n_members:
        raise ConfigError(f"got {len(seeds)} seeds for {n_members} members; give one per member")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must differ between members, got {seeds}")
    return seeds


def bootstrap_indices(n: int, seed: int) -> tuple:
    """Bootstrap sample (with replacement) of n items and its out-of-bag complement."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.integers(0, n, size=n))
    oob = np.setdiff1d(np.arange(n), idx)
    return idx.tolist(), oob.tolist()


def write_subset(frames, indices, path) -> str:
    from ase.io import write

    write(str(path), [frames[i] for i in indices], format="extxyz")
    return str(path)


def save_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def install_model(src, dest, missing: str) -> str:
    """Copy a trained model file into place atomically; ``missing`` explains its absence."""
    src = Path(src)
    if not src.is_file():
        raise TrainingError(missing)
    atomic_write_bytes(dest, src.read_bytes())
    return str(dest)


def run_jobs(jobs: list, n_jobs: int = 1, timeout_s: float | None = None) -> list:
    """Run ``[(argv, cwd, log_path), ...]`` with at most ``n_jobs`` at a time.

    Each job runs single-threaded (``OMP_NUM_THREADS=1`` unless set), its
    output goes to ``log_path``.  Raises :class:`TrainingError` naming the
    first failed job and the tail of its log.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    env.setdefault("MPLBACKEND", "Agg")
    pending = list(enumerate(jobs))
    running = []
    codes = [None] * len(jobs)
    t0 = time.time()
    while pending or running:
        while pending and len(running) < max(1, int(n_jobs)):
            i, (argv, cwd, log) = pending.pop(0)
            fh = open(log, "w")
            running.append((i, subprocess.Popen(argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                                env=env), fh))
        for item in list(running):
            i, proc, fh = item
            rc = proc.poll()
            if rc is not None:
                fh.close()
                codes[i] = rc
                running.remove(item)
        if timeout_s is not None and time.time() - t0 > timeout_s:
            for _, proc, fh in running:
                proc.kill()
                fh.close()
            raise TrainingError(f"training exceeded {timeout_s} s; stopped")
        time.sleep(0.2)
    for i, rc in enumerate(codes):
        if rc != 0:
            log = jobs[i][2]
            tail = Path(log).read_text(errors="replace")[-1500:] if os.path.exists(log) else ""
            raise TrainingError(f"training job {i} ({' '.join(map(str, jobs[i][0][:4]))} ...) "
                                f"exited with {rc}; see {log}. Log tail:\n{tail}")
    return codes


def python_exe() -> str:
    return sys.executable
