"""The active relaxation campaign: relax → stop on U → label → fine-tune → go on (Hessmann et al.).

::

    from committee_calc.campaign import run_campaign
    res = run_campaign(images, "committee.yaml", "reference.yaml", "runs/campaign", u_max=0.2,
                       fmax=0.05, max_rounds=10, label_budget=200)
    res.status, res.n_rounds, res.n_reference_calls, res.candidates[0]["reference_fmax_eVA"]

Round r (``round_NNN/``): (a) relax every unfinished candidate with the current committee,
each stopping when U = max‖σ_F‖/max‖F̄‖ > U_max or a stop threshold (``thresholds``) is exceeded
(:mod:`.stages`); (b) label the stopped structures, and give every structure converged on the
committee surface a reference single point, through the one labeller (``labels.extxyz``,
provenance round/candidate/step/reason); a candidate is ``converged`` when that reference
force (and stress with ``cell``) meets the target; (c) if another round follows and the round
made new labels, fine-tune every member from its current weights on seed set + all labels
(:class:`~.training.RoundTrainer`; ``round_NNN/committee.yaml`` with held-out errors);
(d) the next round continues the candidates from where they stopped with the new committee.
The campaign ends when every candidate is finished (status ``finished``), or when
``max_rounds`` rounds have relaxed (``round_budget``) or ``label_budget`` labels are stored
(``label_budget``; the reference calls of the campaign).

Before anything is written, everything is checked: the candidates, the committee (its
``training:`` section and seed set, an evaluation of every candidate), the settings, and the
reference (one probe label of an input structure, :func:`~.io.probe_reference`; it becomes
the first label).  Bad input raises a :class:`~committee_calc.errors.CommitteeError` and
leaves no campaign folder.

Resume: ``campaign.json`` (:mod:`.state`) is rewritten atomically after every stage and every
candidate; a rerun with the same candidates continues at the stage it was in.  Labels are not
computed twice (the labeller de-duplicates; labels are counted from their provenance),
training of a round is skipped when its ``committee.yaml`` exists, and a relaxation killed
half-way is run again from the round's start (committee calls only), so a killed and resumed
campaign ends with the same labels and rounds as an uninterrupted one.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import load_committee, read_yaml
from ..errors import ConfigError
from ..fileio import check_dir, write_structures_atomic
from ..gate import Gate
from ..labeller import Labeller
from ..measures import check_limits, parse_limits
from ..progress import Progress
from ..relax.gated import OPTIMIZERS
from ..relax.pool import candidate_ids
from ..train import read_training
from ..units import check_count, check_finite, check_positive
from .io import as_stored, probe_reference, write_outputs
from .stages import EXPLODED, HARD_CAP, close_round, label_stage, relax_stage
from .state import CANDIDATES_FILE, CampaignState
from .training import RoundTrainer

log = logging.getLogger("committee_calc.campaign")
PROVENANCE = {"driver": "campaign"}


@dataclass(frozen=True)
class CampaignResult:
    """What a campaign produced (plain data; the files are in ``out``).

    status: ``finished`` | ``round_budget`` | ``label_budget``; reason: a sentence.
    n_rounds: rounds relaxed; n_labels: labels in the store (reference calls that succeeded);
    n_reference_calls: n_labels plus failed reference calls of the campaign.
    candidates: the ``summary.csv`` rows (dicts, input order); rounds: per-round records of
    ``campaign.json``; committee: the YAML of the latest committee.
    """

    out: Path
    status: str
    reason: str
    n_rounds: int
    n_labels: int
    n_reference_calls: int
    candidates: list
    rounds: list
    committee: str


def campaign_settings(u_max, thresholds, fmax, max_steps, max_rounds, label_budget, cell,
                      pressure_GPa, optimizer, fix_symmetry, verify_fmax, verify_stress_GPa,
                      molecules, polish=0, caps=None) -> dict:
    """The checked settings (JSON-able; thresholds and caps in internal units; ``caps`` only when
    given, so folders of earlier versions resume unchanged).  Raises ConfigError (also for a cap
    below its threshold)."""
    if label_budget is not None and (isinstance(label_budget, bool) or int(label_budget) != label_budget
                                     or label_budget < 1):
        raise ConfigError(f"label_budget must be a positive number of labels (reference calls), "
                          f"got {label_budget!r}")
    if isinstance(max_rounds, bool) or int(max_rounds) != max_rounds or max_rounds < 1:
        raise ConfigError(f"max_rounds must be a positive int, got {max_rounds!r}")
    if int(max_steps) < 1:
        raise ConfigError(f"max_steps must be ≥ 1, got {max_steps!r}")
    if str(optimizer).upper() not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    fmax = check_positive("fmax", fmax)
    thresholds, caps = parse_limits(thresholds, what="stop threshold"), parse_limits(caps, what="hard cap")
    check_limits(thresholds, caps, molecules=molecules)
    return {"u_max": check_positive("u_max", u_max), "thresholds": thresholds, **({"caps": caps} if caps else {}),
            "fmax": fmax, "max_steps": int(max_steps), "max_rounds": int(max_rounds),
            "label_budget": None if label_budget is None else int(label_budget),
            "cell": bool(cell), "pressure_GPa": check_finite("pressure_GPa", pressure_GPa),
            "optimizer": str(optimizer).upper(), "fix_symmetry": bool(fix_symmetry),
            "verify_fmax": fmax if verify_fmax is None else check_positive("verify_fmax", verify_fmax),
            "verify_stress_GPa": check_positive("verify_stress_GPa", verify_stress_GPa),
            "polish": check_count("polish", polish, 0), "molecules": molecules}


#: training devices a trainer understands: cpu, cuda, cuda:N, mps, xpu (checked without torch)
DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")


def check_training_options(max_epochs=None, n_jobs=1, device=None) -> None:
    """ConfigError for max_epochs < 1 (--max-epochs), n_jobs < 1 (--n-jobs) or a device that is
    not ``cpu``, ``cuda[:N]``, ``mps`` or ``xpu`` (--device) — before anything is written."""
    if max_epochs is not None:
        check_count("max_epochs (--max-epochs)", max_epochs, 1)
    check_count("n_jobs (--n-jobs)", n_jobs, 1)
    if device is not None and not (isinstance(device, str) and DEVICE_PATTERN.fullmatch(device)):
        raise ConfigError(f"unknown training device {device!r} (--device); use cpu, cuda, cuda:N, "
                          "mps or xpu")


def _start(out, images, ids, committee_yaml, reference, settings) -> CampaignState:
    """A new campaign folder: probe the reference (its label becomes the first), then write the
    candidates and the state."""
    check_dir(out, "output folder (--out)")
    labels = out / "labels.extxyz"
    if not labels.exists():  # a folder of a run killed right after its probe keeps that label
        probe_reference(reference, images, ids, labels, provenance=PROVENANCE)
    write_structures_atomic(out / CANDIDATES_FILE, images)
    state = CampaignState.new(out, ids, images, settings, Path(committee_yaml).resolve())
    state.save()
    return state


def _next_stage(state, n_new, n_labels) -> None:
    s, r = state.data["settings"], state.round
    if not state.active_ids():
        state.finish("finished", "every candidate is finished")
    elif s["label_budget"] is not None and n_labels >= s["label_budget"]:
        state.finish("label_budget", f"label budget of {s['label_budget']} labels spent")
    elif r + 1 >= s["max_rounds"]:
        state.finish("round_budget", f"round budget of {s['max_rounds']} rounds spent")
    elif n_new:
        state.stage = "retrain"
    else:  # nothing new to learn: the next round goes on with the same committee
        state.data["round"] = r + 1
        state.stage = "relax"


def run_campaign(images, committee_yaml, reference, out_dir, u_max=0.2, thresholds=None,
                 fmax=0.05, max_steps=200, max_rounds=10, label_budget=None, cell=False,
                 pressure_GPa=0.0, optimizer="FIRE", fix_symmetry=False, verify_fmax=None,
                 verify_stress_GPa=0.1, heldout_file=None, heldout_fraction=0.1, bootstrap=True,
                 max_epochs=None, n_jobs=1, device=None, timeout_s=None, molecules=None,
                 ids=None, progress=None, polish=0, caps=None) -> CampaignResult:
    """Run (or resume) an active relaxation campaign in ``out_dir`` (module docstring).

    images: candidate structures (list of Atoms); ids: their ids (default
        :func:`~committee_calc.relax.pool.candidate_ids`).
    committee_yaml: committee YAML with a ``training:`` section (written by
        :func:`committee_calc.train.train_committee`: backend, keys, epochs, seed set).
    reference: ASE calculator, reference YAML or :class:`~committee_calc.reference.ReferenceSpec`.
    u_max: U_max (relative force uncertainty, no unit); thresholds: further stop limits for
        :func:`~committee_calc.measures.parse_limits` (e.g. ``{"forces_std_max_eVA": 0.5}``): the
        structure above one is labelled; caps: hard caps, above which a candidate ends
        ``unfinished`` without a label (too far from the training data to label).
    fmax [eV/Å], max_steps (per round), optimizer, cell, pressure_GPa, fix_symmetry: the
        relaxation; verify_fmax [eV/Å] (default fmax), verify_stress_GPa: the reference targets.
    polish: reference optimiser steps at most after a failed verification (0: none; each step
        a label, :mod:`.polish`); a candidate the reference then accepts is ``converged``.
    max_rounds: rounds at most; label_budget: labels (reference calls) at most, None: no limit.
    heldout_file, heldout_fraction, bootstrap, max_epochs, n_jobs, device, timeout_s: the
        retraining (:class:`~.training.RoundTrainer`); heldout_file defaults to the YAML's
        ``training.heldout_file`` (relative to the YAML's folder).
    progress: callable(str) for the progress lines (default: this module's logger, INFO).
    Returns a :class:`CampaignResult`.  Raises ConfigError, StructureReadError,
    ReferenceCalculationError (probe), TrainingError, UnknownSpeciesError.
    """
    say = progress or log.info
    images = as_stored(images)
    if not images:
        raise ConfigError("a campaign needs at least one candidate structure")
    ids = list(ids) if ids is not None else candidate_ids(images)
    if len(ids) != len(images) or len(set(ids)) != len(ids):
        raise ConfigError("candidate ids must be unique, one per structure")
    settings = campaign_settings(u_max, thresholds, fmax, max_steps, max_rounds, label_budget, cell,
                                 pressure_GPa, optimizer, fix_symmetry, verify_fmax,
                                 verify_stress_GPa, molecules, polish, caps)
    check_training_options(max_epochs, n_jobs, device)
    if heldout_file is None and read_training(committee_yaml).get("heldout_file"):
        heldout_file = Path(committee_yaml).parent / read_training(committee_yaml)["heldout_file"]
    trainer = RoundTrainer(committee_yaml, heldout_file=heldout_file, heldout_fraction=heldout_fraction,
                           bootstrap=bootstrap, max_epochs=max_epochs, n_jobs=n_jobs, device=device,
                           timeout_s=timeout_s)
    settings.update(committee=str(Path(committee_yaml).resolve()), heldout_file=trainer.heldout_file,
                    heldout_fraction=trainer.heldout_fraction, bootstrap=trainer.bootstrap)
    committee = load_committee(committee_yaml)
    Gate(committee, molecules=molecules).evaluate_many(images)  # species, finite output
    Labeller(reference)  # the reference builds
    out = Path(out_dir)
    state = CampaignState.load(out, ids, images, settings, on_change=say)
    resumed = state is not None
    if state is None:
        state = _start(out, images, ids, committee_yaml, reference, settings)
        say(f"campaign: {len(ids)} candidates, U_max = {settings['u_max']:g}, fmax = {fmax:g} eV/Å, "
            f"reference probed")
    labeller = Labeller(reference, out / "labels.extxyz", provenance=PROVENANCE)
    if state.reopen(len(labeller.store)):
        say(f"campaign: the budgets now allow more: going on after round {len(state.rounds) - 1}")
        state.save()
    if resumed:
        say(f"campaign: resuming {out} at round {state.round}, stage {state.stage}")
    inputs = state.start_structures()
    _run_stages(state, trainer, labeller, inputs, say)
    frames = labeller.store.read()
    rows = write_outputs(state, frames, inputs)
    failures = sum(r.get("n_reference_failures", 0) for r in state.rounds)
    done = sum(r["status"] == "converged" for r in rows)
    say(f"campaign {state.data['status']}: {done}/{len(rows)} converged (reference-verified) after "
        f"{len(state.rounds)} rounds, {len(frames)} labels; {state.data['reason']}")
    return CampaignResult(out=out, status=state.data["status"], reason=state.data["reason"],
                          n_rounds=len(state.rounds), n_labels=len(frames),
                          n_reference_calls=len(frames) + failures, candidates=rows,
                          rounds=state.rounds, committee=str(state.committee))


def _timed(state, stage, t0) -> None:
    """Add the wall time since ``t0`` [s] to the round's record (``seconds[stage]``)."""
    secs = state.round_record().setdefault("seconds", {})
    secs[stage] = round(secs.get(stage, 0.0) + time.time() - t0, 2)


def campaign_seconds(rounds) -> float:
    """Wall time [s] of a campaign's stages over all its runs (resumes included)."""
    return float(sum(sum(r.get("seconds", {}).values()) for r in rounds))


def _run_stages(state, trainer, labeller, inputs, say) -> None:
    """The stage loop: relax → label → retrain → relax …, the state saved after each stage."""
    while state.stage != "done":
        r, t0 = state.round, time.time()
        if state.stage == "relax":
            rec = state.round_record()
            say(f"round {r}: relaxing {len(rec['active'])} candidates with {state.data['committee']}")
            trained = {f.info.get("label_hash") for f in labeller.store.read()
                       if r > 0 and int(f.info.get("prov_round", r)) < r}
            relax_stage(state, load_committee(state.committee), inputs, say, trained=trained)
            _timed(state, "relax", t0)
            state.stage = "label"
            state.save()
        elif state.stage == "label":
            label_stage(state, labeller, inputs, say)
            _timed(state, "label", t0)
            frames = labeller.store.read()
            n_new = close_round(state, frames)
            _next_stage(state, n_new, len(frames))
            state.save()
            write_outputs(state, frames, inputs)
            say(f"round {r}: {n_new} new labels ({len(frames)} in all); "
                f"{len(state.active_ids())} candidates go on")
        elif state.stage == "retrain":
            say(f"round {r}: fine-tuning the committee on the seed set + {len(labeller.store)} labels")
            path = trainer.retrain(state.round_dir(), labeller.store.read(), init=state.committee)
            rec = state.round_record()
            _timed(state, "retrain", t0)
            rec["retrained"] = state.rel(path)
            rec["heldout"] = read_yaml(path)["training"].get("heldout")
            h = rec["heldout"] or {}
            b = h.get("before") or {}
            say(f"round {r}: committee {rec['retrained']}: held-out n = {h.get('n', 0)}"
                + (f", energy RMSE {b['energy_rmse_meV_atom']:.2f} -> {h['energy_rmse_meV_atom']:.2f} "
                   "meV/atom" if h.get("n") else "")
                + (f", force RMSE {b['forces_rmse_eVA']:.3f} -> {h['forces_rmse_eVA']:.3f} eV/Å"
                   if h.get("forces_rmse_eVA") else ""))
            state.committee = path
            state.data["round"] = r + 1
            state.stage = "relax"
            state.save()


#: the campaign's messages (:mod:`.stages`, this module) that advance its progress
_ROUND_START = re.compile(r"round (\d+): relaxing (\d+) candidates")
_RELAXED = re.compile(r"round (\d+): \S+ \S+ after \d+ steps")
_LABELLED = re.compile(r"round (\d+): \S+ (labelled|not labelled)")
_ROUND_END = re.compile(r"round (\d+): \d+ new labels")
#: ends of a relaxation line that no label line follows (:func:`~.stages.outcome`)
_UNLABELLED = ("-> continue", f"-> {EXPLODED}", f"-> {HARD_CAP}")


def campaign_progress(max_rounds: int, echo=None, enabled: bool = True):
    """A ``progress`` callable for :func:`run_campaign`: ``echo`` every message (default: print,
    flushed) and advance a :class:`~committee_calc.progress.Progress` over ``max_rounds`` rounds
    (plain lines with rate and ETA when output is not a terminal) per candidate: within round r of K relaxing
    candidates, each finished relaxation and each label (or refusal) is 1/(2K) round, a relaxation
    that no label follows (outcome ``continue``, ``exploded`` or ``hard_cap``) 1/K; a round's start and end and the
    campaign's end (the rest of the rounds, not needed) log a line."""
    bar = Progress(max_rounds, "campaign", unit="rounds", enabled=enabled)
    active = {"k": 1}
    echo = echo or (lambda text: print(text, flush=True))

    def to(target: float, text: str, force: bool = False) -> None:
        bar.update(max(0.0, min(target, bar.total) - bar.n), postfix=text[:70], force=force)

    def say(text: str) -> None:
        echo(text)
        if m := _ROUND_START.match(text):
            active["k"] = max(1, int(m.group(2)))
            to(float(m.group(1)), text, force=True)
        elif m := _RELAXED.match(text) or _LABELLED.match(text):
            share = 1.0 if _RELAXED.match(text) and text.endswith(_UNLABELLED) else 0.5
            to(min(bar.n + share / active["k"], int(m.group(1)) + 1.0), text)
        elif m := _ROUND_END.match(text):
            to(int(m.group(1)) + 1.0, text, force=True)
        elif text.startswith("campaign ") and bar.n < bar.total:  # the end, early or not
            to(bar.total, text.split(":")[0], force=True)
    say.bar = bar
    return say


__all__ = ["run_campaign", "CampaignResult", "campaign_progress", "campaign_settings", "campaign_seconds"]
