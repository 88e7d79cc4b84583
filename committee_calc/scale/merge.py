"""Combine the shard folders of a pool (``--shard k/N``) into the files of the unsharded run.

::

    merge_shards("runs/relax")      # runs/relax/shard-*-of-N/ -> runs/relax/{summary.csv, ...}

Writes into the pool folder what :func:`~committee_calc.relax.runner.run_pool` writes there:
``trajectories/`` (each candidate's file, copied), ``summary.csv`` (rows in input order),
``relaxed.extxyz`` (final frames in input order), ``pool.json`` (the whole pool),
``landscape.png`` and ``summary.md``.  Rerunning ``committee-relax`` on the whole pool with the same ``--out`` then
finds every finished candidate done (and resumes any unfinished one from its trajectory);
``--cluster`` there clusters the merged pool.  Every shard of N must be present and of the same
pool (ConfigError naming what is missing), relaxed with the same settings (the ``settings`` of
their ``pool.json``; ConfigError naming the settings that differ); merging again rewrites the same
files.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..fileio import CsvLog, load_json, save_json_atomic
from ..relax.pool import RelaxPool, settings_change
from ..relax.runner import write_pool_summary_md
from ..relax.summary import SUMMARY_COLUMNS, summary_in_order
from .pool import pool_run
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
    settings = {k: (load_json(found[(k, n)] / "pool.json") or {}).get("settings") for k in range(1, n + 1)}
    ran = {k: v for k, v in settings.items() if v is not None}  # a shard not yet started has no pool.json
    first_k = min(ran, default=1)
    differ = [f"shard {k}/{n} differs from shard {first_k}/{n} in {settings_change(ran[first_k], v)}"
              for k, v in ran.items() if v != ran[first_k]]
    if differ:
        raise ConfigError(f"{out}: the shards were relaxed with different settings ({'; '.join(differ)}); rerun "
                          "those shards with the same options (a new --out), then merge")
    settings = ran.get(first_k)
    return n, {k: found[(k, n)] for k in range(1, n + 1)}, first["ids"], first["natoms"], settings


def merge_shards(out_dir) -> dict:
    """Merge the shard folders inside ``out_dir`` (see the module docstring) ->
    ``{"shards": N, "candidates": n, "finished": rows written, "unfinished": [ids]}``.
    ConfigError: shards missing, of different pools or splits, or relaxed with different settings."""
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
    unfinished = [c for c in ids if c not in rows]
    run = pool_run(out, ids, summary)  # landscape.png too
    write_pool_summary_md(run, extra_warnings=[f"{len(unfinished)} candidate(s) have no row yet "
                                               f"({', '.join(unfinished[:5])}...): rerun their shard"]
                          if unfinished else ())
    if unfinished:
        log.warning("%d candidate(s) have no row yet (%s...); rerun their shard or the whole pool to "
                    "finish them", len(unfinished), ", ".join(unfinished[:5]))
    return {"shards": n, "candidates": len(ids), "finished": len(ids) - len(unfinished), "unfinished": unfinished}


__all__ = ["merge_shards"]
