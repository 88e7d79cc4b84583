"""Uncertainty-gated relaxation: :mod:`.gated` (one structure through a Gate, policies;
:mod:`.flow` its path advanced evaluation by evaluation, :mod:`.surface` its calculator,
:mod:`.criteria` convergence and stalls, :mod:`.guards` geometry guards, :mod:`.policy` names),
:mod:`.batched` (many relaxations in flight, one batched committee call per round under the
atom budget of :mod:`.budget`), :mod:`.pool` (resumable candidate pool, batched by default;
:mod:`.summary` its ``summary.csv``), :mod:`.io` (cluster table file), :mod:`.runner`
(:func:`~committee_calc.relax.runner.run_pool`, the one entry point of ``committee-relax``)."""
