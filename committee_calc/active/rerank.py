"""Re-rank a whole landscape with a trained committee, σ-capped by the reference.

::

    result = rerank(landscape, committee, out_dir="rerank", reference=ref,
                    sigma_cap_eV=kjmol_to_ev(6.0), delta=True)

1. every structure goes through a :class:`~committee_calc.gate.Gate` (batched
   committee calls of ``batch_size`` structures per molecule count, a progress
   line per batch, then a line per 5 % of the decisions and per reference call): committee mean and
   ``energy_std``; with ``delta=True`` the committee predicts reference −
   baseline and the baseline is added back;
2. the σ cap is the gate threshold on ``energy_std_per_molecule`` (or
   ``energy_std_per_atom`` for a per-atom landscape), ``sigma_cap_eV`` in eV
   per unit; ``thresholds`` adds any other gate limits (any measure of
   :mod:`committee_calc.measures`, combined with ``logic``), ``hard_cap``
   stops the run (:class:`~committee_calc.errors.GateStop`).  Untrusted
   structures (and non-finite committee output) are labelled by the gate's
   labeller into ``label_store`` (default ``out_dir/labels.extxyz``); a
   rerun finds them there and makes no new reference call;
3. writes ``reranked.csv`` and ``reranked.extxyz`` (sorted by the final
   energy, ranks before/after, σ, source), ``reference_calls.csv`` (one row
   per structure whose energy came from the reference) and ``landscape.png``
   (:mod:`committee_calc.active.rerank_io`, :mod:`committee_calc.active.plots`).

Returned dict (arrays over the n landscape structures, original order):
``final`` (n,) eV per unit, ``predicted`` (n,), ``sigma`` (n,) eV per unit
(inf where the committee output is not finite), ``source`` (n,)
"committee"|"reference", ``rank_before`` (n,) int or None (needs baseline),
``rank_after`` (n,) int (0 = global minimum), ``n_reference`` (new reference
calls), ``n_capped`` (structures from the reference), ``unit`` str,
``experimental`` (n,) bool.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import keys as K
from ..analysis.landscape import Landscape
from ..analysis.plots import plot_landscape
from ..errors import ConfigError
from ..gate import Gate
from ..measures import parse_limits
from ..progress import Progress
from .rerank_io import display, write_reference_calls, write_reranked


def _ranks(values):
    r = np.empty(len(values), int)
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r


def rerank_limits(unit, sigma_cap_eV=None, thresholds=None) -> dict:
    """Gate thresholds of a re-ranking: ``thresholds`` (any spec of
    :func:`~committee_calc.measures.parse_limits`) plus the σ cap [eV per ``unit``] as the
    per-molecule or per-atom energy spread; ConfigError when the cap's measure is given twice."""
    key = K.ENERGY_STD_PER_MOLECULE if unit == "molecule" else K.ENERGY_STD_PER_ATOM
    return parse_limits(thresholds, what="threshold", **{key: sigma_cap_eV})


def _gates(ls, committee, reference, thresholds, logic, hard_cap, label_store) -> dict:
    """One gate per molecule count (the landscape's own count, not the gate's guess); no stress
    (a landscape is ranked on energies: labels hold energies and forces)."""
    out = {}
    for n in np.unique(ls.n_units):
        mol = int(n) if ls.unit == "molecule" else None
        out[float(n)] = Gate(committee, reference, thresholds=thresholds or None, logic=logic,
                             hard_cap=hard_cap, label_store=label_store if reference is not None else None,
                             provenance={"driver": "rerank"}, molecules=mol, stress=False)
    return out


