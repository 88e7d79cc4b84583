"""Resumable relaxation of a candidate pool (one :class:`GatedRelaxer` path per candidate).

::

    pool = RelaxPool(GatedRelaxer(gate, policy="fallback"), "out/")
    rows = pool.run(candidates)          # list of summary dicts, one per candidate
    RelaxPool(relaxer, "out/", batch=False).run(candidates)   # one candidate after another

Batched (default): the candidates relax in flight together (:mod:`.batched`: one batched
committee call per round over all active candidates, under an atom budget grown from timings
or fixed by ``atom_budget``), with the same trajectories, decisions, labels and statuses as
``batch=False``, which relaxes one candidate after another.  Rows are appended to
``summary.csv`` as candidates finish and put in input order at the end of the run;
``relaxed.extxyz`` is rewritten at most every :data:`RELAXED_EVERY_S` seconds and at the end.

Output folder layout (everything a rerun resumes from)
    ``trajectories/<id>.extxyz``
        one frame per *new* evaluation, appended as it happens in one write
        (complete or absent after a kill; fsynced once, when the candidate
        finishes, before its summary row: an fsync per frame cost 5 ms of wall
        time per evaluation here) (result used, committee uncertainties, gate decision, call counters,
        surface changes, phase: ``relax``/``pinned``/``verify``/``polish``; the
        user's constraints, e.g. ``FixAtoms`` as ``move_mask``).  Its last
        complete frame is the candidate's saved state: a rerun restarts the
        optimiser there, in the same phase (a candidate killed during its
        verification goes on polishing), reusing the stored result (no new
        call), with the constraints of the input structure.  A torn last frame
        from a kill is cut off.  Optimiser memory (FIRE velocities, BFGS
        Hessian) is not kept: the restart begins afresh from that geometry.
    ``summary.csv``
        one row per *finished* candidate (written after its last frame); a
        candidate with a row is never relaxed again.  Columns
        :data:`SUMMARY_COLUMNS`, among them per candidate the committee and
        reference energy at the final structure [eV], the reference's largest
        force [eV/Å] and residual stress [GPa, with ``cell``] there (empty
        where no reference result exists), ``verified`` (``yes``/``no``/``not
        verified``) and ``reference_calls`` (attempted: a failed call counts).
        A reference failure gives status ``reference_failed``, a member that raises on
        the candidate (CommitteeCalculationError) ``committee_failed``, with the error in
        ``reason``; the other candidates go on.  A rerun reopens (:func:`reopen_summary`) the rows of
        failed candidates (retried) and of candidates that ended at a smaller
        ``max_steps`` (continued).
    ``relaxed.extxyz``
        the final frames of all finished candidates in input order, rewritten
        atomically after every candidate (batched: every :data:`RELAXED_EVERY_S` s).
    ``pool.json``
        candidate ids and settings; a rerun with different candidates is refused.

A label is appended by the gate before the frame that used it is written; a
kill in between leaves a label whose geometry the restarted optimiser never
revisits (it restarts from the previous frame), so no label is duplicated.  A batched
run saves every candidate the same way, frame by frame as the candidates are served in turn:
a kill leaves each at its last frame, and at most the one being served without its frame.
"""
from __future__ import annotations

import io
import logging
import time
from pathlib import Path

from ..errors import CommitteeCalculationError, CommitteeError, ConfigError, ReferenceCalculationError
from ..fileio import (
    CsvLog,
    fsync_file,
    load_json,
    read_frames_repair,
    read_last_frame,
    save_json_atomic,
    write_structures_atomic,
)
from ..fileio import append_frame as _append_frame
from ..members.base import BatchedMember
from ..progress import Progress
from ..structures import density_gcm3
from .batched import BatchedRelaxation
from .budget import pool_budget
from .summary import (
    FAILED,
    SUMMARY_COLUMNS,
    VERIFIED,
    describe_row,
    failed_row,
    log_row,
    number_cell,
    reopen_summary,
    summary_in_order,
    upgrade_summary,
)

log = logging.getLogger("committee_calc.relax.gated")

#: batched runs rewrite ``relaxed.extxyz`` at most this often [s] (and at the end)
RELAXED_EVERY_S = 30.0


def append_frame(path, frame) -> None:
    """Append one trajectory frame in one write, not fsynced: the trajectory is fsynced once,
    when its candidate finishes (:meth:`RelaxPool._row`), before the summary row."""
    _append_frame(path, frame, sync=False)


