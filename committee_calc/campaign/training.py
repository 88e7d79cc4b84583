"""Retraining a campaign round: training set, held-out split, fine-tune, round committee.

:class:`RoundTrainer` is the campaign's trainer interface::

    trainer = RoundTrainer("committee.yaml")            # reads its ``training:`` section
    yaml_path = trainer.retrain(round_dir, labels, init="round_001/committee.yaml")

* **training set** (``round_dir/train.extxyz``): the committee's seed set
  (``training.train_file``, :func:`committee_calc.train.training_files`) plus every label of
  the campaign's store that is not held out, under the seed set's keys.
* **held-out set**: ``heldout_file`` when given (e.g. the seed set's held-out file), else a
  fixed fraction of the labels, chosen by their ``label_hash`` (a label is held out or not
  for the whole campaign, whatever the round or a resume).
* **fine-tune** (:func:`committee_calc.train.fine_tune_committee`): every member starts from
  its current weights (the committee ``init``) with a new seed and bootstrap subset, settings
  from the ``training:`` section; models land in ``round_dir/training/``.
* **round committee** ``round_dir/committee.yaml``: those members, their ``training:``
  section (for the next fine-tune) with ``heldout:`` errors of the committee mean: energy RMSE
  and MAE [meV/atom], force-component RMSE [eV/Å], number of structures, and under
  ``before`` the same errors of the committee it was fine-tuned from.  Written last and
  atomically: when it exists, the round's training is done and is never repeated; a finished
  ``training/committee.yaml`` from a killed run is reused.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from ase import Atoms

from .. import keys as K
from ..config import load_committee, read_yaml, write_yaml_atomic
from ..errors import ConfigError
from ..fileio import write_structures_atomic
from ..gate import Gate
from ..train import fine_tune_committee, read_training, training_files
from ..train._common import read_training_set
from ..units import energy_factor

#: label-store keys of the reference values (:class:`committee_calc.labels.LabelStore` defaults)
STORE_KEYS = ("REF_energy", "REF_forces", "REF_stress")
#: 16**12: the range of the 12 hex digits of a label hash used for the held-out split
_HASH_RANGE = float(16 ** 12)


def is_heldout(label_hash: str, fraction: float) -> bool:
    """True for the labels of the held-out ``fraction``: a pure function of the label's hash."""
    return fraction > 0 and int(str(label_hash)[:12], 16) / _HASH_RANGE < fraction


def _clean(frame, keys, store_keys) -> Atoms:
    """Geometry + reference values of a label under the training keys (no other info)."""
    a = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    (ek, fk, sk), (sek, sfk, ssk) = keys, store_keys
    a.info[ek] = float(frame.info[sek])
    if fk and sfk in frame.arrays:
        a.arrays[fk] = np.array(frame.arrays[sfk], float)
    if sk and ssk in frame.info:
        a.info[sk] = np.array(frame.info[ssk], float)
    if "label_hash" in frame.info:
        a.info["label_hash"] = frame.info["label_hash"]
    return a


def heldout_errors(committee, frames, energy_key, forces_key) -> dict:
    """Errors of the committee mean on ``frames``: ``n``, ``energy_rmse_meV_atom``,
    ``energy_mae_meV_atom``, ``forces_rmse_eVA`` (components; None without force labels).
    Evaluated through ``Gate(committee)`` (the one evaluator)."""
    if not frames:
        return {"n": 0}
    res = Gate(committee).evaluate_many(frames, properties=(K.ENERGY, K.FORCES))
    mev = energy_factor("meV")
    de = np.array([(r.results[K.ENERGY] - float(f.info[energy_key])) / len(f) / mev
                   for r, f in zip(res, frames)])
    dF = [np.asarray(r.results[K.FORCES]) - f.arrays[forces_key]
          for r, f in zip(res, frames) if forces_key and forces_key in f.arrays]
    return {"n": len(frames), "energy_rmse_meV_atom": float(np.sqrt(np.mean(de ** 2))),
            "energy_mae_meV_atom": float(np.mean(np.abs(de))),
            "forces_rmse_eVA": float(np.sqrt(np.mean(np.concatenate([d.ravel() for d in dF]) ** 2)))
            if dF else None}


