"""Checkpoint and resume of a :class:`committee_calc.md.dynamics.CommitteeMD` run folder.

``md_state.json`` (written atomically after each frame) holds, at full precision:

* ``step``, ``time_fs`` [fs], ``n_frames``, ``volume0`` [Å³] and the run settings
  (``ensemble``, ``timestep_fs`` [fs], ``pressure_GPa`` [GPa], ``schedule``);
* ``numbers`` (N,) and ``pbc`` (3,): the system, checked on resume;
* ``integrator``: positions (N,3) [Å], momenta (N,3) [eV fs/Å in ASE units],
  cell (3,3) [Å], thermostat/barostat chain variables and RNG state
  (:func:`committee_calc.md.schedule.integrator_state`);
* ``results``: the calculator results at the saved positions (:data:`CACHED`),
  handed back to the calculator on resume so nothing is recomputed (a gate
  neither repeats a reference call nor labels the frame twice);
* ``gate``: the retraining bookkeeping of a gate (``n_labels``, ``n_retrains``,
  ``labels_since_retrain``, ``retrain_n_labels`` = label-store length when the
  last retraining ran), so a resumed run retrains after the same labels and
  continues on the same committee (:func:`restore_gate`).

A resumed run drops every frame / CSV row written after the saved step
(:meth:`Checkpoint.truncate`) and repeats those steps exactly.
"""
from __future__ import annotations

import csv
import io

import numpy as np

from ..errors import ConfigError
from ..fileio import (atomic_write_text, load_json, read_frames_repair, save_json_atomic,
                     write_structures_atomic)
from .schedule import integrator_state

STATE_VERSION = 1
#: calculator results kept (full precision) with the state, re-used on resume without recomputing
CACHED = ("energy", "free_energy", "forces", "stress", "energy_std", "energy_std_per_atom",
          "energy_std_per_molecule", "forces_std_max", "force_uncertainty_relative", "gate_decision")
#: settings that must match between the saved state and the resuming run
SETTINGS = ("ensemble", "timestep_fs", "pressure_GPa")
RETRAIN_LABELS = "md_retrain_labels.extxyz"


class Checkpoint:
    """The state file, trajectory and CSV log of one run folder.

    ``paths``: {"trajectory", "log", "state"} -> Path; ``numbers``: atomic
    numbers (N,) of the system this run belongs to.
    """

    def __init__(self, out_dir, paths: dict, numbers):
        self.out_dir = out_dir
        self.paths = paths
        self.numbers = [int(z) for z in numbers]

    def load(self) -> dict | None:
        return load_json(self.paths["state"])

    def save(self, step, dyn, n_frames, results, settings: dict, calc=None) -> None:
        """Write the state after ``step`` (``settings``: SETTINGS + schedule, timestep, volume0)."""
        cached = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in results.items() if k in CACHED}
        atoms = dyn.atoms
        state = {"results": cached, "version": STATE_VERSION, "step": int(step),
                 "time_fs": step * settings["timestep_fs"], "numbers": self.numbers,
                 "pbc": atoms.pbc.tolist(), "n_frames": int(n_frames),
                 "integrator": integrator_state(dyn)}
        state.update(settings)
        gate = gate_state(calc)
        if gate:
            state["gate"] = gate
        save_json_atomic(self.paths["state"], state)

    def check_same_system(self, numbers, what) -> None:
        if [int(z) for z in numbers] != self.numbers:
            raise ConfigError(
                f"{what} in {str(self.out_dir)!r} is from a different system ({len(numbers)} atoms, "
                f"not the {len(self.numbers)} given); use a new output folder or the matching structure")

    def check(self, state: dict, settings: dict) -> None:
        """Refuse a saved state of another system or with other dynamics settings."""
        self.check_same_system(state.get("numbers", []), "the saved MD state")
        for key in SETTINGS:
            if state.get(key) != settings[key]:
                raise ConfigError(f"the saved MD state in {str(self.out_dir)!r} has {key}="
                                  f"{state.get(key)!r}, this run asks for {settings[key]!r}; "
                                  "resume with the same settings or a new folder")

    def truncate(self, last_step: int) -> int:
        """Drop frames / CSV rows written after the saved state (a kill between writes);
        returns the number of frames kept."""
        traj = self.paths["trajectory"]
        kept = []
        if traj.exists():
            frames = read_frames_repair(traj)  # a torn last frame from a kill is cut off
            for f in frames:
                self.check_same_system(f.numbers, "the trajectory")
            kept = [f for f in frames if int(f.info.get("step", -1)) <= last_step]
            if len(kept) != len(frames):
                write_structures_atomic(traj, kept)
        log = self.paths["log"]
        if log.exists():
            with open(log, newline="") as fh:
                rows = list(csv.reader(fh))
            good = [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit()
                    and int(r[0]) <= last_step]
            out = io.StringIO()
            csv.writer(out).writerows(rows[:1] + good)
            atomic_write_text(log, out.getvalue())
        return len(kept)

    def fresh_start(self) -> None:
        """No saved state: refuse another system's trajectory, else remove leftovers."""
        traj = self.paths["trajectory"]
        if traj.exists() and traj.stat().st_size:
            from ase.io import read

            try:
                first = read(str(traj), index=0, format="extxyz")
            except Exception:  # noqa: BLE001 - unreadable leftovers of a killed first step
                first = None
            if first is not None:
                self.check_same_system(first.numbers, "the trajectory")
        for p in (self.paths["trajectory"], self.paths["log"]):
            if p.exists():
                p.unlink()


