"""Trainers of the active-learning loop and the ``committee-learn`` folder.

* :class:`BackendTrainer` — trains MACE/NequIP/SchNetPack committees through
  :func:`committee_calc.train.train_committee`; the in-process ridge committee
  is :class:`committee_calc.train.ridge.RidgeTrainer`; :func:`make_trainer`
  picks one by backend name.
* :func:`run_learning` — the runner of ``committee-learn``: writes
  ``trainer.json`` (what :func:`committee_from_learn_dir` needs to rebuild
  the committee), runs :class:`~committee_calc.active.learner.ActiveLearner`
  and writes ``summary.json`` and ``summary.md`` (:func:`write_learn_summary_md`).
* :func:`committee_from_learn_dir` — the last committee of a learn folder
  (its ``committee.yaml``, or the ridge committee refitted in-process).
"""
from __future__ import annotations

from pathlib import Path

from ..config import load_committee
from ..errors import ConfigError
from ..fileio import load_json, save_json_atomic
from ..summary_md import write_summary_md
from ..train import TRAINERS, train_committee
from ..train.ridge import RidgeTrainer
from ..units import check_count, ev_to_kjmol
from .learner import QUANTITIES, TRAIN_ENERGY_KEY, TRAIN_FORCES_KEY, ActiveLearner

TRAINER_FILE, SUMMARY_FILE = "trainer.json", "summary.json"


class BackendTrainer:
    """Trainer over :func:`committee_calc.train.train_committee` (MACE, NequIP, ...).

    Trains ``n_members`` models on the AL training file in ``work_dir`` and
    loads the committee YAML it writes.  Options go to ``train_committee``.
    """

    def __init__(self, backend="mace", n_members=4, **options):
        self.backend, self.n_members, self.options = backend, int(n_members), options

    def __call__(self, train_file, work_dir, use_forces):
        yaml_path = train_committee(str(train_file), str(work_dir), backend=self.backend,
                                    n_members=self.n_members, energy_key=TRAIN_ENERGY_KEY,
                                    forces_key=TRAIN_FORCES_KEY if use_forces else None,
                                    stress_key=None, **self.options)
        return load_committee(yaml_path)


def make_trainer(backend, species, n_members, molecules, seed=0):
    """:class:`RidgeTrainer` for ``backend="ridge"``, else a :class:`BackendTrainer`.
    ConfigError (before anything is trained or written) for an unknown backend."""
    if backend not in TRAINERS:
        raise ConfigError(f"unknown trainer backend {backend!r} (--backend); use one of {sorted(TRAINERS)}")
    if backend == "ridge":
        return RidgeTrainer(species, molecules=molecules, n_members=n_members, seed=seed)
    return BackendTrainer(backend=backend, n_members=n_members)


def run_learning(landscape, reference, out_dir, backend="ridge", n_members=8, seed=0,
                 **learner_options) -> dict:
    """Active learning on ``landscape`` into ``out_dir`` (resumable); returns the summary of
    :meth:`ActiveLearner.run` (also written to ``summary.json`` without the committee).

    Species are those of the landscape; the committee counts molecules per structure
    (``"auto"``) unless the landscape is per atom.  ``learner_options`` go to
    :class:`ActiveLearner` (validated there, before anything is written).  ConfigError for
    a negative seed or fewer than 2 members.
    """
    check_count("seed (--seed)", seed, 0)
    check_count("n_members (--n-members: a committee needs at least 2 for a spread)", n_members, 2)
    species = sorted({s for a in landscape.structures for s in a.get_chemical_symbols()})
    molecules = None if landscape.unit == "atom" else "auto"
    trainer = make_trainer(backend, species, n_members, molecules, seed)
    learner = ActiveLearner(landscape, reference, trainer, out_dir, seed=seed, **learner_options)
    load_json(learner.state_path)  # a corrupt resume state is refused before anything is written
    save_json_atomic(learner.out_dir / TRAINER_FILE,
                     {"backend": backend, "species": species, "n_members": n_members, "seed": seed,
                      "quantity": learner.quantity, "molecules": molecules})
    res = learner.run()
    save_json_atomic(learner.out_dir / SUMMARY_FILE, {k: v for k, v in res.items() if k != "committee"})
    write_learn_summary_md(learner.out_dir, res, learner.threshold, landscape.unit)
    return res


#: why a learning run stopped, in words (``stopped`` of the summary)
STOP_REASONS = {"converged": "at most the target fraction of candidates is above the threshold",
                "pool_empty": "every candidate is labelled", "max_train_size": "the label budget "
                "(--max-train-size) is spent", "max_iterations": "the iteration budget (--max-iterations) is spent"}


def write_learn_summary_md(out_dir, res: dict, threshold_eV: float, unit: str) -> str:
    """``<out_dir>/summary.md`` of a learning run: why it stopped, iterations, labels (reference
    calls), pool size and, at the last iteration, the candidates above the threshold and their
    committee energy spread (kJ/mol per molecule, or meV/atom for a per-atom landscape).
    ``res``: the summary of :meth:`ActiveLearner.run`; ``threshold_eV``: eV per ``unit``."""
    def energy(x):
        return f"{ev_to_kjmol(x):.3g} kJ/mol per molecule" if unit == "molecule" else f"{1e3 * x:.3g} meV/atom"

    last = (res.get("history") or [{}])[-1]
    numbers = [("iterations", str(res["iterations"])), ("labels (reference calls)", str(res["n_train"])),
               ("candidates in the pool", str(res["pool_size"])), ("threshold on σ_E", energy(threshold_eV))]
    if "fraction_above" in last:
        numbers += [("candidates above the threshold (last iteration)",
                     f"{100 * last['fraction_above']:.1f} % of {last['n_candidates']}"),
                    ("largest / mean σ_E of the candidates", f"{energy(last['sigma_max'])} / "
                                                             f"{energy(last['sigma_mean'])}")]
    why = STOP_REASONS.get(res["stopped"], str(res["stopped"]))
    return write_summary_md(out_dir, "committee-learn summary",
                            f"committee-learn stopped after {res['iterations']} iterations with {res['n_train']} "
                            f"labels: {why} (`{res['stopped']}`).", numbers,
                            files=[("summary.json", "why it stopped, iterations, labels, per-iteration history"),
                                   ("labels.extxyz", "the reference labels"),
                                   ("iterNNN/", "each iteration's training set (and committee)"),
                                   ("trainer.json", "how the committee is rebuilt (committee-rerank --learn-dir)")])


def committee_from_learn_dir(path) -> tuple:
    """``(committee, delta)`` of a finished ``committee-learn`` folder: the last iteration's
    ``committee.yaml``, or (ridge) the committee refitted on its training file; ``delta``:
    the committee predicts reference − baseline.  ConfigError for an unfinished folder."""
    path = Path(path)
    cfg = load_json(path / TRAINER_FILE)
    iters = sorted(path.glob("iter*/train.extxyz"))
    if cfg is None or not iters:
        raise ConfigError(f"{path} is not a finished committee-learn folder (no {TRAINER_FILE} / "
                          "iter*/train.extxyz)")
    last = iters[-1]
    delta, forces = QUANTITIES[cfg["quantity"]]
    if cfg["backend"] != "ridge" and (last.parent / "committee.yaml").exists():
        return load_committee(last.parent / "committee.yaml"), delta
    trainer = make_trainer(cfg["backend"], cfg["species"], cfg["n_members"], cfg.get("molecules"),
                           cfg.get("seed", 0))
    return trainer(last, last.parent, forces), delta
