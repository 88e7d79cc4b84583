"""The active relaxation campaign (Hessmann et al.'s pool cycle with retraining).

:func:`~committee_calc.campaign.runner.run_campaign` relaxes a candidate pool with a committee,
stops each relaxation when the relative force uncertainty U exceeds U_max, labels the stopped
structures with the reference, fine-tunes the committee on seed set + labels, and continues
the candidates with the new committee until every candidate is verified by a reference single
point or a round/label budget is spent.

Modules: :mod:`.runner` (the entry point), :mod:`.stages` (relax, label), :mod:`.training`
(fine-tune + held-out errors per round), :mod:`.state` (``campaign.json``), :mod:`.io`
(``summary.csv``, ``final.extxyz``, the reference probe).
"""
from .runner import CampaignResult, run_campaign

__all__ = ["run_campaign", "CampaignResult"]
