"""The campaign's state file ``campaign.json``: the one file a rerun resumes from.

Written atomically (temporary file + rename) after every stage and after every candidate of
a stage, so a kill leaves the previous or the next state, never half of one.  Layout::

    {"version": 1, "ids": [...], "natoms": [...], "settings": {...},
     "round": r, "stage": "relax" | "label" | "retrain" | "done",
     "committee": path of the committee relaxing round r (relative to the folder when inside),
     "status": "running" | "finished" | "round_budget" | "label_budget", "reason": "...",
     "candidates": {id: {"status": "active" | "converged" | "unfinished" | "reference_failed",
                         "reason", "rounds", "steps", "free", "structure", "committee", "reference",
                         "last_round", "budget" (left unfinished by a budget)}},
     "rounds": [{"round", "committee", "results": {id: relaxation}, "labelled": {id: label},
                 "n_new_labels", "retrained", "heldout"}]}

Paths inside the state are relative to the campaign folder when they lie in it, so the folder
can be moved.  A campaign ended by a budget goes on when a rerun raises it (:meth:`CampaignState.reopen`).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..fileio import load_json, save_json_atomic
from ..structures import read_structures

VERSION = 1
STAGES = ("relax", "label", "retrain", "done")
#: candidate statuses; ``active`` candidates are relaxed in the next round
ACTIVE, CONVERGED, UNFINISHED, REFERENCE_FAILED = "active", "converged", "unfinished", "reference_failed"
STATE_FILE = "campaign.json"
CANDIDATES_FILE = "candidates.extxyz"


class CampaignState:
    """The campaign folder's state (``data`` is the JSON document described above)."""

    def __init__(self, out, data: dict):
        self.out = Path(out)
        self.data = data

    # ------------------------------------------------------------------ creation / loading
    @classmethod
    def new(cls, out, ids, images, settings: dict, committee) -> CampaignState:
        data = {"version": VERSION, "ids": list(ids), "natoms": [len(a) for a in images],
                "settings": dict(settings), "round": 0, "stage": "relax", "committee": None,
                "status": "running", "reason": "", "rounds": [],
                "candidates": {cid: {"status": ACTIVE, "reason": "", "rounds": 0, "steps": 0,
                                     "free": False, "structure": None, "committee": None,
                                     "reference": None} for cid in ids}}
        state = cls(out, data)
        state.committee = committee
        return state

    @classmethod
    def load(cls, out, ids, images, settings: dict, on_change=None) -> CampaignState | None:
        """The state of folder ``out`` (None if it holds none).  A folder of another pool (ids,
        atom counts) is a ConfigError; changed settings are reported to ``on_change(text)``
        and the new ones are used from here on."""
        data = load_json(Path(out) / STATE_FILE)
        if data is None:
            return None
        if data.get("version") != VERSION:
            raise ConfigError(f"{out}/{STATE_FILE} has version {data.get('version')}; this code "
                              f"reads version {VERSION}: use a new --out folder")
        if data["ids"] != list(ids) or data["natoms"] != [len(a) for a in images]:
            raise ConfigError(f"{out} holds a campaign of another candidate pool "
                              f"({len(data['ids'])} candidates); use a new --out folder for these "
                              f"{len(ids)} candidates")
        changed = {k: (data["settings"].get(k), v) for k, v in settings.items()
                   if data["settings"].get(k) != v}
        if changed and on_change is not None:
            on_change("settings changed since the last run (old -> new): " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        data["settings"] = dict(settings)
        return cls(out, data)

    def save(self) -> None:
        save_json_atomic(self.out / STATE_FILE, self.data)

    # ------------------------------------------------------------------ paths
    def rel(self, path) -> str:
        """``path`` relative to the campaign folder when inside it, else absolute."""
        p = Path(path).absolute()
        try:
            return str(p.relative_to(self.out.absolute()))
        except ValueError:
            return str(p)

    def abs(self, path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.out / p

    def round_dir(self, r=None) -> Path:
        return self.out / f"round_{self.round if r is None else r:03d}"

    # ------------------------------------------------------------------ views
    @property
    def round(self) -> int:
        return int(self.data["round"])

    @property
    def stage(self) -> str:
        return self.data["stage"]

    @stage.setter
    def stage(self, value):
        if value not in STAGES:
            raise ValueError(value)
        self.data["stage"] = value

    @property
    def committee(self) -> Path:
        """The committee YAML that relaxes the current round."""
        return self.abs(self.data["committee"])

    @committee.setter
    def committee(self, path):
        self.data["committee"] = self.rel(path)

    @property
    def ids(self) -> list:
        return list(self.data["ids"])

    @property
    def candidates(self) -> dict:
        return self.data["candidates"]

    @property
    def rounds(self) -> list:
        return self.data["rounds"]

    def active_ids(self) -> list:
        return [cid for cid in self.ids if self.candidates[cid]["status"] == ACTIVE]

    def round_record(self) -> dict:
        """The record of the current round (created with its committee on first use)."""
        if len(self.rounds) <= self.round:
            self.rounds.append({"round": self.round, "committee": self.data["committee"],
                                "active": self.active_ids(), "results": {}, "labelled": {}})
        return self.rounds[self.round]

    def start_structures(self) -> dict:
        """{id: Atoms} the input structures, as stored at the campaign's start."""
        return dict(zip(self.ids, read_structures(self.out / CANDIDATES_FILE)))

    def finish(self, status: str, reason: str) -> None:
        """End the campaign: the active candidates become ``unfinished`` (by a budget) with
        ``reason``."""
        for cid in self.active_ids():
            self.candidates[cid].update(status=UNFINISHED, reason=reason, budget=True)
        self.data.update(status=status, reason=reason)
        self.stage = "done"

    def reopen(self, n_labels: int) -> bool:
        """Go on with a campaign that a budget ended when the settings now allow more rounds and
        labels: the candidates a budget left unfinished become active, and the campaign
        continues after its last round (training first if that round's labels are untrained).
        Returns True when it reopened."""
        s = self.data["settings"]
        if self.stage != "done" or self.data["status"] not in ("round_budget", "label_budget") \
                or len(self.rounds) >= s["max_rounds"] \
                or (s["label_budget"] is not None and n_labels >= s["label_budget"]):
            return False
        for c in self.candidates.values():
            if c["status"] == UNFINISHED and c.pop("budget", False):
                c["status"] = ACTIVE
        last = self.rounds[-1]
        if last.get("n_new_labels") and not last.get("retrained"):
            self.stage = "retrain"
        else:
            self.data["round"] = self.round + 1
            self.stage = "relax"
        self.data.update(status="running", reason="")
        return True


__all__ = ["CampaignState", "STAGES", "ACTIVE", "CONVERGED", "UNFINISHED", "REFERENCE_FAILED",
           "STATE_FILE", "CANDIDATES_FILE"]
