"""Several resumable threshold-MC chains over a landscape: the library runner of ``committee-mc``.

::

    gate = Gate(committee, reference, thresholds=..., hard_cap=..., label_store=..., molecules=4)
    settings = MCSettings(steps=2000, n_starts=5, lid_kjmol=10)
    summary = run_threshold_mc(structures, gate, "mc/", settings)

Start structures: the lowest-energy structure of the input, then farthest point
sampling in descriptor space (:func:`~committee_calc.mc.starts.select_starts`;
energies from ``info["energy"]`` or the committee alone).  Chain ``c`` runs
:class:`~committee_calc.mc.threshold.ThresholdMC` from start ``c`` with seed
``[seed, c]`` and run id ``<out name>/chain_<c>``; the files are those of
:mod:`committee_calc.mc.io`.  A rerun with the same ``out`` resumes every chain
exactly where it stopped (same random stream); a label appended just before a
kill is found by the gate's labeller, never duplicated.

``settings.units="atoms"`` makes every atom its own unit (network solids, metals): no
molecule detection, per-atom ``translate``/``displace`` and cell moves, and per-molecule
values (lid in kJ/mol, σ per molecule) count per atom.

``settings.bias`` (HAL/UDD, :mod:`committee_calc.bias`): every chain samples the biased
energies E + B(σ_E) (steps.csv keeps the unbiased trial energy and the bias); it is stored in
``run.json``, and a resume with another bias is refused.

Every input (settings, lids, moves, molecule topology of every start) is
validated before the first file is written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bias import bias_from_dict
from ..errors import ConfigError
from ..gate import Gate, require_gate
from ..measures import check_molecules
from ..molecules import count_molecules
from ..progress import Progress
from ..summary_md import domain_warnings
from ..units import check_count, check_finite, check_positive
from .io import ChainFiles, load_run, save_run, save_summary
from .moves import DEFAULT_MOVES, MoveSet, parse_moves
from .plots import plot_chain
from .starts import select_starts
from .threshold import MODES, ThresholdMC, lid_from_units

log = logging.getLogger("committee_calc.mc")
UNITS = ("molecules", "atoms")


@dataclass(frozen=True)
class MCSettings:
    """Settings of a threshold-MC run (validated on construction: ConfigError / UnitError).

    steps: MC steps per chain (>= 0).  n_starts: chains (>= 1).  mode: ``threshold`` | ``downhill``.
    lid_kjmol | lid_eV_per_atom: the lid above the start energy, kJ/mol per molecule or eV/atom
        (exactly one in threshold mode; ignored downhill).
    lid_raise_kjmol | lid_raise_eV_per_atom, lid_every, max_lid_raises: raise the lid by this
        every ``lid_every`` steps, at most ``max_lid_raises`` times.
    moves: :class:`~committee_calc.mc.moves.MoveSet` spec (dict).
    adaptive_target, adaptive_every, seed: see :class:`~committee_calc.mc.threshold.ThresholdMC`.
    plots: write energy.png and uncertainty.png per chain.
    units: ``molecules`` (found from connectivity) or ``atoms`` (every atom one unit:
        network solids; per-molecule values are then per atom).
    bias: a :class:`~committee_calc.bias.HAL` / :class:`~committee_calc.bias.UDD` bias (or its
        dict), or None (unbiased).
    """

    steps: int = 1000
    n_starts: int = 1
    mode: str = "threshold"
    lid_kjmol: float | None = None
    lid_eV_per_atom: float | None = None
    lid_raise_kjmol: float | None = None
    lid_raise_eV_per_atom: float | None = None
    lid_every: int | None = None
    max_lid_raises: int | None = None
    moves: dict = field(default_factory=lambda: parse_moves(DEFAULT_MOVES))
    adaptive_target: float | None = None
    adaptive_every: int = 50
    seed: int = 0
    plots: bool = True
    units: str = "molecules"
    bias: object = None

    def __post_init__(self):
        object.__setattr__(self, "bias", bias_from_dict(self.bias))
        if self.units not in UNITS:
            raise ConfigError(f"units must be one of {UNITS}, got {self.units!r}")
        check_count("--steps", self.steps, 0)
        check_count("--n-starts", self.n_starts, 1)
        check_count("--seed", self.seed, 0)
        check_count("--adaptive-every", self.adaptive_every, 1)
        if self.lid_every is not None:
            check_count("--lid-every", self.lid_every, 1)
        if self.max_lid_raises is not None:
            check_count("--max-lid-raises", self.max_lid_raises, 0)
        if self.adaptive_target is not None and not 0 < check_finite("--adaptive-target",
                                                                     self.adaptive_target) < 1:
            raise ConfigError(f"--adaptive-target is an acceptance ratio in (0, 1), got {self.adaptive_target}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("lid_kjmol", "lid_eV_per_atom", "lid_raise_kjmol", "lid_raise_eV_per_atom"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.mode == "threshold" and self.lid_kjmol is None and self.lid_eV_per_atom is None:
            raise ConfigError("threshold mode needs a lid: --lid-kjmol (per molecule) or --lid-eV-per-atom")
        if self.lid_kjmol is not None and self.lid_eV_per_atom is not None:
            raise ConfigError("give the lid once: --lid-kjmol or --lid-eV-per-atom, not both")
        if self._raises() and not self.lid_every:
            raise ConfigError("--lid-raise-* needs --lid-every K")
        if self.units == "atoms" and "rotate" in MoveSet(self.moves).names:
            raise ConfigError("rotate turns a molecule about its centre; with units 'atoms' every "
                              "unit is one atom: use displace/translate and cell moves")
        MoveSet(self.moves)

    def _raises(self) -> bool:
        return self.lid_raise_kjmol is not None or self.lid_raise_eV_per_atom is not None

    def lids(self, n_atoms: int, n_molecules: int) -> tuple:
        """(lid [eV] or None downhill, lid raise [eV]) of a cell with these counts."""
        lid = (None if self.mode == "downhill" else
               lid_from_units(n_atoms, n_molecules, self.lid_kjmol, self.lid_eV_per_atom))
        raise_ = (lid_from_units(n_atoms, n_molecules, self.lid_raise_kjmol, self.lid_raise_eV_per_atom)
                  if self._raises() else 0.0)
        return lid, raise_


def fixed_molecule_count(structures):
    """The molecule count shared by every structure (int), else ``"auto"``.  Rigid-molecule
    MC keeps the molecule count of its start, so per-molecule measures use this fixed count
    (a count from connectivity per trial would drift on close contacts)."""
    counts = {count_molecules(a) for a in structures}
    return counts.pop() if len(counts) == 1 else "auto"


def unit_count(structures, units: str = "molecules", molecules=None):
    """The count per structure behind per-molecule measures: ``molecules`` (int or "auto")
    when given, else :func:`fixed_molecule_count`; with ``units="atoms"`` the atom count
    shared by every structure (None when they differ).  ConfigError for an unknown unit or
    ``molecules`` given with atom units."""
    if units not in UNITS:
        raise ConfigError(f"units must be one of {UNITS}, got {units!r}")
    if units == "atoms":
        if molecules is not None:
            raise ConfigError("--molecules does not apply with --units atoms (every atom is one unit)")
        counts = {len(a) for a in structures}
        return counts.pop() if len(counts) == 1 else None
    return check_molecules(molecules) if molecules is not None else fixed_molecule_count(structures)


def _chain(out, c, atoms, gate, settings, seed):
    """(files, state, chain) of chain ``c``: the fresh chain is built even on resume, so the
    settings and the start's molecules are validated before anything is written."""
    files = ChainFiles(Path(out) / f"chain_{c:03d}", biased=settings.bias is not None)
    atomwise = settings.units == "atoms"
    labels = np.arange(len(atoms)) if atomwise else None
    lid, raise_ = settings.lids(len(atoms), len(atoms) if atomwise else count_molecules(atoms))
    mc = ThresholdMC(atoms, gate, settings.moves, lid_eV=lid, mode=settings.mode, lid_raise_eV=raise_,
                     lid_every=settings.lid_every, max_lid_raises=settings.max_lid_raises,
                     molecules=labels, seed=[seed, c], adaptive_target=settings.adaptive_target,
                     adaptive_every=settings.adaptive_every, bias=settings.bias,
                     run_id=f"{Path(out).resolve().name}/chain_{c:03d}")
    state = files.load_state()
    if state is not None:
        mc = ThresholdMC.from_state(state, gate)
    return files, state, mc