def inject_results(calc, atoms, results) -> None:
    """Hand the saved ``results`` at the saved positions of ``atoms`` to ``calc``."""
    if not results:
        return
    calc.reset()
    calc.atoms = atoms.copy()
    calc.results = {k: np.array(v, dtype=float) if isinstance(v, list) else v
                    for k, v in results.items()}


def gate_state(calc) -> dict:
    """Retraining bookkeeping of a gate with a retrain callback ({} otherwise)."""
    if getattr(calc, "retrain", None) is None or getattr(calc, "label_store", None) is None:
        return {}
    return {"n_labels": int(calc.n_labels), "n_retrains": int(calc.n_retrains),
            "labels_since_retrain": int(calc._labels_since_retrain),
            "retrain_n_labels": getattr(calc, "_md_retrain_n_labels", None)}


def note_retrain(calc) -> None:
    """Remember the label-store length after a retraining (call after every evaluation)."""
    if getattr(calc, "retrain", None) is None or getattr(calc, "label_store", None) is None:
        return
    if calc.n_retrains != getattr(calc, "_md_seen_retrains", 0):
        calc._md_seen_retrains = calc.n_retrains
        calc._md_retrain_n_labels = len(calc.label_store)


def restore_gate(calc, saved: dict | None, out_dir) -> None:
    """Put a fresh gate back on the saved retraining schedule.

    The counters are restored; if the saved run had retrained, the retrain
    callback is called once on the first ``retrain_n_labels`` labels of the store
    (written to ``out_dir/md_retrain_labels.extxyz``), i.e. on exactly the labels
    the last retraining saw, and its committee replaces ``calc.committee``.
    """
    if not saved or getattr(calc, "retrain", None) is None:
        return
    calc._labels_since_retrain = int(saved.get("labels_since_retrain", 0))
    n_retrains = int(saved.get("n_retrains", 0))
    n_train = saved.get("retrain_n_labels")
    if n_retrains <= calc.n_retrains or not n_train:
        return
    from ase.io import write

    frames = calc.label_store.read()
    if len(frames) < n_train:
        raise ConfigError(f"the saved MD state retrained on {n_train} labels but the label store "
                          f"{str(calc.label_store.path)!r} holds {len(frames)}; resume with the same "
                          "label store or start a new output folder")
    path = out_dir / RETRAIN_LABELS
    buf = io.StringIO()
    write(buf, frames[:n_train], format="extxyz")
    atomic_write_text(path, buf.getvalue())
    new = calc.retrain(str(path))
    if not hasattr(new, "calculate") or not hasattr(new, "results"):
        raise ConfigError(f"retrain callback returned {new!r}, not a committee calculator")
    calc.committee = new
    calc.n_retrains = n_retrains
    calc._md_seen_retrains = n_retrains
    calc._md_retrain_n_labels = int(n_train)


__all__ = ["Checkpoint", "CACHED", "STATE_VERSION", "inject_results", "gate_state", "note_retrain",
           "restore_gate"]
