"""Checkpoint and resume of a :class:`committee_calc.md.dynamics.CommitteeMD` run folder.

``md_state.json`` (written atomically after each frame) holds, at full precision:

* ``step``, ``time_fs`` [fs], ``n_frames``, ``volume0`` [Å³] and the run settings
  (``ensemble``, ``timestep_fs`` [fs], ``pressure_GPa`` [GPa], ``schedule``, ``bias``: the
  HAL/UDD bias dict or None);
* ``numbers`` (N,) and ``pbc`` (3,): the system, checked on resume;
* ``constraints``: the user's ASE constraints (``todict()`` form,
  :func:`committee_calc.structures.constraints_to_list`), checked on resume;
* ``integrator``: positions (N,3) [Å], momenta (N,3) [eV fs/Å in ASE units],
  cell (3,3) [Å], thermostat/barostat chain variables and RNG state
  (:func:`committee_calc.md.schedule.integrator_state`);
* ``results``: the gate's (biased run: the bias calculator's) results at the saved positions
  (:data:`CACHED`), handed back on resume so nothing is recomputed (the gate
  neither repeats a reference call nor labels the frame twice);
* ``gate``: the retraining bookkeeping of a gate with a retrain callback
  (``n_labels``, ``n_retrains``, ``labels_since_retrain``, ``retrain_n_labels``
  = label-store length when the last retraining ran), so a resumed run
  retrains after the same labels and continues on the same committee
  (:class:`RetrainSchedule`).

A resumed run drops every frame / CSV row written after the saved step
(:meth:`Checkpoint.truncate`) and repeats those steps exactly.
"""
from __future__ import annotations

import csv
import io

import numpy as np
from ase.io import read

from .. import keys as K
from ..errors import ConfigError
from ..fileio import atomic_write_text, load_json, read_frames_repair, save_json_atomic, write_structures_atomic
from .schedule import integrator_state

STATE_VERSION = 1
#: gate results kept (full precision) with the state, re-used on resume without recomputing
CACHED = (K.ENERGY, K.FREE_ENERGY, K.FORCES, K.STRESS, K.ENERGY_STD, K.ENERGY_STD_PER_ATOM,
          K.ENERGY_STD_PER_MOLECULE, K.FORCES_STD_MAX, K.FORCE_UNCERTAINTY_RELATIVE,
          K.GATE_DECISION)
#: settings that must match between the saved state and the resuming run (bias: None unbiased)
SETTINGS = ("ensemble", "timestep_fs", "pressure_GPa", "bias")
RETRAIN_LABELS = "md_retrain_labels.extxyz"


class Checkpoint:
    """The state file, trajectory and CSV log of one run folder.

    ``paths``: {"trajectory", "log", "state"} -> Path; ``numbers``: atomic
    numbers (N,) of the system this run belongs to.
    """

    def __init__(self, out_dir, paths: dict, numbers, constraints=None):
        self.out_dir = out_dir
        self.paths = paths
        self.numbers = [int(z) for z in numbers]
        self.constraints = list(constraints or [])

    def load(self) -> dict | None:
        return load_json(self.paths["state"])

    def save(self, step, dyn, n_frames, results, settings: dict, gate_state=None) -> None:
        """Write the state after ``step`` (``settings``: SETTINGS + schedule, timestep, volume0;
        ``gate_state``: :meth:`RetrainSchedule.state`, stored when not empty)."""
        cached = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in results.items() if k in CACHED}
        atoms = dyn.atoms
        state = {"results": cached, "version": STATE_VERSION, "step": int(step),
                 "time_fs": step * settings["timestep_fs"], "numbers": self.numbers,
                 "pbc": atoms.pbc.tolist(), "n_frames": int(n_frames),
                 "constraints": self.constraints,
                 "integrator": integrator_state(dyn)}
        state.update(settings)
        if gate_state:
            state["gate"] = gate_state
        save_json_atomic(self.paths["state"], state)

    def check_same_system(self, numbers, what) -> None:
        if [int(z) for z in numbers] != self.numbers:
            raise ConfigError(
                f"{what} in {str(self.out_dir)!r} is from a different system ({len(numbers)} atoms, "
                f"not the {len(self.numbers)} given); use a new output folder or the matching structure")

    def check(self, state: dict, settings: dict) -> None:
        """Refuse a saved state of another system or with other dynamics settings."""
        self.check_same_system(state.get("numbers", []), "the saved MD state")
        saved = state.get("constraints", self.constraints)  # states before constraints were kept
        if saved != self.constraints:
            raise ConfigError(f"the saved MD state in {str(self.out_dir)!r} has the constraints "
                              f"{_names(saved)}, the structure given has {_names(self.constraints)}; "
                              "resume with the same constrained structure or a new folder")
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
            try:
                first = read(str(traj), index=0, format="extxyz")
            except Exception:  # noqa: BLE001 - unreadable leftovers of a killed first step
                first = None
            if first is not None:
                self.check_same_system(first.numbers, "the trajectory")
        for p in (self.paths["trajectory"], self.paths["log"]):
            if p.exists():
                p.unlink()


