"""Committee molecular dynamics (layer 4c): NPT/NVT/NVE through the one evaluator, a Gate.

* :mod:`~committee_calc.md.runner`: :func:`run_md`, one MD generation (online gate
  or record-then-select, labelling, figure) — what ``committee-md`` calls;
* :mod:`~committee_calc.md.dynamics`: :class:`CommitteeMD`, the resumable dynamics;
* :mod:`~committee_calc.md.schedule`: temperature schedules and ASE integrators;
* :mod:`~committee_calc.md.state`: checkpoint/resume and the retraining schedule;
* :mod:`~committee_calc.md.select`: query-by-committee frame selection and labelling;
* :mod:`~committee_calc.md.io` / :mod:`~committee_calc.md.plots`: files and the figure.
"""