#: ``info`` keys naming a candidate, in the order :func:`candidate_ids` tries them
ID_KEYS = ("candidate_id", "candidate", "id", "name")


def candidate_ids(images) -> list:
    """The first of ``info['candidate_id']``/``'candidate'``/``'id'``/``'name'`` present on every
    structure with unique, file-name-safe values, else c0000, c0001...  (``candidate`` is also the
    key every relaxed frame carries its id under, so outputs read back keep their ids.)"""
    for key in ID_KEYS:
        ids = [str(a.info.get(key)) for a in images if a.info.get(key) is not None]
        if len(ids) == len(images) and len(set(ids)) == len(ids):
            if all(_safe(i) for i in ids):
                return ids
    return [f"c{i:04d}" for i in range(len(images))]


def settings_change(old: dict, new: dict) -> str:
    """``key old -> new, ...`` for the keys whose values differ between two settings dicts
    (a key only in one shows ``None`` on the other side)."""
    keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def check_candidates(committee, images, ids=None, atom_budget=None) -> None:
    """Every element of every candidate must be known to every member of ``committee`` (a
    committee or a gate), and a fixed ``atom_budget`` must hold the largest candidate
    (:func:`~.budget.pool_budget`); raises the CommitteeError naming the candidate."""
    members = _members(committee)
    images = list(images)
    ids = [str(i) for i in ids] if ids is not None else candidate_ids(images)
    for k, (cid, atoms) in enumerate(zip(ids, images)):
        for m in members:
            try:
                m.check_atoms(atoms)
            except CommitteeError as exc:
                raise type(exc)(f"candidate {cid} (structure {k}): {exc}") from None
    if atom_budget:
        pool_budget(ids, images, atom_budget)


def batches_natively(committee) -> bool:
    """Whether a member of ``committee`` (a committee or a gate) evaluates many structures in one
    call (:class:`~committee_calc.members.base.BatchedMember`: MACE, NequIP, SchNetPack, CHGNet,
    LLPR).  Without one, a batched relaxation only interleaves single calls, which costs the
    members' caches (ASE calculators rebuild their neighbour lists: measured 1.8x slower for an
    EMT committee), so ``committee-relax`` relaxes one candidate after another (same results)."""
    return any(isinstance(m, BatchedMember) for m in _members(committee))


def _members(committee) -> list:
    """The members of a committee, or of a gate's committee."""
    return getattr(getattr(committee, "committee", committee), "members", None) or []


