"""Files of a threshold-MC run (user units are applied only here; columns carry their unit).

``OUT/run.json``
    settings fixed at the first run: ``starts`` (indices into the input), ``seed``,
    ``structures``, ``argv``; a rerun resumes from it.
``OUT/summary.json``
    per chain: start index, steps, accepted, ``terminated`` reason, E0 and final energy [eV];
    the gate's counters of this session.
``OUT/chain_XXX/trajectory.extxyz``
    the start and every accepted structure, with the committee uncertainties
    (``committee_*``, :func:`committee_calc.io.attach_uncertainties`) and ``mc_step``,
    ``mc_energy_eV``, ``mc_lid_eV``, ``gate_decision`` in ``info``.
``OUT/chain_XXX/steps.csv``
    one row per step, :data:`CSV_COLUMNS` (a biased run, ``--bias``: plus :data:`BIAS_COLUMNS`,
    the unbiased trial energy and the bias beside the biased energies the chain uses).
``OUT/chain_XXX/state.json``
    :meth:`~committee_calc.mc.threshold.ThresholdMC.state`, rewritten atomically after
    every step; on resume the trajectory and CSV are cut back to agree with it.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..bias import bias_from_dict
from ..fileio import (
    CsvLog,
    append_frame,
    atomic_write_text,
    load_json,
    read_frames_repair,
    save_json_atomic,
    write_structures_atomic,
)
from ..io import attach_uncertainties
from ..summary_md import write_summary_md
from ..units import energy_factor, ev_to_kjmol

CSV_COLUMNS = ("step", "move", "accepted", "trial_energy_eV", "energy_eV", "lid_eV",
               "energy_std_eV", "energy_std_per_molecule_kjmol", "energy_std_per_atom_meV",
               "forces_std_max_eVA", "gate_decision", "gate_reason", "label_index", "step_size")
#: columns added to steps.csv of a biased chain
BIAS_COLUMNS = ("trial_energy_unbiased_eV", "bias_energy_eV")
RUN_FILE, SUMMARY_FILE = "run.json", "summary.json"
TRAJECTORY, STEPS, STATE = "trajectory.extxyz", "steps.csv", "state.json"


def load_run(out) -> dict | None:
    """``OUT/run.json`` or None (a new run)."""
    return load_json(Path(out) / RUN_FILE)


def save_run(out, run: dict) -> None:
    save_json_atomic(Path(out) / RUN_FILE, run)


def save_summary(out, summary: dict, warnings=()) -> None:
    """``OUT/summary.json`` and ``OUT/summary.md`` (the conclusions first; ``warnings``: text)."""
    save_json_atomic(Path(out) / SUMMARY_FILE, summary)
    chains = summary["chains"]
    steps, accepted = sum(c["steps"] for c in chains), sum(c["accepted"] for c in chains)
    numbers = [("chains", str(len(chains))), ("steps run (all chains)", str(steps)),
               ("accepted moves", f"{accepted} ({100 * accepted / max(1, steps):.0f} %)")]
    for c in chains:
        if c["e0_eV"] is not None and c["energy_eV"] is not None:
            numbers.append((f"chain {c['chain']} (start {c['start_index']}): final − start energy",
                            f"{c['energy_eV'] - c['e0_eV']:+.4f} eV"))
    numbers += [("reference calls (this session)", str(summary["n_reference_calls_this_session"])),
                ("committee calls (this session)", str(summary["n_committee_calls_this_session"]))]
    warns = [f"chain {c['chain']} terminated: {c['terminated']}" for c in chains if c["terminated"]]
    bias = bias_from_dict(summary.get("bias"))
    if bias is not None:
        numbers.insert(0, ("bias", f"{bias.describe()}: the chains sample E + B"))
        warns.append(f"biased run ({bias.describe()}): the chains' energies above are of the biased "
                     f"surface; steps.csv has the unbiased trial energies (trial_energy_unbiased_eV)")
    files = [(RUN_FILE, "settings fixed at the first run"), (SUMMARY_FILE, "these numbers per chain"),
             (f"chain_XXX/{TRAJECTORY}", "start and accepted structures with uncertainties"),
             (f"chain_XXX/{STEPS}", "one row per step"), (f"chain_XXX/{STATE}", "state to resume from")]
    write_summary_md(out, "committee-mc summary", f"committee-mc ran {len(chains)} threshold-MC chain(s).",
                     numbers, [*warns, *warnings], files)


def csv_row(rec: dict) -> dict:
    """A step record of :class:`~committee_calc.mc.threshold.ThresholdMC` as a CSV row
    (σ_E per molecule in kJ/mol, per atom in meV)."""
    row = {k: rec.get(k) for k in CSV_COLUMNS + BIAS_COLUMNS}
    row["energy_std_per_molecule_kjmol"] = ev_to_kjmol(rec["energy_std_per_molecule_eV"])
    row["energy_std_per_atom_meV"] = rec["energy_std_per_atom_eV"] * (1.0 / energy_factor("meV"))
    row["accepted"] = int(rec["accepted"])
    row["label_index"] = "" if rec.get("label_index") is None else rec["label_index"]
    return row


def trajectory_frame(mc, rec: dict):
    """The chain's current structure with the step's uncertainties, for trajectory.extxyz."""
    a = mc.atoms.copy()
    attach_uncertainties(a, rec.get("results") or {}, members=False)
    a.info.update(mc_step=rec["step"], mc_energy_eV=mc.energy, mc_lid_eV=rec["lid_eV"],
                  gate_decision=rec["gate_decision"] or "")
    return a


class ChainFiles:
    """trajectory.extxyz, steps.csv and state.json of one chain folder (``biased``: steps.csv
    has the :data:`BIAS_COLUMNS` too)."""

    def __init__(self, folder, biased: bool = False):
        self.folder = Path(folder)
        self.columns = CSV_COLUMNS + (BIAS_COLUMNS if biased else ())
        self.trajectory, self.steps, self.state_path = (self.folder / f for f in (TRAJECTORY, STEPS, STATE))
        self.log = None

    def load_state(self) -> dict | None:
        return load_json(self.state_path)

    def open(self, state) -> None:
        """Create the folder; a new chain (``state`` None) starts from empty files, a resumed
        one has anything newer than ``state`` cut off (a kill between the writes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if state is None:
            for f in (self.trajectory, self.steps):
                f.unlink(missing_ok=True)
        else:
            self._truncate(state)
        self.log = CsvLog(self.steps, self.columns)

    def _truncate(self, state) -> None:
        if self.trajectory.exists():
            frames = read_frames_repair(self.trajectory)  # a frame torn by the kill is cut off
            if len(frames) > state["n_accepted"] + 1:
                write_structures_atomic(self.trajectory, frames[: state["n_accepted"] + 1])
        if self.steps.exists():
            lines = self.steps.read_text().splitlines(keepends=True)
            keep = [lines[0]] + [ln for ln in lines[1:] if ln.endswith("\n")
                                 and int(ln.split(",", 1)[0]) <= state["step"]]
            if len(keep) != len(lines):
                atomic_write_text(self.steps, "".join(keep))

    def write(self, mc, rec) -> None:
        """Per-step callback: trajectory frame (accepted steps), CSV row, then the state."""
        if rec["accepted"]:
            append_frame(self.trajectory, trajectory_frame(mc, rec))
        self.log.append(csv_row(rec))
        save_json_atomic(self.state_path, mc.state())

    def rows(self) -> list:
        """The CSV rows (dicts of str; the columns the file has)."""
        with open(self.steps, newline="") as fh:
            return list(csv.DictReader(fh))


__all__ = ["BIAS_COLUMNS", "CSV_COLUMNS", "ChainFiles", "csv_row", "trajectory_frame", "load_run", "save_run",
           "save_summary"]
