"""Session-cached tiny MLIP models built at test time (no downloads).

Training data: ~20 rattled/strained diamond-Si cells labelled with the
Stillinger-Weber potential run through LAMMPS (a cheap real calculator), or
with ASE's Lennard-Jones when LAMMPS is missing.  Each framework's fixture
builds a few tiny members (a few optimiser steps each, different seeds) and
caches them on disk for the test session.

The ``build_*`` functions are plain functions so the benchmark can reuse them.
"""
from __future__ import annotations

import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np
import pytest

REF_KEYS = ("REF_energy", "REF_forces", "REF_stress")


# ----------------------------------------------------------------------------
# data
def si_structures(n=20, seed=0, repeat=(1, 1, 1)):
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Si", "diamond", 5.43 * (1 + rng.uniform(-0.03, 0.03)), cubic=True) * repeat
        a.rattle(0.08, seed=seed * 1000 + i)
        out.append(a)
    return out


def labeller():
    """A cheap real calculator for Si: LAMMPS SW member, or LJ as fallback."""
    try:
        from committee_calc.members.lammps import LAMMPSMember

        m = LAMMPSMember("sw", "* * Si.sw Si", ["Si"])
        return lambda a: m.predict(a, ("energy", "forces", "stress"))
    except Exception:  # LAMMPS missing: Lennard-Jones stand-in
        from ase.calculators.lj import LennardJones

        calc = LennardJones(sigma=2.1, epsilon=1.0, rc=4.0, smooth=True)

        def lj(a):
            b = a.copy()
            b.calc = calc
            return {"energy": b.get_potential_energy(), "forces": b.get_forces(),
                    "stress": b.get_stress()}
        return lj


def labelled_si(n=20, seed=0, repeat=(1, 1, 1)):
    lab = labeller()
    frames = si_structures(n, seed, repeat)
    for a in frames:
        p = lab(a)
        a.info["REF_energy"] = float(p["energy"])
        a.arrays["REF_forces"] = np.array(p["forces"])
        a.info["REF_stress"] = np.array(p["stress"])
    return frames


def write_extxyz(frames, path):
    from ase.io import write

    write(str(path), frames, format="extxyz")
    return str(path)


