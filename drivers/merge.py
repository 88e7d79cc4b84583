"""committee-merge: combine the shard folders of a pool relaxation (``--shard k/N``) into one.

::

    committee-relax pool.extxyz ... --out runs/relax --shard 3/8     # one per array job, k = 1..8
    committee-merge runs/relax                                       # runs/relax/{summary.csv, ...}

Writes into the folder what the unsharded run writes there (``trajectories/``, ``summary.csv``
and ``relaxed.extxyz`` in input order, ``pool.json``, ``landscape.png``, ``summary.md``); rerunning
``committee-relax`` on the whole pool with the same ``--out`` then skips every finished candidate,
resumes unfinished ones and clusters with ``--cluster``.  Every shard k/N must be present and all
must have been relaxed with the same settings (exit 2 naming the missing shards or the settings
that differ).
"""
from __future__ import annotations

import argparse
import sys

from committee_calc.cli import ArgumentParser, run_cli
from committee_calc.scale.merge import merge_shards


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="committee-merge", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the pool folder (--out of the shards) holding shard-k-of-N folders")
    return p


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    res = merge_shards(args.out)
    print(f"merged {res['shards']} shards: {res['finished']} of {res['candidates']} candidates finished; "
          f"outputs in {args.out}" + (f"; unfinished: {', '.join(res['unfinished'])}" if res["unfinished"] else ""))
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