class RoundTrainer:
    """Fine-tunes the campaign's committee once per round (see the module docstring).

    committee_yaml: the campaign's input committee; its ``training:`` section gives the backend,
        keys, epochs and model options, ``training.train_file`` the seed set.
    heldout_file: extxyz held-out set under the seed set's keys (None: a fraction of the labels).
    heldout_fraction: fraction of the labels held out when no file is given, in [0, 1).
    bootstrap: members train on bootstrap samples (default True: members differ by seed and subset).
    max_epochs: override of the fine-tune epochs; n_jobs, device, timeout_s: for the trainer.
    Raises ConfigError (no ``training:`` section, bad fraction), StructureReadError (seed files).
    """

    def __init__(self, committee_yaml, heldout_file=None, heldout_fraction=0.1, bootstrap=True,
                 max_epochs=None, n_jobs=1, device=None, timeout_s=None):
        self.training = read_training(committee_yaml)
        t = self.training
        self.keys = (t.get("energy_key", "REF_energy"), t.get("forces_key", "REF_forces"),
                     t.get("stress_key", "REF_stress"))
        self.seed_files = training_files(committee_yaml)
        self.seed = [a for p in self.seed_files for a in read_training_set(p, *self.keys[:2])]
        if not 0 <= float(heldout_fraction) < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
        self.heldout_fraction = 0.0 if heldout_file else float(heldout_fraction)
        self.heldout_file = str(Path(heldout_file).resolve()) if heldout_file else None
        self.heldout = read_training_set(heldout_file, *self.keys[:2]) if heldout_file else []
        self.bootstrap, self.max_epochs = bool(bootstrap), max_epochs
        self.n_jobs, self.device, self.timeout_s = n_jobs, device, timeout_s

    def split(self, labels) -> tuple:
        """(training labels, held-out structures) under the training keys."""
        frames = [_clean(f, self.keys, STORE_KEYS) for f in labels]
        out = [f for f in frames if is_heldout(f.info.get("label_hash", "0"), self.heldout_fraction)]
        train = [f for f in frames if not any(f is h for h in out)]
        return train, self.heldout or out

    def retrain(self, round_dir, labels, init) -> str:
        """Fine-tune the committee ``init`` on seed set + training labels into ``round_dir``;
        return ``round_dir/committee.yaml`` (nothing is trained when it exists)."""
        rdir = Path(round_dir)
        out = rdir / "committee.yaml"
        if out.exists():
            return str(out)
        train, held = self.split(labels)
        work = rdir / "training"
        trained = work / "committee.yaml"
        if not trained.exists():
            if work.exists():
                shutil.rmtree(work)  # a training killed half-way: start it afresh
            train_file = rdir / "train.extxyz"
            write_structures_atomic(train_file, self.seed + train)
            fine_tune_committee(init, train_file, work, bootstrap=self.bootstrap,
                                max_epochs=self.max_epochs, n_jobs=self.n_jobs, device=self.device,
                                timeout_s=self.timeout_s)
        spec = read_yaml(trained)
        for m in spec["members"]:
            if "path" in m:
                m["path"] = f"training/{m['path']}"
        errors = heldout_errors(load_committee(trained), held, *self.keys[:2])
        errors.update(n_train_seed=len(self.seed), n_train_labels=len(train),
                      source=self.heldout_file or f"{self.heldout_fraction:g} of the labels",
                      before=heldout_errors(load_committee(init), held, *self.keys[:2]))
        spec["training"]["heldout"] = errors
        write_yaml_atomic(out, spec)
        return str(out)


__all__ = ["RoundTrainer", "heldout_errors", "is_heldout", "STORE_KEYS"]