def evaluate_landscape(ls, gates, progress=False, delta=False, batch_size=None) -> list:
    """GateResult per structure of ``ls`` (original order): the committee in batched calls of
    ``batch_size`` structures (default 16) over the whole landscape, cells of any size together
    (``committee.predict``, committee only, never a reference: a progress line ``predict`` per
    batch), then each structure decided by the gate of its unit count (:meth:`Gate.evaluate
    <committee_calc.gate.Gate.evaluate>` with the precomputed output; progress ``gate``: a line
    per 5 % of the structures, whose end names the reference calls so far).  A committee without
    ``predict`` is evaluated by each gate.  With ``delta`` the landscape's baseline values are
    stored with any label (Δ-learning).  Raises as :meth:`Gate.evaluate_many
    <committee_calc.gate.Gate.evaluate_many>`."""
    committee = next(iter(gates.values())).committee
    predict = getattr(committee, "predict", None)
    coms = [None] * len(ls)
    if predict is not None:  # raw committee output: each gate counts its own molecules
        coms = predict(list(ls.structures), batch_size=batch_size, properties=[K.ENERGY, K.FORCES],
                       progress=progress)
        coms = [c if c.get(K.FORCES) is not None else None for c in coms]
    results = [None] * len(ls)
    calls = lambda: sum(g.n_reference_calls for g in gates.values())  # noqa: E731
    with Progress(len(ls), "gate", unit="structures", enabled=progress) as bar:
        calls0 = calls()
        for i, (a, c) in enumerate(zip(ls.structures, coms)):
            gate, before = gates[float(ls.n_units[i])], calls()
            results[i] = gate.evaluate(a, info={"index": int(i), "name": ls.names[i]},
                                       baseline=ls.baseline(i) if delta else None, committee_results=c)
            after = calls()
            n_ref = after - calls0
            last = f"{ls.names[i]}: reference" if after > before else ls.names[i]
            bar.update(1, postfix=f"{n_ref} reference call{'s' * (n_ref != 1)}; {last}")
    return results


def rerank(landscape: Landscape, committee, out_dir, reference=None, sigma_cap_eV=None,
           delta=False, experimental=(), progress=False, plot=True, thresholds=None, logic="any",
           hard_cap=None, label_store=None, batch_size=None) -> dict:
    """Re-rank ``landscape`` (module docstring).  ``reference``: ASE calculator, ReferenceSpec or
    YAML (needed with a cap or thresholds); batch_size: structures per batched committee call
    (default 16; 1 evaluates one structure at a time, the same numbers).  Raises ConfigError
    for inconsistent options (before anything is written), NonFiniteOutputError for
    non-finite committee output without a reference, GateStop above a hard cap."""
    ls = landscape
    if delta and ls.baseline_energy is None:
        raise ConfigError("delta=True needs baseline energies in the landscape (the committee predicts a correction)")
    limits = rerank_limits(ls.unit, sigma_cap_eV, thresholds)
    if limits and reference is None:
        raise ConfigError("a σ cap needs a reference calculator to compute the capped structures")
    out = Path(out_dir)
    gates = _gates(ls, committee, reference, limits, logic, hard_cap,
                   label_store if label_store is not None else out / "labels.extxyz")
    out.mkdir(parents=True, exist_ok=True)
    res = evaluate_landscape(ls, gates, progress=progress, delta=delta, batch_size=batch_size)
    coms = [r.committee_results for r in res]
    E = np.array([c[K.ENERGY] if c else np.nan for c in coms], float)
    S = np.array([c.get(K.ENERGY_STD, np.inf) if c else np.inf for c in coms], float)
    if delta:
        E = E + ls.baseline_energy
    n = ls.n_units
    pred, sigma = E / n, np.where(np.isfinite(S), S, np.inf) / n
    source = np.array([r.decision for r in res], dtype=object)
    ref = source == K.REFERENCE
    ref_energy = {int(i): res[i].energy for i in np.flatnonzero(ref)}
    final = pred.copy()
    for i, e in ref_energy.items():
        final[i] = e / n[i]
    exp = {str(x) for x in experimental}
    is_exp = np.array([ls.names[i] in exp or bool(ls.structures[i].info.get("experimental", False))
                       for i in range(len(ls))])
    rank_before = _ranks(ls.baseline_per_unit()) if ls.baseline_energy is not None else None
    result = {"final": final, "predicted": pred, "sigma": sigma, "source": source,
              "rank_before": rank_before, "rank_after": _ranks(final),
              "n_reference": sum(g.n_reference_calls for g in gates.values()),
              "n_capped": int(np.sum(ref)), "unit": ls.unit, "experimental": is_exp}
    write_reranked(ls, result, out)
    if reference is not None:
        write_reference_calls(ls, ref_energy, out)
    if plot:
        fac, label = display(ls.unit)
        plot_landscape(ls.densities(), final * fac, out / "landscape.png", sigma=sigma * fac,
                       unit_label=label, reference=source == K.REFERENCE,
                       reference_label="σ above cap: reference" if limits else "reference",
                       experimental=is_exp, label="committee (±σ)")
    return result
