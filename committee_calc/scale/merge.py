"""Combine the shard folders of a pool (``--shard k/N``) into the files of the unsharded run.

::

    merge_shards("runs/relax")      # runs/relax/shard-*-of-N/ -> runs/relax/{summary.csv, ...}

Writes into the pool folder what :func:`~committee_calc.relax.runner.run_pool` writes there:
``trajectories/`` (each candidate's file, copied), ``summary.csv`` (rows in input order),
``relaxed.extxyz`` (final frames in input order), ``pool.json`` (the whole pool) and
``landscape.png``.  Rerunning ``committee-relax`` on the whole pool with the same ``--out`` then
finds every finished candidate done (and resumes any unfinished one from its trajectory);
``--cluster`` there clusters the merged pool.  Every shard of N must be present and of the same
pool (ConfigError naming what is missing); merging again rewrites the same files.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..fileio import CsvLog, load_json, save_json_atomic
from ..relax.pool import RelaxPool
from ..relax.runner import one_surface, plot_pool
from ..relax.summary import SUMMARY_COLUMNS, summary_in_order
from .shard import SHARD_FILE, shard_folders

log = logging.getLogger("committee_calc.scale")


def _check(out: Path) -> tuple:
    """(N, {k: folder}, the whole pool's ids, natoms, settings) of the shards in ``out``."""
    found = shard_folders(out)
    if not found:
        raise ConfigError(f"{out} holds no shard folders (shard-k-of-N); run committee-relax with "
                          "--shard k/N and this --out first")
    counts = sorted({n for _, n in found})
    if len(counts) != 1:
        raise ConfigError(f"{out} holds shards of different splits (N = {counts}); keep one split")
    n = counts[0]
    missing = [k for k in range(1, n + 1) if (k, n) not in found]
    if missing:
        raise ConfigError(f"{out}: shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing; run "
                          "them (same command with --shard k/N), then merge again")
    metas = {k: load_json(found[(k, n)] / SHARD_FILE) for k in range(1, n + 1)}
    bad = [k for k, m in metas.items() if m is None]
    if bad:
        raise ConfigError(f"{out}: shard(s) {bad} have no {SHARD_FILE} (not started); run them first")
    first = metas[1]
    if any(m["ids"] != first["ids"] or m["natoms"] != first["natoms"] for m in metas.values()):
        raise ConfigError(f"{out}: the shards relaxed different pools; use one pool for all N shards")
    settings = (load_json(found[(1, n)] / "pool.json") or {}).get("settings")
    return n, {k: found[(k, n)] for k in range(1, n + 1)}, first["ids"], first["natoms"], settings


def merge_shards(out_dir) -> dict:
    """Merge the shard folders inside ``out_dir`` (see the module docstring) ->
    ``{"shards": N, "candidates": n, "finished": rows written, "unfinished": [ids]}``."""
    out = Path(out_dir)
    n, folders, ids, natoms, settings = _check(out)
    meta = load_json(out / "pool.json")
    if meta is not None and (meta.get("ids") != ids or meta.get("natoms") != natoms):
        raise ConfigError(f"{out}/pool.json is of a different pool than its shards; merge into a new folder")
    (out / "trajectories").mkdir(parents=True, exist_ok=True)
    rows = {}
    for folder in folders.values():
        for traj in sorted((folder / "trajectories").glob("*.extxyz")):
            shutil.copyfile(traj, out / "trajectories" / traj.name)
        summary = folder / "summary.csv"
        if summary.exists():
            rows.update({r["id"]: r for r in CsvLog(summary, SUMMARY_COLUMNS).rows()})
    save_json_atomic(out / "pool.json", {"ids": ids, "natoms": natoms, "settings": settings})
    (out / "summary.csv").unlink(missing_ok=True)
    summary = CsvLog(out / "summary.csv", SUMMARY_COLUMNS)
    for cid in ids:
        if cid in rows:
            summary.append(rows[cid])
    summary_in_order(out / "summary.csv", ids)
    RelaxPool(None, out).write_relaxed(ids, summary)
    finished = [rows[c] for c in ids if c in rows and rows[c].get("energy_per_atom_eV") not in (None, "")]
    if finished:
        plot_pool(one_surface(finished)[0], out / "landscape.png")
    unfinished = [c for c in ids if c not in rows]
    if unfinished:
        log.warning("%d candidate(s) have no row yet (%s...); rerun their shard or the whole pool to "
                    "finish them", len(unfinished), ", ".join(unfinished[:5]))
    return {"shards": n, "candidates": len(ids), "finished": len(ids) - len(unfinished), "unfinished": unfinished}


__all__ = ["merge_shards"]
