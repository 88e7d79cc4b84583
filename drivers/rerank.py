"""committee-rerank: re-rank a whole landscape with a committee, σ-capped by the reference.

    committee-rerank landscape.extxyz --learn-dir al/ --reference ref.yaml \
        --sigma-cap-kjmol 6 --out rerank/ [--experimental NAME ...]

The committee comes from ``--committee committee.yaml`` or from an
active-learning folder (``--learn-dir``: the last iteration's committee,
refitted in-process for the ridge backend).  Writes ``reranked.csv``,
``reranked.extxyz``, ``landscape.png``; reference results are logged in
``reference_calls.csv`` so a rerun never repeats one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from committee_calc.cli import run_cli
from drivers.active_learn import add_landscape_arguments, energy_arg, landscape_from_args, make_trainer


def committee_from_learn_dir(path):
    from committee_calc.active.learner import QUANTITIES
    from committee_calc.errors import ConfigError
    from committee_calc.fileio import load_json

    path = Path(path)
    cfg = load_json(path / "trainer.json")
    iters = sorted(path.glob("iter*/train.extxyz"))
    if cfg is None or not iters:
        raise ConfigError(f"{path} is not a finished committee-learn folder (no trainer.json / iter*/train.extxyz)")
    last = iters[-1]
    delta, forces = QUANTITIES[cfg["quantity"]]
    if cfg["backend"] != "ridge" and (last.parent / "committee.yaml").exists():
        from committee_calc.config import load_committee

        return load_committee(last.parent / "committee.yaml"), delta
    trainer = make_trainer(cfg["backend"], cfg["species"], cfg["n_members"], cfg.get("molecules"), cfg.get("seed", 0))
    return trainer(last, last.parent, forces), delta


def run(argv=None):
    from committee_calc.errors import ConfigError
    from committee_calc.active.rerank import rerank

    p = argparse.ArgumentParser(prog="committee-rerank", description=__doc__.split("\n")[0])
    add_landscape_arguments(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--committee", help="committee YAML")
    g.add_argument("--learn-dir", help="output folder of committee-learn")
    p.add_argument("--delta", action="store_true", help="with --committee: it predicts reference − baseline")
    p.add_argument("--reference", default=None, help="reference-calculator YAML (needed with a σ cap)")
    p.add_argument("--sigma-cap-kjmol", dest="sigma_cap_kjmol", type=float, default=None)
    p.add_argument("--sigma-cap-mev-atom", dest="sigma_cap_mev_atom", type=float, default=None)
    p.add_argument("--experimental", nargs="*", default=(), help="names of known experimental structures")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    ls = landscape_from_args(args)
    if args.committee:
        from committee_calc.config import load_committee

        committee, delta = load_committee(args.committee), args.delta
    else:
        committee, delta = committee_from_learn_dir(args.learn_dir)
    cap = energy_arg(args, "sigma_cap", ls.unit)
    reference = None
    if args.reference:
        from committee_calc.reference import load_reference

        reference = load_reference(args.reference)
    elif cap is not None:
        raise ConfigError("--sigma-cap-* needs --reference")
    r = rerank(ls, committee, args.out, reference=reference, sigma_cap_eV=cap, delta=delta,
               experimental=args.experimental, progress=not args.no_progress)
    print(f"re-ranked {len(ls)} structures; {r['n_capped']} above the σ cap computed with the reference "
          f"({r['n_reference']} new calls); results in {args.out}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
