"""The polymorph-ranking demo's settings, shared by ``examples/demo.py`` and
``benchmarks/campaign_reference_calls.py`` (the same pool, the same targets).

CAMPAIGN: keyword arguments of :func:`committee_calc.campaign.run_campaign` (units in the
names: eV/Å, GPa).  Cell and positions relax with BFGS under ``FrechetCellFilter``; every
candidate keeps its starting space group (``FixSymmetry``: the strained polymorphs keep theirs,
the rattled and random cells are P1 and relax freely).  A candidate is ``converged`` only when
a GPAW single point at its final structure gives a largest atomic force ≤ 0.05 eV/Å and a
residual stress ≤ 0.1 GPa; a committee minimum that GPAW rejects is polished with at most
``polish`` GPAW optimiser steps (each a label) or relaxes on with the retrained committee.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
CANDIDATES = HERE / "candidates.extxyz"
COMMITTEE = HERE / "committee.yaml"
REFERENCE = HERE / "reference.yaml"
#: the known polymorphs (relaxed with their symmetry kept): the ranking compared by Kendall τ
KNOWN = ("diamond", "lonsdaleite", "bc8", "beta_sn", "simple_hexagonal")
#: the zero of the energies in the report
ZERO = "diamond"
CAMPAIGN = dict(u_max=1.0, fmax=0.02, verify_fmax=0.05, verify_stress_GPa=0.1, cell=True,
                fix_symmetry=True, optimizer="BFGS", max_steps=300, max_rounds=3, label_budget=80,
                polish=8, n_jobs=2)
#: the reference-only relaxation of the benchmark: same optimiser, filter, symmetry and targets
REFERENCE_ONLY = dict(optimizer="BFGS", fmax=0.05, stress_tol_GPa=0.1, max_steps=400)
