"""Resumable relaxation of a candidate pool (one :class:`GatedRelaxer` per candidate).

::

    pool = RelaxPool(GatedRelaxer(gate, policy="fallback"), "out/")
    rows = pool.run(candidates)          # list of summary dicts, one per candidate

Output folder layout (everything a rerun resumes from)
    ``trajectories/<id>.extxyz``
        one frame per *new* evaluation, appended and fsynced as it happens
        (result used, committee uncertainties, gate decision, call counters,
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
        A reference failure gives status ``reference_failed`` with the error in
        ``reason``.  A rerun reopens (:func:`reopen_summary`) the rows of
        failed candidates (retried) and of candidates that ended at a smaller
        ``max_steps`` (continued).
    ``relaxed.extxyz``
        the final frames of all finished candidates in input order,
        rewritten atomically from the trajectories after every candidate.
    ``pool.json``
        candidate ids and settings; a rerun with different candidates is refused.

A label is appended by the gate before the frame that used it is written; a
kill in between leaves a label whose geometry the restarted optimiser never
revisits (it restarts from the previous frame), so no label is duplicated.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from ..errors import ConfigError, ReferenceCalculationError
from ..fileio import (
    CsvLog,
    append_frame,
    atomic_write_text,
    load_json,
    read_frames_repair,
    save_json_atomic,
    write_structures_atomic,
)
from ..progress import progress_iter
from ..structures import density_gcm3

log = logging.getLogger("committee_calc.relax.gated")

#: columns of ``summary.csv``; the last six (verification, surface changes) are newer: a
#: ``summary.csv`` of an earlier version is extended in place when its pool is resumed
SUMMARY_COLUMNS = ("id", "status", "steps", "committee_calls", "reference_calls", "labels",
                   "energy_eV", "energy_per_atom_eV", "energy_std_eV", "forces_std_max_eVA",
                   "force_uncertainty_relative", "fmax_eVA", "density_gcm3", "natoms", "reason",
                   "committee_energy_eV", "reference_energy_eV", "reference_fmax_eVA",
                   "reference_stress_max_GPa", "verified", "surface_switches")
#: ``verified`` column: the reference agrees / disagrees / was not asked
VERIFIED = {True: "yes", False: "no", None: "not verified"}


def candidate_ids(images) -> list:
    """``info['candidate_id']``/``'id'``/``'name'`` when present and unique, else c0000, c0001..."""
    for key in ("candidate_id", "id", "name"):
        ids = [str(a.info.get(key)) for a in images if a.info.get(key) is not None]
        if len(ids) == len(images) and len(set(ids)) == len(ids):
            if all(_safe(i) for i in ids):
                return ids
    return [f"c{i:04d}" for i in range(len(images))]


def _safe(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")


class RelaxPool:
    """Relax every candidate of a pool independently and resumably.

    relaxer: a configured :class:`~committee_calc.relax.gated.GatedRelaxer`.
    out_dir: output folder (created); see the module docstring for its files.
    progress: show a progress bar over the pool (only on an interactive terminal).
    """

    def __init__(self, relaxer, out_dir, progress=True):
        self.relaxer = relaxer
        self.out = Path(out_dir)
        self.traj_dir = self.out / "trajectories"
        self.progress = progress

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
            log.warning("settings differ from the first run in %s (%s -> %s); unfinished "
                        "candidates continue with the new ones", self.out, meta["settings"],
                        here["settings"])

    def run(self, images, ids=None) -> list:
        """Relax all unfinished candidates; return all summary rows (input order)."""
        images = list(images)
        ids = [str(i) for i in ids] if ids is not None else candidate_ids(images)
        if len(ids) != len(images) or len(set(ids)) != len(ids):
            raise ConfigError("candidate ids must be unique, one per structure")
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
        for cid, atoms in progress_iter(todo, enabled=self.progress, desc="relax pool", total=len(todo)):
            row = self.relax_one(cid, atoms)
            summary.append(row)
            self.write_relaxed(ids, summary)
            (log.error if row["status"] == "reference_failed" else log.info)("%s", describe_row(row))
        self.write_relaxed(ids, summary)
        by_id = {r["id"]: r for r in summary.rows()}
        return [by_id[i] for i in ids if i in by_id]

    def relax_one(self, cid, atoms) -> dict:
        path = self.traj_dir / f"{cid}.extxyz"
        frames = read_frames_repair(path)
        resume = frames[-1] if frames else None
        if resume is not None:
            log.info("%s: resuming from step %s (%s)", cid, resume.info.get("relax_step", 0),
                     resume.info.get("relax_phase", "relax"))
        gate = self.relaxer.gate
        before = gate.n_reference_calls
        try:
            res = self.relaxer.relax(atoms, info={"candidate": cid},
                                     on_frame=lambda f: append_frame(path, f), resume=resume)
        except ReferenceCalculationError as exc:
            # attempted calls: those of earlier runs (saved frame), those of this run, the failed one
            earlier = int(resume.info.get("relax_reference_calls", 0)) if resume is not None else 0
            attempted = earlier + gate.n_reference_calls - before + 1
            return {"id": cid, "status": "reference_failed", "reason": str(exc).splitlines()[0],
                    "natoms": len(atoms), "reference_calls": attempted, "verified": VERIFIED[None],
                    "steps": int(resume.info.get("relax_step", 0)) if resume is not None else 0}
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
                       committee_energy_eV=_number(res.committee_energy),
                       reference_energy_eV=_number(res.reference_energy),
                       reference_fmax_eVA=_number(res.reference_fmax),
                       reference_stress_max_GPa=_number(res.reference_stress_GPa))
            if not frames or len(res.trajectory) > 1 or "relax_status" not in frames[-1].info:
                append_frame(path, final)  # the final frame carries relax_status
        return row

    def write_relaxed(self, ids, summary) -> list:
        """Rewrite ``relaxed.extxyz`` from the last frame of each finished candidate."""
        rows = {r["id"]: r for r in summary.rows()}
        out = []
        for cid in ids:
            row = rows.get(cid)
            if row is None or row["status"] == "reference_failed":
                continue
            frames = read_frames_repair(self.traj_dir / f"{cid}.extxyz")
            if not frames:
                continue
            f = frames[-1]
            f.info.update(candidate=cid, relax_status=row["status"])
            out.append(f)
        write_structures_atomic(self.out / "relaxed.extxyz", out)
        return out


def reopen_summary(path, max_steps) -> list:
    """Drop from ``summary.csv`` (atomically) the rows a rerun should continue: candidates whose
    reference failed (retried: the reference may work now) and candidates that ended at
    ``max_steps`` below the current ``max_steps`` (continued from their last frame).  Returns
    the ids reopened."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    if not text.endswith("\n"):  # a torn last line: CsvLog drops it
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    if tuple(reader.fieldnames or ()) != SUMMARY_COLUMNS:
        return []  # CsvLog refuses (or repairs) it

    def reopen(r):
        return r["status"] == "reference_failed" or (
            r["status"] == "max_steps" and int(r.get("steps") or 0) < int(max_steps))

    ids = [r["id"] for r in rows if reopen(r)]
    if ids:
        buf = io.StringIO()
        w = csv.DictWriter(buf, SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(r for r in rows if not reopen(r))
        atomic_write_text(path, buf.getvalue())
        log.info("continuing %d candidates of %s (reference failed, or max_steps below %d): %s",
                 len(ids), path.parent, max_steps, ", ".join(ids))
    return ids


def describe_row(row) -> str:
    """One log line for a summary row (no ``None``: missing values are left out)."""
    head = f"{row['id']}: {row['status']}"
    if row.get("steps") not in (None, ""):
        head += f" after {row['steps']} steps ({row.get('reference_calls', 0)} reference calls)"
    if row.get("energy_eV") not in (None, ""):
        head += f", E = {float(row['energy_eV']):.6g} eV"
    return f"{head}; {row['reason']}" if row.get("reason") else head


def upgrade_summary(path) -> None:
    """Extend a ``summary.csv`` written with an earlier prefix of :data:`SUMMARY_COLUMNS` by the
    newer (empty) columns, atomically; anything else is left to :class:`CsvLog` to refuse."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    n = len(header)
    if 0 < n < len(SUMMARY_COLUMNS) and tuple(header) == SUMMARY_COLUMNS[:n]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(SUMMARY_COLUMNS)
        for r in rows[1:]:
            if len(r) == n:  # a torn last line is dropped, as CsvLog would
                w.writerow(r + [""] * (len(SUMMARY_COLUMNS) - n))
        atomic_write_text(path, buf.getvalue())
        log.info("%s: added the columns %s of this version", path, SUMMARY_COLUMNS[n:])


def _number(x):
    """A finite float, or an empty CSV cell for a value that is not known."""
    return float(x) if x is not None and math.isfinite(x) else ""


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


__all__ = ["RelaxPool", "SUMMARY_COLUMNS", "VERIFIED", "candidate_ids", "describe_row",
           "final_frame", "read_frames_repair", "read_relaxed", "reopen_summary", "upgrade_summary"]