# ----------------------------------------------------------------------------
# MACE (built in-process: far faster than run_train; train path tested separately)
def build_mace(path, frames, seed=0, r_max=4.0, channels=8, steps=8, dtype="float64"):
    import torch
    from e3nn import o3
    from mace import data as mace_data
    from mace import modules
    from mace.tools import torch_geometric, torch_tools, utils

    torch.manual_seed(seed)
    with torch_tools.default_dtype(dtype):
        z_table = utils.AtomicNumberTable([14])
        e_per_atom = np.mean([a.info["REF_energy"] / len(a) for a in frames])
        model = modules.MACE(
            r_max=r_max, num_bessel=4, num_polynomial_cutoff=5, max_ell=2,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2, num_elements=1, hidden_irreps=o3.Irreps(f"{channels}x0e"),
            MLP_irreps=o3.Irreps("4x0e"), atomic_energies=np.array([e_per_atom]),
            avg_num_neighbors=14.0, atomic_numbers=[14], correlation=2,
            gate=torch.nn.functional.silu, radial_MLP=[8])
        keyspec = mace_data.KeySpecification(info_keys={"energy": "REF_energy"},
                                             arrays_keys={"forces": "REF_forces"})
        graphs = [mace_data.AtomicData.from_config(
            mace_data.config_from_atoms(a, key_specification=keyspec), z_table=z_table,
            cutoff=r_max) for a in frames]
        loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=10, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(steps):
            for batch in loader:
                out = model(batch.to_dict(), training=True)
                n = (batch["ptr"][1:] - batch["ptr"][:-1]).to(out["energy"].dtype)
                loss = (((out["energy"] - batch["energy"]) / n) ** 2).mean() \
                    + 10 * ((out["forces"] - batch["forces"]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    torch.save(model, str(path))
    return str(path)


@pytest.fixture(scope="session")
def si_train_frames():
    return labelled_si(20, seed=0)


@pytest.fixture(scope="session")
def si_train_file(tmp_path_factory, si_train_frames):
    d = tmp_path_factory.mktemp("si_data")
    return write_extxyz(si_train_frames, d / "train.extxyz")


@pytest.fixture(scope="session")
def llpr_model(tmp_path_factory, si_train_frames):
    """A tiny MACE model with its LLPR covariance fitted by the console command (test_llpr*)."""
    pytest.importorskip("mace")
    from drivers.llpr_fit import main as fit_main

    d = tmp_path_factory.mktemp("llpr")
    model = build_mace(d / "m.model", si_train_frames, seed=3, steps=4)
    write_extxyz(si_train_frames, d / "train.extxyz")
    write_extxyz(labelled_si(8, seed=5), d / "heldout.extxyz")
    assert fit_main([model, str(d / "train.extxyz"), "--heldout", str(d / "heldout.extxyz")]) == 0
    return model


@pytest.fixture(scope="session")
def mace_models(tmp_path_factory, si_train_frames):
    """Folder with mace_0..3.model (r_max 4, float64) + odd_rmax.model (r_max 3.5)."""
    pytest.importorskip("mace")
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("mace_models")
    for k in range(4):
        build_mace(d / f"mace_{k}.model", si_train_frames, seed=k)
    build_mace(d / "odd_rmax.model", si_train_frames, seed=9, r_max=3.5, steps=0)
    return d


# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# NequIP 0.6.x: model built from a config, a few optimiser steps, deployed as
# TorchScript with the same metadata `nequip-deploy build` writes
def build_nequip(path, frames, seed=0, r_max=4.0, steps=5):
    import torch
    import yaml
    from nequip.data import AtomicData
    from nequip.data.transforms import TypeMapper
    from nequip.model import model_from_config
    from nequip.scripts import deploy
    from nequip.scripts.train import default_config
    from nequip.utils import Config
    from nequip.utils.torch_geometric import Batch
    from nequip.utils.versions import get_current_code_versions
    e_per_atom = float(np.mean([a.info["REF_energy"] / len(a) for a in frames]))
    cfg = Config.from_dict(dict(default_config))
    cfg.update(dict(
        r_max=r_max, num_layers=1, l_max=1, parity=True, num_features=4, num_basis=4,
        invariant_layers=1, invariant_neurons=8, avg_num_neighbors=14.0, chemical_symbols=["Si"],
        type_names=["Si"], num_types=1, seed=seed, default_dtype="float64", model_dtype="float64",
        model_builders=["SimpleIrrepsConfig", "EnergyModel", "PerSpeciesRescale",
                        "StressForceOutput", "RescaleEnergyEtc"],
        per_species_rescale_shifts=[e_per_atom], per_species_rescale_scales=[1.0],
        global_rescale_scale=None, global_rescale_shift=None,
    ))
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        deploy._current_metadata = {}
        model = model_from_config(cfg, initialize=True, dataset=None, deploy=True)
        extra = deploy._current_metadata
        deploy._current_metadata = None
        tm = TypeMapper(chemical_symbol_to_type={"Si": 0})
        datas = []
        for a in frames:
            d = AtomicData.from_ase(a, r_max=r_max, key_mapping={"REF_energy": "total_energy", "REF_forces": "forces"})
            datas.append(tm(d))
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(steps):
            for i in range(0, len(datas), 10):
                b = AtomicData.to_AtomicDataDict(Batch.from_data_list(datas[i:i+10]))
                ref_e = b["total_energy"].reshape(-1).clone()
                ref_f = b["forces"].clone()
                inp = {k: v for k, v in b.items() if k not in ("total_energy", "forces")}
                out = model(inp)
                n = torch.bincount(b["batch"]).to(ref_e.dtype)
                loss = (((out["total_energy"].reshape(-1) - ref_e) / n) ** 2).mean() \
                    + 10 * ((out["forces"] - ref_f) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        sm = deploy._compile_for_deploy(model)
    finally:
        torch.set_default_dtype(old)
    md = {}
    versions, _ = get_current_code_versions(cfg)
    for code, v in versions.items():
        md[code + "_version"] = v
    md[deploy.R_MAX_KEY] = str(float(r_max))
    md[deploy.N_SPECIES_KEY] = "1"
    md[deploy.TYPE_NAMES_KEY] = "Si"
    md[deploy.JIT_BAILOUT_KEY] = str(cfg[deploy.JIT_BAILOUT_KEY])
    if deploy.JIT_FUSION_STRATEGY in cfg:
        md[deploy.JIT_FUSION_STRATEGY] = ";".join(f"{e[0]},{int(e[1])}" for e in cfg[deploy.JIT_FUSION_STRATEGY])
    md[deploy.TF32_KEY] = "0"
    md[deploy.DEFAULT_DTYPE_KEY] = "float64"
    md[deploy.MODEL_DTYPE_KEY] = "float64"
    md[deploy.CONFIG_KEY] = yaml.dump(Config.as_dict(cfg))
    md.update(extra or {})
    torch.jit.save(sm, str(path), _extra_files={k: v.encode("ascii") for k, v in md.items()})
    return str(path)


@pytest.fixture(scope="session")
def nequip_models(tmp_path_factory, si_train_frames):
    """Folder with nequip_0..2.pth (r_max 4, float64, stress output) + odd_rmax.pth (r_max 3.5)."""
    pytest.importorskip("nequip")
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("nequip_models")
    for k in range(3):
        build_nequip(d / f"nequip_{k}.pth", si_train_frames, seed=k)
    build_nequip(d / "odd_rmax.pth", si_train_frames, seed=9, r_max=3.5, steps=0)
    return d


# ----------------------------------------------------------------------------
# SchNetPack 2.x: a tiny PaiNN NeuralNetworkPotential, a few optimiser steps
def build_schnetpack(path, frames, seed=0, cutoff=4.0, steps=5, n_atom_basis=8):
    import schnetpack as spk
    import schnetpack.transform as trn
    import torch
    from schnetpack.interfaces import AtomsConverter

    torch.manual_seed(seed)
    e_per_atom = float(np.mean([a.info["REF_energy"] / len(a) for a in frames]))
    rep = spk.representation.PaiNN(
        n_atom_basis=n_atom_basis, n_interactions=2,
        radial_basis=spk.nn.GaussianRBF(n_rbf=8, cutoff=cutoff),
        cutoff_fn=spk.nn.CosineCutoff(cutoff))
    model = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=n_atom_basis, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
        postprocessors=[trn.CastTo64(), trn.AddOffsets("energy", add_mean=True,
                        property_mean=torch.tensor(e_per_atom, dtype=torch.float64))],
    ).double()
    conv = AtomsConverter(neighbor_list=trn.MatScipyNeighborList(cutoff=cutoff), dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        for i in range(0, len(frames), 10):
            chunk = frames[i:i + 10]
            inp = conv([a.copy() for a in chunk])
            ref_e = torch.tensor([a.info["REF_energy"] - e_per_atom * len(a) for a in chunk])
            ref_f = torch.tensor(np.concatenate([a.arrays["REF_forces"] for a in chunk]))
            out = model(inp)  # in training mode, postprocessors are skipped
            n = inp["_n_atoms"].to(ref_e.dtype)
            loss = (((out["energy"] - ref_e) / n) ** 2).mean() + 10 * ((out["forces"] - ref_f) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    torch.save(model, str(path))
    return str(path)


@pytest.fixture(scope="session")
def schnetpack_models(tmp_path_factory, si_train_frames):
    """Folder with spk_0..2.pt (PaiNN, cutoff 4 Å, float64) + odd_cutoff.pt (3.5 Å)."""
    pytest.importorskip("schnetpack")
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("schnetpack_models")
    for k in range(3):
        build_schnetpack(d / f"spk_{k}.pt", si_train_frames, seed=k)
    build_schnetpack(d / "odd_cutoff.pt", si_train_frames, seed=9, cutoff=3.5, steps=0)
    return d


# ----------------------------------------------------------------------------
# checks shared by the backend tests
def rattled_si(seed=3, repeat=(1, 1, 1)):
    """Rattled cubic diamond Si (8 atoms per repeat), the backends' test structure."""
    from ase.build import bulk

    a = bulk("Si", "diamond", 5.43, cubic=True) * repeat
    a.rattle(0.05, seed=seed)
    return a


def fd_force_error(member, atoms, indices=(0, 1), h=1e-4):
    """max |F_model - (-dE/dx)| (central differences of the member's own energy)."""
    a = atoms.copy()
    f = member.predict(a, ("energy", "forces"))["forces"]
    err = 0.0
    for i in indices:
        for j in range(3):
            b = a.copy()
            b.positions[i, j] += h
            ep = member.predict(b, ("energy",))["energy"]
            b.positions[i, j] -= 2 * h
            em = member.predict(b, ("energy",))["energy"]
            err = max(err, abs(-(ep - em) / (2 * h) - f[i, j]))
    return err


def relax_and_md(committee, atoms, relax_steps=5, md_steps=20):
    """BFGS + FrechetCellFilter, then NVE MD; returns (E0, E_relaxed, energies_md)."""
    from ase import units
    from ase.filters import FrechetCellFilter
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    a = atoms.copy()
    a.calc = committee
    e0 = a.get_potential_energy()
    opt = BFGS(FrechetCellFilter(a), logfile=None, maxstep=0.05)
    opt.run(fmax=1e-3, steps=relax_steps)
    e1 = a.get_potential_energy()
    MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.default_rng(0))
    md = VelocityVerlet(a, timestep=1.0 * units.fs)
    energies = []
    md.attach(lambda: energies.append(a.get_potential_energy() + a.get_kinetic_energy()))
    md.run(md_steps)
    return e0, e1, np.array(energies), a
