"""Uncertainty-gated relaxation: :mod:`.gated` (one structure through a Gate, policies;
:mod:`.surface` its calculator, :mod:`.criteria` convergence and stalls, :mod:`.policy` names),
:mod:`.pool` (resumable candidate pool), :mod:`.io` (cluster table file), :mod:`.runner`
(:func:`~committee_calc.relax.runner.run_pool`, the one entry point of ``committee-relax``)."""
