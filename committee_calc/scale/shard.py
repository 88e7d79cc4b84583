"""``--shard k/N``: a share of a pool per scheduler array job, no engine needed.

::

    k, n = parse_shard("2/3")                       # ConfigError for 3/2, 0/3, 2/x
    idx = shard_indices(len(images), k, n)          # candidates 1, 4, 7, ... (0-based: k-1 + j*N)
    folder = shard_folder("runs/relax", k, n)       # runs/relax/shard-2-of-3

Assignment is round-robin over the input order (deterministic: the same pool gives every shard the
same share on every node and every rerun; sizes differ by at most one).  Each shard writes its own
folder with ``shard.json`` (k, N, the whole pool's ids and sizes, the indices of its share); the
merge (``committee-merge``, :func:`committee_calc.scale.merge.merge_shards`) combines the folders
into the files of the unsharded run.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

SHARD_FILE = "shard.json"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text) -> tuple | None:
    """``"k/N"`` -> ``(k, N)`` with 1 ≤ k ≤ N; None for None/"".  ConfigError naming the fix."""
    if text in (None, ""):
        return None
    m = _SHARD.match(str(text))
    if not m:
        raise ConfigError(f"--shard {text!r} must be k/N (this job's number k of N jobs, e.g. 2/8)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"--shard {text}: k must be between 1 and N (got k={k}, N={n}); "
                          "with a job array give --shard $SLURM_ARRAY_TASK_ID/N and ids 1..N")
    return k, n


def shard_indices(n_items: int, k: int, n_shards: int) -> list:
    """0-based indices of shard ``k`` of ``n_shards`` (round-robin over the input order)."""
    return list(range(k - 1, int(n_items), int(n_shards)))


def shard_folder(out, k: int, n_shards: int) -> Path:
    """The output folder of shard ``k`` of ``n_shards`` inside ``out``."""
    return Path(out) / f"shard-{k}-of-{n_shards}"


def shard_folders(out) -> dict:
    """``{(k, N): folder}`` of the shard folders inside ``out``."""
    found = {}
    for p in sorted(Path(out).glob("shard-*-of-*")):
        m = re.fullmatch(r"shard-(\d+)-of-(\d+)", p.name)
        if m and p.is_dir():
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


__all__ = ["SHARD_FILE", "parse_shard", "shard_folder", "shard_folders", "shard_indices"]
