"""Active learning and re-ranking over a crystal-structure landscape.

:mod:`.learner` (query-by-committee loop), :mod:`.trainers` (trainers, the
``committee-learn`` runner and folder), :mod:`.rerank` (σ-capped re-ranking
through the gate) with :mod:`.rerank_io` (its files) and :mod:`.plots` (its
figure), :mod:`.baseline` (baseline relaxation of candidates), :mod:`.options`
(command-line options of the landscape drivers).
"""