def _names(constraints) -> list:
    return [c.get("name") for c in constraints] or "none"


def inject_results(gate, atoms, results) -> None:
    """Hand the saved ``results`` at the saved positions of ``atoms`` to ``gate``."""
    if not results:
        return
    gate.reset()
    gate.atoms = atoms.copy()
    gate.results = {k: np.array(v, dtype=float) if isinstance(v, list) else v
                    for k, v in results.items()}


class RetrainSchedule:
    """The retraining bookkeeping of a :class:`~committee_calc.gate.Gate` across a resume.

    Inactive (every method a no-op, :meth:`state` empty) unless the gate has a
    retrain callback and a label store.  :meth:`note` after every evaluation
    remembers the label-store length when the gate last retrained;
    :meth:`state` is saved with the checkpoint; :meth:`restore` puts a fresh
    gate back on the saved schedule.
    """

    def __init__(self, gate):
        self.gate = gate
        self.active = gate.retrain is not None and gate.label_store is not None
        self.seen_retrains = gate.n_retrains
        self.retrain_n_labels = None  # label-store length at the last retraining

    @property
    def labels_since_retrain(self) -> int:
        return self.gate.labels_since_retrain

    def note(self) -> None:
        """Call after every evaluation: a new retraining saw the whole store as it is now."""
        if self.active and self.gate.n_retrains != self.seen_retrains:
            self.seen_retrains = self.gate.n_retrains
            self.retrain_n_labels = len(self.gate.label_store)

    def state(self) -> dict:
        """JSON-able bookkeeping ({} when inactive)."""
        if not self.active:
            return {}
        return {"n_labels": int(self.gate.n_labels), "n_retrains": int(self.gate.n_retrains),
                "labels_since_retrain": self.labels_since_retrain,
                "retrain_n_labels": self.retrain_n_labels}

    def restore(self, saved: dict | None, out_dir) -> None:
        """Put the gate back on the saved schedule.

        The labels counted toward the next retraining are restored; if the saved
        run had retrained, the retrain callback is called once on the first
        ``retrain_n_labels`` labels of the store (written to
        ``out_dir/md_retrain_labels.extxyz``), i.e. on exactly the labels the last
        retraining saw, and its committee replaces ``gate.committee``.
        Raises ConfigError when the store holds fewer labels than that, or the
        callback returns no committee.
        """
        gate = self.gate
        if not saved or not self.active:
            return
        gate.restore_retrain_state(int(saved.get("labels_since_retrain", 0)))
        n_retrains = int(saved.get("n_retrains", 0))
        n_train = saved.get("retrain_n_labels")
        if n_retrains <= gate.n_retrains or not n_train:
            return
        frames = gate.label_store.read()
        if len(frames) < n_train:
            raise ConfigError(f"the saved MD state retrained on {n_train} labels but the label store "
                              f"{str(gate.label_store.path)!r} holds {len(frames)}; resume with the "
                              "same label store or start a new output folder")
        path = out_dir / RETRAIN_LABELS
        write_structures_atomic(path, frames[:n_train])
        new = gate.retrain(str(path))
        if not hasattr(new, "calculate") or not hasattr(new, "results"):
            raise ConfigError(f"retrain callback returned {new!r}, not a committee calculator")
        gate.committee = new
        gate.n_retrains = self.seen_retrains = n_retrains
        self.retrain_n_labels = int(n_train)


__all__ = ["Checkpoint", "CACHED", "STATE_VERSION", "RetrainSchedule", "inject_results"]
