"""NPT/NVT/NVE molecular dynamics through the uncertainty gate, resumable.

::

    md = CommitteeMD(atoms, Gate(committee), "out/", ensemble="mtk_iso", timestep_fs=1.0,
                     temperature=TemperatureSchedule([100, 400], n_steps=5000),
                     pressure_GPa=0.0, write_interval=10)
    result = md.run(5000)          # reruns resume from out/md_state.json

Every step is one force/stress evaluation through the one evaluator, a
:class:`committee_calc.gate.Gate` (with thresholds and a reference it may fall
back to the reference and label; ``Gate(committee, hard_cap=...)`` answers with
the committee and only enforces the hard cap).  Caps, measures and non-finite
output are handled by the gate alone.  Outputs in ``out_dir``:

* ``md_trajectory.extxyz``: a frame every ``write_interval`` steps (and at every
  labelled step), with the committee uncertainties in ``info``/``arrays``
  (:func:`committee_calc.io.attach_uncertainties`, prefix ``committee_``) and
  ``info`` keys ``step``, ``time_fs``, ``temperature_target_K``, ``gate_decision``;
* ``md_log.csv``: one row per step, columns :data:`CSV_COLUMNS` (units in the names);
* ``md_state.json``: the state at the last written frame (positions, momenta,
  cell at full precision, thermostat/barostat chain variables, RNG state, a
  retraining gate's schedule), written atomically after the frame; a rerun
  continues from it, drops any frame/CSV row written after it, and so repeats
  the same steps exactly (:mod:`committee_calc.md.state`).

User constraints (ASE ``FixAtoms``, ``FixCartesian``, …) on ``atoms`` are kept on every
step, in every frame written (extxyz ``move_mask``) and across a resume (the saved state
records them; a resume with other constraints is refused); ``nvt`` and ``nve`` run with
constraints, the cell-changing ensembles refuse them
(:func:`committee_calc.md.schedule.check_constraints`).

Biased sampling: ``bias`` (:class:`committee_calc.bias.HAL` / :class:`~committee_calc.bias.UDD`)
drives the dynamics on the biased surface of the gate's answer
(:class:`~committee_calc.bias.BiasCalculator` over the gate: labels and measures stay unbiased);
the log gains ``energy_unbiased_eV``, ``bias_energy_eV``, ``pressure_unbiased_GPa`` and frames
``energy_unbiased``/``bias_energy``; a resume with another bias is refused.

Safety: the run stops with ``MDResult.stop_reason`` (everything written so far
kept, the offending structure in ``md_unphysical.extxyz``) when two atoms come
closer than ``min_distance_A``, the volume leaves ``[V0/max_volume_ratio,
V0*max_volume_ratio]``, a cell height drops below the committee cutoff, the
energy is non-finite (``NonFiniteOutputError`` from a gate without reference),
or the gate's hard cap raises ``GateStop``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.md import velocitydistribution as vd
from ase.neighborlist import neighbor_list

from .. import keys as K
from ..bias import BiasCalculator, bias_from_dict
from ..committee import max_cutoff
from ..errors import ConfigError, GateStop, NonFiniteOutputError
from ..fileio import CsvLog, append_frame, write_structures_atomic
from ..gate import require_gate
from ..io import attach_uncertainties
from ..keys import BIAS_ENERGY, ENERGY_UNBIASED, STRESS_UNBIASED
from ..progress import Progress
from ..structures import cell_widths, constraints_to_list, is_bulk
from ..units import check_positive, ev_per_a3_to_gpa
from .io import LOG, STATE, TRAJECTORY, UNPHYSICAL, read_log, thermo_line
from .schedule import (
    ENSEMBLES,
    TemperatureSchedule,
    active_constraints,
    check_constraints,
    make_integrator,
    restore_atoms,
    restore_integrator_state,
    set_target_temperature,
)
from .state import Checkpoint, RetrainSchedule, inject_results

CSV_COLUMNS = (
    "step", "time_fs", "temperature_K", "temperature_target_K", "pressure_GPa", "volume_A3",
    "a_A", "b_A", "c_A", "energy_eV", "conserved_energy_eV", "energy_std_eV",
    "energy_std_per_atom_eV", "forces_std_max_eVA", "force_uncertainty_relative",
    "gate_decision", "label_index",
)
#: columns added to the log of a biased run (the unbiased observables beside the biased ones)
BIAS_COLUMNS = ("energy_unbiased_eV", "bias_energy_eV", "pressure_unbiased_GPa")


@dataclass(frozen=True)
class MDResult:
    """Outcome of :meth:`CommitteeMD.run`.

    start_step/last_step: step counters (the state after ``last_step`` is saved when
    ``stop_reason`` is None); n_labels: labels appended by the gate in this call;
    stop_reason: why a safety check stopped the run, or None.
    """

    start_step: int
    last_step: int
    n_frames: int
    n_labels: int
    stop_reason: str | None
    trajectory: str
    log: str
    state: str

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None


def initial_velocities(atoms, temperature_K: float, seed: int) -> None:
    """Maxwell-Boltzmann momenta on ``atoms`` at exactly ``temperature_K`` [K] over the free
    degrees of freedom.

    Draws momenta (seeded ``numpy`` generator), zeroes their constrained components (atoms held
    by ``FixAtoms``, fixed Cartesian components, …), removes the centre-of-mass drift only
    without constraints (held atoms anchor the structure), then rescales the kinetic energy so
    that ``atoms.get_temperature()`` (ASE: 2 E_kin / (k_B N_dof), N_dof = 3N minus the
    constrained degrees of freedom) is ``temperature_K``.  Without the rescale a slab with a
    third of its atoms held starts far off target (review E21).  Raises ConfigError when the
    constraints leave no degree of freedom.
    """
    if atoms.get_number_of_degrees_of_freedom() <= 0:
        raise ConfigError("the constraints hold every atom: no degree of freedom is left for MD")
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    if atoms.constraints:
        atoms.set_momenta(atoms.get_momenta(), apply_constraint=True)
    else:
        vd.Stationary(atoms, preserve_temperature=False)
    if atoms.get_kinetic_energy() > 0:
        vd.force_temperature(atoms, temperature_K)


#: CSV column -> result key of the uncertainty columns
_SPREAD_COLUMNS = (("energy_std_eV", K.ENERGY_STD), ("energy_std_per_atom_eV", K.ENERGY_STD_PER_ATOM),
                   ("forces_std_max_eVA", K.FORCES_STD_MAX),
                   ("force_uncertainty_relative", K.FORCE_UNCERTAINTY_RELATIVE))


class CommitteeMD:
    """Committee MD with a temperature schedule, pressure in GPa and resumable outputs.

    ``atoms`` is copied (the caller's object and its ``calc`` are not touched);
    ``gate`` is the evaluator, a :class:`~committee_calc.gate.Gate` (``Gate(committee)``
    for the committee alone; hard caps are the gate's).  ``temperature`` is a number [K]
    or a :class:`TemperatureSchedule`; it also sets the initial Maxwell-Boltzmann
    velocities (seeded by ``seed``) when the structure has none.  ``pressure_GPa`` [GPa],
    ``timestep_fs``/``tdamp_fs``/``pdamp_fs`` [fs], ``min_distance_A``/``cutoff_A`` [Å]
    (cutoff default: the largest member cutoff), ``max_volume_ratio`` (V/V0 bound, > 1),
    ``write_interval`` [steps]; ``provenance`` is merged into the gate's label provenance;
    ``bias``: a HAL/UDD bias (or its dict) or None.
    Raises ConfigError for any bad setting (nothing is written before :meth:`run`).
    """

    def __init__(self, atoms, gate, out_dir, ensemble: str = "mtk_iso", timestep_fs: float = 1.0,
                 temperature=300.0, pressure_GPa: float = 0.0, tdamp_fs=None, pdamp_fs=None,
                 hydrostatic: bool = True, compressibility_per_GPa: float = 1.0e-2,
                 write_interval: int = 10, min_distance_A: float = 0.6, max_volume_ratio: float = 2.0,
                 cutoff_A: float | None = None, seed: int = 0, init_velocities: bool = True,
                 provenance: dict | None = None, bias=None):
        if ensemble not in ENSEMBLES:
            raise ConfigError(f"unknown ensemble {ensemble!r}; use one of {ENSEMBLES}")
        self.ensemble = ensemble
        self.timestep_fs = check_positive("timestep_fs", timestep_fs)
        if not isinstance(temperature, TemperatureSchedule):
            temperature = TemperatureSchedule([check_positive("temperature_K", temperature)])
        self.schedule = temperature
        self.pressure_GPa = float(pressure_GPa)
        if not math.isfinite(self.pressure_GPa):
            raise ConfigError(f"pressure_GPa must be finite, got {pressure_GPa!r}")
        if int(write_interval) < 1:
            raise ConfigError(f"write_interval must be >= 1, got {write_interval}")
        self.write_interval = int(write_interval)
        self.min_distance_A = check_positive("min_distance_A", min_distance_A, allow_zero=True)
        self.max_volume_ratio = check_positive("max_volume_ratio", max_volume_ratio)
        if self.max_volume_ratio <= 1:
            raise ConfigError(f"max_volume_ratio must be > 1, got {max_volume_ratio}")
        self.gate = require_gate(gate, "CommitteeMD")
        self.bias = bias_from_dict(bias)
        self.retrain = RetrainSchedule(gate)
        self.cutoff_A = cutoff_A if cutoff_A is not None else max_cutoff(gate.committee)
        self.seed = int(seed)
        self.provenance = dict(provenance or {})
        self.out_dir = Path(out_dir)
        self.paths = {k: self.out_dir / v for k, v in
                      (("trajectory", TRAJECTORY), ("log", LOG), ("state", STATE), ("unphysical", UNPHYSICAL))}
        self.atoms = atoms.copy()  # keeps the user's constraints (FixAtoms, …)
        self.atoms.calc = None
        if len(self.atoms) == 0:
            raise ConfigError("the structure has no atoms")
        self.atoms.set_constraint(active_constraints(self.atoms))
        check_constraints(self.atoms, ensemble)
        self.checkpoint = Checkpoint(self.out_dir, self.paths, atoms.numbers,
                                     constraints=constraints_to_list(self.atoms))
        self._check_cell(self.atoms, at_start=True)
        if self.atoms.constraints:  # no momenta along constrained directions (fixed atoms)
            self.atoms.set_momenta(self.atoms.get_momenta(), apply_constraint=True)
        if init_velocities and not np.any(self.atoms.get_momenta()):
            initial_velocities(self.atoms, self.schedule(0), self.seed)
        self.volume0 = self.atoms.get_volume() if self.atoms.cell.rank == 3 else None
        self.dyn_kwargs = dict(ensemble=ensemble, timestep_fs=self.timestep_fs, pressure_GPa=self.pressure_GPa,
                               tdamp_fs=tdamp_fs, pdamp_fs=pdamp_fs, hydrostatic=hydrostatic,
                               compressibility_per_GPa=compressibility_per_GPa, seed=self.seed)

    # ------------------------------------------------------------------ checks
    def _check_cell(self, atoms, at_start=False) -> str | None:
        if self.cutoff_A is None or not is_bulk(atoms):
            return None
        h = cell_widths(atoms.cell)
        if np.min(h) < self.cutoff_A:
            msg = (f"cell height {np.min(h):.3f} Å is smaller than the committee cutoff "
                   f"{self.cutoff_A:.3f} Å")
            if at_start:
                reps = np.maximum(1, np.ceil(self.cutoff_A / h)).astype(int).tolist()
                raise ConfigError(f"{msg}; build a supercell (e.g. atoms.repeat({reps})) first")
            return msg
        return None

    def safety_problem(self, atoms, results) -> str | None:
        """Why ``atoms`` is unphysical (a message) or None (the hard cap is the gate's)."""
        e = results.get(K.ENERGY)
        if e is None or not np.isfinite(e) or not np.all(np.isfinite(results.get(K.FORCES, 0.0))):
            return "non-finite energy or forces from the committee"
        if self.min_distance_A > 0 and len(atoms) > 1:
            d = neighbor_list("d", atoms, self.min_distance_A)
            if len(d):
                return (f"atoms closer than the minimum distance: {float(np.min(d)):.3f} Å < "
                        f"{self.min_distance_A} Å")
        if self.volume0 is not None:
            ratio = atoms.get_volume() / self.volume0
            if not (1 / self.max_volume_ratio <= ratio <= self.max_volume_ratio):
                return (f"volume exploded/collapsed: V/V0 = {ratio:.3f} outside "
                        f"[{1 / self.max_volume_ratio:.3f}, {self.max_volume_ratio:.3f}]")
        return self._check_cell(atoms)

    # ------------------------------------------------------------------ output helpers
    def _row(self, step, dyn, results) -> dict:
        a = self.atoms
        row = {"step": step, "time_fs": step * self.timestep_fs, "temperature_K": float(a.get_temperature()),
               "temperature_target_K": self.schedule(step), "energy_eV": float(results[K.ENERGY]),
               "gate_decision": results.get(K.GATE_DECISION, K.COMMITTEE),
               "label_index": "" if results.get("label_index") is None else int(results["label_index"])}
        if a.cell.rank == 3:
            row["volume_A3"] = float(a.get_volume())
            row["a_A"], row["b_A"], row["c_A"] = (float(x) for x in a.cell.lengths())
        if K.STRESS in results:
            s = a.get_stress(voigt=True, include_ideal_gas=True)
            row["pressure_GPa"] = ev_per_a3_to_gpa(-np.mean(s[:3]))
            if STRESS_UNBIASED in results:  # the ideal-gas part is the same on both surfaces
                s = s - results[K.STRESS] + results[STRESS_UNBIASED]
                row["pressure_unbiased_GPa"] = ev_per_a3_to_gpa(-np.mean(s[:3]))
        if ENERGY_UNBIASED in results:
            row["energy_unbiased_eV"], row["bias_energy_eV"] = results[ENERGY_UNBIASED], results[BIAS_ENERGY]
        for col, key in _SPREAD_COLUMNS:
            if key in results:
                row[col] = float(results[key])
        if hasattr(dyn, "get_conserved_energy"):
            row["conserved_energy_eV"] = float(dyn.get_conserved_energy())
        elif self.ensemble == "nve":
            row["conserved_energy_eV"] = float(results[K.ENERGY] + a.get_kinetic_energy())
        return row

    def _frame(self, results):
        """A copy of the current structure carrying the committee uncertainties (``committee_*``)."""
        frame = self.atoms.copy()
        frame.calc = None
        if results:
            attach_uncertainties(frame, results, members=False)
            frame.info.update({k: float(results[k]) for k in (ENERGY_UNBIASED, BIAS_ENERGY) if k in results})
        return frame

    def _append_frame(self, step, results):
        frame = self._frame(results)
        frame.info.update({"step": int(step), "time_fs": step * self.timestep_fs,
                           "temperature_target_K": self.schedule(step),
                           K.GATE_DECISION: str(results.get(K.GATE_DECISION, K.COMMITTEE))})
        append_frame(self.paths["trajectory"], frame)

    def _settings(self) -> dict:
        return {"ensemble": self.ensemble, "timestep_fs": self.timestep_fs,
                "pressure_GPa": self.pressure_GPa, "schedule": self.schedule.to_dict(),
                "volume0": self.volume0, "bias": self.bias.to_dict() if self.bias else None}

    def _save_state(self, step, dyn, n_frames, results):
        self.checkpoint.save(step, dyn, n_frames, results, self._settings(),
                             gate_state=self.retrain.state())

    def _gate_context(self, step):
        """Tell the gate which step it is evaluating (label provenance: step, time_fs)."""
        self.gate.step = int(step)
        if self.gate.labeller is not None:
            self.gate.labeller.provenance.update(self.provenance, time_fs=step * self.timestep_fs)

    # ------------------------------------------------------------------ run
    def run(self, n_steps: int, stop_after: int | None = None) -> MDResult:
        """Run until step ``n_steps`` (resuming from a saved state); ``stop_after``
        ends this call after that many new steps without a final checkpoint
        (used to emulate a kill)."""
        if int(n_steps) < 0:
            raise ConfigError(f"n_steps must be >= 0, got {n_steps}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atoms = self.atoms
        atoms.calc = self.gate if self.bias is None else BiasCalculator(self.gate, self.bias)
        state = self.checkpoint.load()
        if state is not None:
            self.checkpoint.check(state, self._settings())
            self.retrain.restore(state.get("gate"), self.out_dir)
            restore_atoms(atoms, state["integrator"])
            inject_results(atoms.calc, atoms, state.get("results"))
        dyn = make_integrator(atoms, temperature_K=self.schedule(0), **self.dyn_kwargs)
        if state is None:
            self.checkpoint.fresh_start()
            start, n_frames = 0, 0
        else:
            restore_integrator_state(dyn, state["integrator"])
            inject_results(atoms.calc, atoms, state.get("results"))
            self.volume0 = state.get("volume0", self.volume0)
            start = int(state["step"])
            n_frames = self.checkpoint.truncate(start)
        set_target_temperature(dyn, self.schedule(start))
        log = CsvLog(self.paths["log"], CSV_COLUMNS + (BIAS_COLUMNS if self.bias else ()))
        n_labels0 = self.gate.n_labels
        self._gate_context(start)
        if start == 0:
            results, problem = self._guarded(atoms, step_first=None)
            if results is None:
                return self._stop(start, start, n_frames, n_labels0, problem, None)
            problem = self.safety_problem(atoms, results)
            if problem:
                return self._stop(start, start, n_frames, n_labels0, problem, results)
            log.append(self._row(0, dyn, results))
            self._append_frame(0, results)
            n_frames += 1
            self._save_state(0, dyn, n_frames, results)
        step, bar = start, Progress(n_steps, "md", unit="step", initial=start)  # bar/thermo log lines
        for step in range(start + 1, int(n_steps) + 1):
            if stop_after is not None and step - start > stop_after:
                step -= 1
                break
            set_target_temperature(dyn, self.schedule(step))
            self._gate_context(step)
            results, problem = self._guarded(atoms, step_first=dyn.step)
            if results is None:
                return self._stop(start, step, n_frames, n_labels0, problem, None)
            problem = self.safety_problem(atoms, results)
            row = self._row(step, dyn, results)
            log.append(row)
            bar.update(1, thermo_line(row))
            if problem:
                bar.close()
                return self._stop(start, step, n_frames, n_labels0, problem, results)
            labelled = results.get(K.GATE_DECISION) == K.REFERENCE
            if step % self.write_interval == 0 or labelled or step == n_steps:
                self._append_frame(step, results)
                n_frames += 1
                self._save_state(step, dyn, n_frames, results)
        bar.close()
        return MDResult(start, step, n_frames, self.gate.n_labels - n_labels0, None,
                        *(str(self.paths[k]) for k in ("trajectory", "log", "state")))

    def _guarded(self, atoms, step_first=None):
        """(results, None), or (None, reason) when the gate stops the run (hard cap, non-finite)."""
        try:
            if step_first is not None:
                step_first()
            return self._evaluate(atoms), None
        except GateStop as exc:
            return None, f"hard cap exceeded: {exc}"
        except NonFiniteOutputError as exc:
            return None, f"non-finite committee output: {exc}"

    def _evaluate(self, atoms) -> dict:
        """The gate's results at ``atoms`` (stress included for bulk: ``Gate.want_stress``)
        plus ``label_index`` of a label appended at this evaluation."""
        atoms.get_forces()
        self.retrain.note()
        res = dict(atoms.calc.results)  # the gate's, or their biased copy
        last = self.gate.last
        if res.get(K.GATE_DECISION) == K.REFERENCE and last is not None:
            res["label_index"] = last.label_index
        return res

    def _stop(self, start, step, n_frames, n_labels0, reason, results):
        frame = self._frame(results)
        frame.info.update(step=int(step), stop_reason=reason)
        write_structures_atomic(self.paths["unphysical"], [frame])
        return MDResult(start, step, n_frames, self.gate.n_labels - n_labels0, reason,
                        *(str(self.paths[k]) for k in ("trajectory", "log", "state")))


__all__ = ["CommitteeMD", "MDResult", "TemperatureSchedule", "CSV_COLUMNS", "initial_velocities",
           "read_log"]