def _safe(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")


class RelaxPool:
    """Relax every candidate of a pool independently and resumably.

    relaxer: a configured :class:`~committee_calc.relax.gated.GatedRelaxer`.
    out_dir: output folder (created); see the module docstring for its files.
    progress: show a progress bar over the pool (only on an interactive terminal).
    batch: relax the candidates in flight together (default) or one after another (False).
    atom_budget: atoms per batched committee call (None: grown from timings,
        :class:`~.budget.AtomBudget`); smaller than a candidate: ConfigError naming it.
    After a batched run ``batched`` is its :class:`~.batched.BatchedRelaxation` (counters).
    """

    def __init__(self, relaxer, out_dir, progress=True, batch=True, atom_budget=None):
        self.relaxer = relaxer
        self.out = Path(out_dir)
        self.traj_dir = self.out / "trajectories"
        self.progress = progress
        self.batch, self.atom_budget = bool(batch), atom_budget
        self.batched = None
        self._finals = {}  # cid -> last frame as read back from its trajectory

    def _settings(self):
        return self.relaxer.settings()

    def _check_pool(self, ids, images, meta):
        here = {"ids": ids, "natoms": [len(a) for a in images], "settings": self._settings()}
        if meta is None:
            save_json_atomic(self.out / "pool.json", here)
        elif meta.get("ids") != ids or meta.get("natoms") != here["natoms"]:
            raise ConfigError(f"{self.out} holds a different candidate pool ({len(meta.get('ids', []))} "
                              f"candidates); use a new --out folder for these {len(ids)} candidates")
        elif meta.get("settings") != here["settings"]:
            log.warning("settings differ from the first run in %s: %s; unfinished candidates continue "
                        "with the new ones", self.out, settings_change(meta["settings"], here["settings"]))

    def run(self, images, ids=None) -> list:
        """Relax all unfinished candidates; return all summary rows (input order)."""
        images = list(images)
        ids = [str(i) for i in ids] if ids is not None else candidate_ids(images)
        if len(ids) != len(images) or len(set(ids)) != len(ids):
            raise ConfigError("candidate ids must be unique, one per structure")
        check_candidates(self.relaxer.gate.committee, images, ids)
        budget = pool_budget(ids, images, self.atom_budget)  # a bad --atom-budget is refused either way
        meta = load_json(self.out / "pool.json")  # a corrupt state is refused before anything is created
        self.out.mkdir(parents=True, exist_ok=True)
        self.traj_dir.mkdir(exist_ok=True)
        self._check_pool(ids, images, meta)
        upgrade_summary(self.out / "summary.csv")
        reopen_summary(self.out / "summary.csv", self.relaxer.max_steps)
        summary = CsvLog(self.out / "summary.csv", SUMMARY_COLUMNS)
        done = {r["id"] for r in summary.rows()}
        todo = [(i, a) for i, a in zip(ids, images) if i not in done]
        if not todo:
            log.info("all %d candidates in %s are finished; nothing to do", len(ids), self.out)
        elif self.batch:
            self._run_batched(ids, todo, summary, budget)
        bar = _bar(len(todo)) if self.progress and todo and not self.batch else None
        for cid, atoms in todo if not self.batch else []:  # one after another: a line per candidate
            row = self.relax_one(cid, atoms)
            summary.append(row)
            self.write_relaxed(ids, summary)
            log_row(row)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.write_relaxed(ids, summary)
        by_id = {r["id"]: r for r in summary.rows()}
        return [by_id[i] for i in ids if i in by_id]

    def _run_batched(self, ids, todo, summary, budget) -> None:
        """The unfinished candidates in flight together (:mod:`.batched`)."""
        atoms_of, last = dict(todo), {}
        written = [time.monotonic()]
        bar = _bar(len(todo)) if self.progress else None

        def start(cid):
            path, saved, resume = self._open(cid)
            last[cid] = saved[-1] if saved else None
            return self.relaxer.start(atoms_of[cid], info={"candidate": cid},
                                      on_frame=lambda f: append_frame(path, f), resume=resume)

        def finish(cid, task, exc):
            atoms = atoms_of[cid]
            if exc is not None:  # attempted calls: saved ones, those of this run, the failed one
                row = failed_row(cid, atoms, exc, task.calc.state.reference
                                 + isinstance(exc, ReferenceCalculationError), task.calc.state.steps)
            else:
                row = self._row(cid, atoms, task.result, last.pop(cid, None))
            summary.append(row)
            log_row(row)
            if bar is not None:
                bar.update(1)
            if time.monotonic() - written[0] > RELAXED_EVERY_S:
                self.write_relaxed(ids, summary)
                written[0] = time.monotonic()

        self.batched = BatchedRelaxation(self.relaxer, budget)
        try:
            self.batched.run([(cid, len(a)) for cid, a in todo], start, finish)
        finally:
            if bar is not None:
                bar.close()
        log.info("batched relaxation: %s", self.batched.describe())
        summary_in_order(self.out / "summary.csv", ids)

    def _open(self, cid):
        """(trajectory path, its frames, the frame to resume from or None) of ``cid``."""
        path = self.traj_dir / f"{cid}.extxyz"
        frames = read_frames_repair(path)
        resume = frames[-1] if frames else None
        if resume is not None:
            log.info("%s: resuming from step %s (%s)", cid, resume.info.get("relax_step", 0),
                     resume.info.get("relax_phase", "relax"))
        return path, frames, resume

    def relax_one(self, cid, atoms) -> dict:
        """Relax one candidate (resumed from its trajectory) -> its summary row."""
        path, frames, resume = self._open(cid)
        gate = self.relaxer.gate
        before = gate.n_reference_calls
        try:
            res = self.relaxer.relax(atoms, info={"candidate": cid},
                                     on_frame=lambda f: append_frame(path, f), resume=resume)
        except (ReferenceCalculationError, CommitteeCalculationError) as exc:
            # attempted calls: those of earlier runs (saved frame), those of this run, the failed one
            earlier = int(resume.info.get("relax_reference_calls", 0)) if resume is not None else 0
            last = read_last_frame(path)  # steps: of the last frame saved, as the batched path counts
            steps = int(last.info.get("relax_step", 0)) if last is not None else 0
            failed = isinstance(exc, ReferenceCalculationError)
            return failed_row(cid, atoms, exc, earlier + gate.n_reference_calls - before + failed, steps)
        return self._row(cid, atoms, res, frames[-1] if frames else None)

    def _row(self, cid, atoms, res, last) -> dict:
        """The summary row of a finished relaxation; appends its final frame (carrying
        ``relax_status``) unless the trajectory ends with it already (``last``: its last frame
        before this run)."""
        final = res.atoms
        row = {"id": cid, "status": res.status, "steps": res.steps,
               "committee_calls": res.n_committee_calls, "reference_calls": res.n_reference_calls,
               "labels": res.n_labels, "reason": res.reason, "natoms": len(atoms),
               "verified": VERIFIED[res.verified],  # "not verified" also for max_steps, stalled ...
               "surface_switches": res.n_switches}
        if final is not None:
            row.update(energy_eV=res.energy, energy_per_atom_eV=res.energy / len(final),
                       energy_std_eV=res.energy_std, forces_std_max_eVA=res.forces_std_max,
                       force_uncertainty_relative=res.force_uncertainty_relative,
                       fmax_eVA=res.fmax, density_gcm3=density_gcm3(final),
                       committee_energy_eV=number_cell(res.committee_energy),
                       reference_energy_eV=number_cell(res.reference_energy),
                       reference_fmax_eVA=number_cell(res.reference_fmax),
                       reference_stress_max_GPa=number_cell(res.reference_stress_GPa))
            if last is None or len(res.trajectory) > 1 or "relax_status" not in last.info:
                append_frame(self.traj_dir / f"{cid}.extxyz", final)
                self._finals[cid] = _read_back(final)
        fsync_file(self.traj_dir / f"{cid}.extxyz")  # on disk before its summary row
        return row

    def write_relaxed(self, ids, summary) -> list:
        """Rewrite ``relaxed.extxyz`` from the last frame of each finished candidate."""
        rows = {r["id"]: r for r in summary.rows()}
        out = []
        for cid in ids:
            row = rows.get(cid)
            if row is None or row["status"] in FAILED:
                continue
            if cid not in self._finals:
                last = read_last_frame(self.traj_dir / f"{cid}.extxyz")  # a finished one: whole
                if last is None:
                    continue
                self._finals[cid] = last
            f = self._finals[cid].copy()
            f.info.update(candidate=cid, relax_status=row["status"])
            out.append(f)
        write_structures_atomic(self.out / "relaxed.extxyz", out)
        return out


def _bar(total):
    """Progress over finished candidates: a tqdm bar on a terminal, else plain ``progress: relax``
    lines (:class:`~committee_calc.progress.Progress`)."""
    return Progress(total, "relax", unit="candidates")


def _read_back(frame):
    """``frame`` as reading its trajectory back gives it (the extxyz text, parsed)."""
    from ase.io import read, write

    buf = io.StringIO()
    write(buf, frame, format="extxyz")
    return read(io.StringIO(buf.getvalue()), format="extxyz")


def read_relaxed(out_dir) -> list:
    """The structures of ``relaxed.extxyz``; ``info['candidate']`` as a string (extxyz reads a
    numeric id such as ``1`` back as a number)."""
    from ase.io import read

    p = Path(out_dir) / "relaxed.extxyz"
    images = read(p, ":") if p.exists() and p.stat().st_size else []
    for a in images:
        if "candidate" in a.info:
            a.info["candidate"] = str(a.info["candidate"])
    return images


def final_frame(out_dir, cid):
    """The last saved frame of candidate ``cid`` (its trajectory file is named by the id
    string, so ids such as ``01`` survive), or None."""
    frames = read_frames_repair(Path(out_dir) / "trajectories" / f"{cid}.extxyz")
    return frames[-1] if frames else None


__all__ = ["ID_KEYS", "RELAXED_EVERY_S", "RelaxPool", "SUMMARY_COLUMNS", "VERIFIED", "candidate_ids",
           "check_candidates", "settings_change",
           "describe_row", "final_frame", "read_frames_repair", "read_relaxed", "reopen_summary",
           "summary_in_order", "upgrade_summary"]
