"""One call for a committee MD generation: dynamics, selection, labelling, figure.

::

    run = run_md(atoms, gate, "md_gen1", n_steps=20000, mode="record",
                 selection=Selection("fps", "forces_std_max", n_max=20),
                 ensemble="mtk_iso", temperature=TemperatureSchedule([100, 400], 20000))
    run.md.stop_reason, run.selected_steps, run.labelled, run.plot

Modes
    ``online``: every step goes through ``gate`` (above its thresholds the
    reference answers and the structure is labelled; optionally retraining).
    ``record``: the committee alone drives the run — through
    ``Gate(gate.committee, hard_cap=gate.hard_cap, ...)``, so only the hard caps
    act and non-finite output stops the run — then up to ``selection.n_max``
    frames are chosen (:class:`~committee_calc.md.select.Selection`, remembered in
    ``md_selection.json``) and labelled through ``gate.labeller`` when the gate has
    a label store.  Thresholds or retraining on the gate are refused in record mode.

Every setting is checked (ConfigError) before the first file is written.
Outputs in ``out_dir`` (:mod:`committee_calc.md.io`): ``md_trajectory.extxyz``,
``md_log.csv``, ``md_state.json``, ``md_selection.json`` (record mode with a
selection), ``uncertainty_trace.png``, ``md_thermo.png`` (E, T, P, V, σ against time),
``md_unphysical.extxyz`` (stopped runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ase.io import read

from ..errors import ConfigError
from ..gate import Gate, require_gate
from .dynamics import CommitteeMD, MDResult
from .io import PLOT, THERMO_PLOT, load_selection, log_has_steps, save_selection, write_md_summary
from .plots import plot_thermo, plot_uncertainty_trace
from .select import Selection, label_frames

MODES = ("online", "record")


@dataclass(frozen=True)
class MDRun:
    """Outcome of :func:`run_md`.

    md: the dynamics' :class:`~committee_calc.md.dynamics.MDResult`;
    selected_steps: MD steps chosen for labelling (record mode);
    labelled: {step: label-store index} of the selected frames (empty without a store);
    label_store: path of the label store, or None; plot: path of the figure (None when the
    run stopped at its first step: nothing to plot).
    """

    md: MDResult
    mode: str
    selected_steps: list
    labelled: dict
    label_store: str | None
    plot: str | None

    @property
    def stopped(self) -> bool:
        return self.md.stopped


def check_mode(mode: str, thresholds=None, retrain=None) -> None:
    """ConfigError for an unknown mode, or thresholds/retraining in record mode."""
    if mode not in MODES:
        raise ConfigError(f"unknown MD mode {mode!r}; use one of {MODES}")
    if mode == "record" and (thresholds or retrain):
        raise ConfigError("thresholds (--threshold-*) and retraining (--retrain-every) act in "
                          "--mode online only; in record mode frames are selected afterwards (--select)")


def recording_gate(gate) -> Gate:
    """The committee-only gate of record mode: ``gate``'s committee, hard caps and molecules."""
    check_mode("record", gate.thresholds, gate.retrain)
    return gate.committee_only()


def select_and_label(frames, selection: Selection, gate, out_dir) -> tuple:
    """Steps chosen from ``frames`` (reused from ``md_selection.json`` when its params match),
    labelled through ``gate.labeller`` when the gate has a label store -> (steps, {step: index})."""
    params = selection.params(len(frames))
    steps = load_selection(out_dir, params)
    if steps is None:
        steps = [int(frames[i].info["step"]) for i in selection.select(frames, gate.committee)]
        save_selection(out_dir, params, steps)
    if not steps or gate.label_store is None:
        return steps, {}
    by_step = {int(f.info["step"]): i for i, f in enumerate(frames)}
    labelled = label_frames(frames, [by_step[s] for s in steps], gate.labeller,
                            provenance={"mode": "record", "selection": selection.method,
                                        "measure": selection.measure})
    save_selection(out_dir, params, steps, labelled)
    return steps, labelled


def run_md(atoms, gate, out_dir, n_steps: int, mode: str = "online", selection=None,
           **md_kwargs) -> MDRun:
    """Run (or resume) one MD generation in ``out_dir``; see the module docstring.

    atoms: starting structure (not modified); gate: the :class:`~committee_calc.gate.Gate`;
    n_steps: total steps; selection: :class:`~committee_calc.md.select.Selection` or None
    (record mode only); md_kwargs: :class:`~committee_calc.md.dynamics.CommitteeMD` options
    (ensemble, timestep_fs, temperature, pressure_GPa, write_interval, …).
    Raises ConfigError on bad settings or a structure of fewer than 2 atoms (before any
    output is written).
    """
    check_mode(mode)
    require_gate(gate, "run_md")
    if len(atoms) < 2:
        raise ConfigError(f"MD needs at least 2 atoms, the structure has {len(atoms)}: with the "
                          "centre-of-mass motion removed one atom has no degrees of freedom "
                          "(temperature undefined, barostat singular); label it directly instead")
    if selection is not None and not isinstance(selection, Selection):
        raise ConfigError(f"selection must be a Selection or None, got {selection!r}")
    evaluator = recording_gate(gate) if mode == "record" else gate
    md = CommitteeMD(atoms, evaluator, out_dir, provenance={"driver": "md", "mode": mode}, **md_kwargs)
    result = md.run(n_steps)
    steps, labelled = [], {}
    if mode == "record" and selection is not None and not result.stopped:
        frames = read(result.trajectory, index=":", format="extxyz")
        steps, labelled = select_and_label(frames, selection, gate, md.out_dir)
    plot = (plot_uncertainty_trace(result.log, Path(out_dir) / PLOT, selected_steps=steps)
            if log_has_steps(result.log) else None)
    if plot:
        plot_thermo(result.log, Path(out_dir) / THERMO_PLOT)
    store = None if gate.label_store is None else str(gate.label_store.path)
    run = MDRun(result, mode, steps, labelled, store, plot)
    write_md_summary(out_dir, run, gate, md_kwargs)
    return run


__all__ = ["MDRun", "MODES", "check_mode", "recording_gate", "run_md", "select_and_label"]