def _run_chain(files, state, mc, settings, bar=None, offset=0) -> None:
    """Run one chain; ``bar`` (a Progress over all chains' steps) advances to ``offset`` plus the
    chain's step after every step."""
    files.open(state)
    if state is not None:
        log.info("%s: resuming at step %d", files.folder.name, mc.step_index)

    def write(chain, rec):
        files.write(chain, rec)
        if bar is not None and offset + chain.step_index > bar.n:
            bar.update(offset + chain.step_index - bar.n,
                       postfix=f"{files.folder.name} E={chain.energy:.6g} eV accepted={chain.n_accepted}")

    if not mc.terminated and mc.step_index < settings.steps:
        mc.run(settings.steps, callback=write)
    if mc.terminated:
        log.info("%s: terminated at step %d: %s", files.folder.name, mc.step_index, mc.terminated)
    if settings.plots:
        plot_chain(files.folder)


def _starts(structures, settings, gate) -> list:
    if len(structures) == 1:
        return [0]
    # ranked by the committee alone: a landscape is not labelled, nor stopped by caps
    return select_starts(structures, settings.n_starts, gate=Gate(gate.committee, molecules=gate.molecules))


def run_threshold_mc(structures, gate, out, settings: MCSettings, info=None) -> dict:
    """Run or resume ``settings.n_starts`` chains from ``structures`` through ``gate``.

    structures: list of Atoms (the landscape).  gate: the one evaluator
    (``Gate(committee)`` for committee only).  out: output folder (created).
    info: extra entries for run.json (e.g. ``structures``, ``argv``).
    Returns the summary (also written to ``OUT/summary.json``): ``chains`` (per chain:
    ``chain, start_index, steps, accepted, terminated, e0_eV, energy_eV``), ``n_terminated``
    and the gate's ``n_reference_calls/n_committee_calls/n_retrains_this_session``.
    Raises ConfigError (a different seed than the run in ``out``, starts outside the input,
    invalid settings), MoleculeError, GateStop / NonFiniteOutputError at a start structure.
    """
    require_gate(gate, "run_threshold_mc")
    structures = list(structures)
    bias = settings.bias.to_dict() if settings.bias else None
    run = load_run(out)
    if run is None:
        if settings.n_starts > len(structures):
            raise ConfigError(f"--n-starts {settings.n_starts} asks for more chains than the "
                              f"{len(structures)} input structure(s); give at most {len(structures)}")
        run = {"starts": _starts(structures, settings, gate), "seed": settings.seed,
               "units": settings.units, "bias": bias, **(info or {})}
        new = True
    else:
        new = False
        if run["seed"] != settings.seed:
            raise ConfigError(f"{out} was started with --seed {run['seed']}; resume with the same "
                              "seed or use a new --out")
        if run.get("units", "molecules") != settings.units:
            raise ConfigError(f"{out} was started with --units {run.get('units', 'molecules')}; "
                              "resume with the same units or use a new --out")
        if run.get("bias") != bias:
            raise ConfigError(f"{out} was started with bias {run.get('bias')}, this run asks for {bias}; "
                              "resume with the same --bias options or use a new --out")
        if max(run["starts"]) >= len(structures):
            raise ConfigError(f"{out} was started from start structure {max(run['starts'])}, but the "
                              f"input holds {len(structures)}; give the same structures or a new --out")
    chains = [_chain(out, c, structures[i], gate, settings, run["seed"]) for c, i in enumerate(run["starts"])]
    Path(out).mkdir(parents=True, exist_ok=True)
    if new:
        save_run(out, run)
    summary = []
    done = sum(min(mc.step_index, settings.steps) if not mc.terminated else settings.steps for _, _, mc in chains)
    bar = Progress(settings.steps * len(chains), "mc", unit="step", initial=done)
    for c, (idx, (files, state, mc)) in enumerate(zip(run["starts"], chains)):
        _run_chain(files, state, mc, settings, bar, offset=c * settings.steps)
        if (c + 1) * settings.steps > bar.n:  # a terminated chain: its remaining steps are not run
            bar.update((c + 1) * settings.steps - bar.n, force=True, postfix=f"chain {c} done")
        summary.append({"chain": c, "start_index": idx, "steps": mc.step_index,
                        "accepted": mc.n_accepted, "terminated": mc.terminated,
                        "e0_eV": mc.e0, "energy_eV": mc.energy})
    totals = {"chains": summary,
              "n_terminated": sum(1 for s in summary if s["terminated"]),
              "n_reference_calls_this_session": gate.n_reference_calls,
              "n_committee_calls_this_session": gate.n_committee_calls,
              "n_retrains_this_session": gate.n_retrains,
              "bias": settings.bias.to_dict() if settings.bias else None}
    bar.close()
    save_summary(out, totals, domain_warnings(gate.committee))
    return totals


__all__ = ["MCSettings", "UNITS", "run_threshold_mc", "fixed_molecule_count", "unit_count"]
