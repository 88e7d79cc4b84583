"""Threshold Monte Carlo with on-the-fly learning (every energy through one Gate).

* :mod:`.moves` — rigid-molecule and cell moves, :class:`~.moves.MoveSet`, ``--moves`` parser;
* :mod:`.threshold` — :class:`~.threshold.ThresholdMC`, one resumable chain;
* :mod:`.starts` — start structures (lowest energy, then farthest point sampling);
* :mod:`.runner` — :func:`~.runner.run_threshold_mc`, several resumable chains (``committee-mc``);
* :mod:`.io` — run/chain files (CSV columns, trajectory, state, run.json, summary.json);
* :mod:`.plots` — energy and uncertainty figures of a chain.
"""
