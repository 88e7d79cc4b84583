"""Fine-tuned CHGNet committees: chgnet's own Trainer behind train_committee(backend="chgnet").

Reference labels: CHGNet 0.2.0 (energy, forces, stress) on strained, rattled Si8 cells — a cheap
real "reference" that differs from the 0.3.0 starting weights by a few meV/atom and ~0.2 eV/Å.
The unit conversion (eV/atom, eV/Å, kBar with VASP's sign) is checked by labelling with CHGNet 0.3.0
itself: chgnet's own loss is then zero, and a zero-learning-rate run leaves the model unchanged.
Nothing is downloaded: the pretrained weights ship in the chgnet wheel.
"""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chgnet")
pytestmark = pytest.mark.backend

import yaml  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.io import read, write  # noqa: E402

from committee_calc import keys as K  # noqa: E402
from committee_calc.config import load_committee  # noqa: E402
from committee_calc.errors import ConfigError, ModelFileError, TrainingError, UnknownSpeciesError  # noqa: E402
from committee_calc.members.chgnet import CHGNetMember  # noqa: E402
from committee_calc.train import TRAINERS, fine_tune_committee, train_committee  # noqa: E402
from committee_calc.train.chgnet import chgnet_labels, resolved_options, structure_data  # noqa: E402
from committee_calc.units import GPA  # noqa: E402

EFS = ("energy", "forces", "stress")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def si_cells(n, seed, strain=0.04, rattle=0.05):
    """Si8 diamond cells, isotropically and generally strained, rattled."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Si", "diamond", 5.43 * (1 + rng.uniform(-strain, strain)), cubic=True)
        a.set_cell(a.cell[:] @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
        a.rattle(rattle, seed=seed * 100 + i)
        out.append(a)
    return out


def label(frames, member):
    """REF_energy [eV], REF_forces [eV/Å], REF_stress [eV/Å³, Voigt, ASE sign] from ``member``."""
    for a in frames:
        p = member.predict(a, EFS)
        a.info["REF_energy"], a.arrays["REF_forces"], a.info["REF_stress"] = p["energy"], p["forces"], p["stress"]
    return frames


@pytest.fixture(scope="module")
def m030():
    return CHGNetMember.pretrained("0.3.0")


@pytest.fixture(scope="module")
def m020():
    return CHGNetMember.pretrained("0.2.0")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, m020):
    path = tmp_path_factory.mktemp("chgnet_data") / "train.extxyz"
    write(str(path), label(si_cells(8, seed=1), m020), format="extxyz")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_file):
    """Two members, one epoch each, own seeds and bootstrap subsets (~10 s on one core)."""
    out = tmp_path_factory.mktemp("chgnet_committee")
    return train_committee(train_file, out, backend="chgnet", n_members=2, seeds=[11, 12], bootstrap=True,
                           max_epochs=1, model_options={"batch_size": 4})


# ------------------------------------------------------------------ units
def test_label_conversion_by_hand():
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.info["E"] = -43.2
    a.arrays["F"] = np.arange(24.0).reshape(8, 3)
    a.info["S"] = np.array([-1.0, -2.0, -3.0, 0.5, 0.0, 0.25]) * GPA   # ASE sign: compressed
    lab = chgnet_labels(a, "E", "F", "S")
    assert lab["energy"] == pytest.approx(-43.2 / 8)                   # eV/atom
    np.testing.assert_array_equal(lab["forces"], a.arrays["F"])        # eV/Å
    # kBar with VASP's sign (pressure positive): chgnet's StructureData multiplies by -0.1 to GPa
    np.testing.assert_allclose(lab["stress"], [[10, -2.5, 0], [-2.5, 20, -5], [0, -5, 30]], atol=1e-12)
    assert chgnet_labels(a, "E", "F", "S", intensive=False)["energy"] == -43.2
    assert np.isnan(chgnet_labels(a, "E", None, None)["stress"]).all()
    slab = a.copy()
    slab.pbc = (True, True, False)
    assert np.isnan(chgnet_labels(slab, "E", "F", "S")["stress"]).all()  # no stress off 3-D periodic


def test_chgnet_loss_is_zero_on_its_own_labels(m030):
    """Labels made by CHGNet 0.3.0 (stresses up to ~20 GPa) give chgnet's CombinedLoss ~0 for the
    same model through structure_data; the opposite stress sign would not."""
    from chgnet.data.dataset import collate_graphs
    from chgnet.trainer.trainer import CombinedLoss

    frames = label(si_cells(6, seed=2, strain=0.06), m030)
    assert max(np.abs(a.info["REF_stress"][:3]).max() for a in frames) / GPA > 5.0
    for sign, small in ((1, True), (-1, False)):
        for a in frames:
            a.info["S"] = sign * a.info["REF_stress"]
        data = structure_data(frames, m030.model, "REF_energy", "REF_forces", "S")
        graphs, targets = collate_graphs([data[i] for i in range(len(data))])
        for g in graphs:
            g.atom_frac_coord.requires_grad = True
        out = CombinedLoss(target_str="efs")(targets, m030.model(graphs, task="efs"))
        assert float(out["e_MAE"]) < 1e-6 and float(out["f_MAE"]) < 1e-5  # eV/atom, eV/Å
        assert (float(out["s_MAE"]) < 1e-4) is small                      # GPa


def test_zero_learning_rate_run_leaves_the_model_unchanged(tmp_path, m030):
    """chgnet's Trainer, one epoch at lr 0 on CHGNet 0.3.0's own labels: validation MAEs ~0 in its
    history, and the checkpoint written predicts what the pretrained model does."""
    frames = label(si_cells(6, seed=3), m030)
    write(str(tmp_path / "own.extxyz"), frames, format="extxyz")
    path = train_committee(tmp_path / "own.extxyz", tmp_path / "c", backend="chgnet", n_members=1,
                           max_epochs=1, model_options={"learning_rate": 0.0})
    hist = json.loads((tmp_path / "c" / "member_0" / "summary.json").read_text())["history"]
    assert hist["e"]["val"][0] < 1e-5 and hist["f"]["val"][0] < 1e-5 and hist["s"]["val"][0] < 1e-4
    entry = yaml.safe_load(open(path))["members"][0]
    assert entry == {"backend": "chgnet", "path": "chgnet_0.pth.tar"}
    member = CHGNetMember.from_spec(entry | {"path": str(tmp_path / "c" / entry["path"])})
    for a in frames[:2]:
        p, q = member.predict(a, EFS), m030.predict(a, EFS)
        assert p["energy"] == q["energy"]
        np.testing.assert_array_equal(p["forces"], q["forces"])
        np.testing.assert_array_equal(p["stress"], q["stress"])


def test_structure_data_masks_missing_stress(m030):
    frames = label(si_cells(2, seed=4), m030)
    slab = frames[1]
    slab.pbc = (True, True, False)
    del frames[0].info["REF_stress"]
    data = structure_data(frames + [label(si_cells(1, seed=5), m030)[0]], m030.model, "REF_energy",
                          "REF_forces", "REF_stress")
    stresses = [data[i][1]["s"] for i in range(3)]
    assert np.isnan(stresses[0].numpy()).all() and np.isnan(stresses[1].numpy()).all()
    assert np.isfinite(stresses[2].numpy()).all()


# ------------------------------------------------------------------ the committee
def test_committee_trains_reloads_predicts_and_members_differ(trained, train_file, m030):
    assert TRAINERS["chgnet"] == "committee_calc.train.chgnet"
    spec = yaml.safe_load(open(trained))
    assert spec["members"] == [{"backend": "chgnet", "path": "chgnet_0.pth.tar"},
                               {"backend": "chgnet", "path": "chgnet_1.pth.tar"}]
    tr = spec["training"]
    assert tr["backend"] == "chgnet" and tr["max_epochs"] == 1 and tr["bootstrap"] is True
    assert tr["stress_key"] == "REF_stress" and tr["model_options"] == {"batch_size": 4}
    recs = tr["members"]
    assert [r["seed"] for r in recs] == [11, 12] and recs[0]["bootstrap_indices"] != recs[1]["bootstrap_indices"]
    folder = Path(trained).parent
    for k in range(2):
        job = json.loads((folder / f"member_{k}" / "chgnet_job.json").read_text())
        assert job["options"] == resolved_options({"batch_size": 4}) and job["options"]["version"] == "0.3.0"
        assert job["seed"] == 11 + k and job["epochs"] == 1 and job["init_model"] is None
        summary = json.loads((folder / f"member_{k}" / "summary.json").read_text())
        assert summary["targets"] == "efs" and summary["n_train"] + summary["n_val"] == 8
        assert summary["checkpoint"].startswith("bestE_epoch0")
    comm = load_committee(trained)
    assert [m.backend for m in comm.members] == ["chgnet", "chgnet"] and len(comm._groups) == 1
    held_out = si_cells(2, seed=9)
    a = held_out[0]
    a.calc = comm
    a.get_stress()
    r = comm.results
    assert r[K.ENERGY_MEMBERS].shape == (2,) and r[K.FORCES_MEMBERS].shape == (2, 8, 3)
    assert r[K.STRESS_MEMBERS].shape == (2, 6) and r[K.N_NONFINITE] == 0
    assert r[K.ENERGY_STD] > 1e-4 and r[K.FORCES_STD_MAX] > 1e-4 and np.max(r[K.STRESS_STD]) > 1e-6
    for m in comm.members:  # each member moved away from the pretrained weights
        assert abs(m.predict(a, ("energy",))["energy"] - m030.predict(a, ("energy",))["energy"]) > 1e-4
    batched = comm.predict(held_out)
    assert batched[0][K.ENERGY] == pytest.approx(r[K.ENERGY], abs=1e-5)


def test_fine_tune_goes_on_from_the_members(trained, train_file, tmp_path):
    path = fine_tune_committee(trained, train_file, tmp_path / "ft", max_epochs=1)
    spec = yaml.safe_load(open(path))
    assert spec["training"]["finetuned_from"] == str(Path(trained).resolve())
    assert [r["seed"] for r in spec["training"]["members"]] == [12, 13]
    old = Path(trained).parent
    for k in range(2):
        job = json.loads((tmp_path / "ft" / f"member_{k}" / "chgnet_job.json").read_text())
        assert job["init_model"] == str((old / f"chgnet_{k}.pth.tar").resolve())
    a = read(train_file, index=0)
    before, after = load_committee(trained), load_committee(path)
    for m0, m1 in zip(before.members, after.members):
        e0, e1 = m0.predict(a, ("energy",))["energy"], m1.predict(a, ("energy",))["energy"]
        assert np.isfinite(e1) and abs(e1 - e0) > 1e-5


# ------------------------------------------------------------------ bad input
def test_bad_input(tmp_path, train_file, m030):
    with pytest.raises(ConfigError, match=r"unknown CHGNet version '0\.9\.9'.*0\.3\.0"):
        train_committee(train_file, tmp_path / "a", backend="chgnet", n_members=2, max_epochs=1,
                        model_options={"version": "0.9.9"})
    with pytest.raises(ConfigError, match="unknown chgnet model options.*'lr'"):
        train_committee(train_file, tmp_path / "b", backend="chgnet", n_members=2, max_epochs=1,
                        model_options={"lr": 1e-3})
    with pytest.raises(ConfigError, match="freeze"):
        resolved_options({"freeze": ["no_such_layer"]})
    with pytest.raises(ConfigError, match="valid_fraction"):
        resolved_options({"valid_fraction": 1.0})
    with pytest.raises(ConfigError, match="learning_rate"):
        resolved_options({"learning_rate": "fast"})
    with pytest.raises(ConfigError, match="checkpoint must be one of"):
        resolved_options({"checkpoint": "best"})
    assert resolved_options({"freeze": None, "version": "r2scan"})["freeze"] == []
    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(ModelFileError, match="corrupt"):
        train_committee(train_file, tmp_path / "c", backend="chgnet", n_members=1, max_epochs=1,
                        init_models=[corrupt])
    assert not (tmp_path / "c" / "member_0" / "train.log").exists()  # refused before training
    with pytest.raises(ModelFileError, match="does not exist"):
        train_committee(train_file, tmp_path / "d", backend="chgnet", n_members=1, max_epochs=1,
                        init_models=[tmp_path / "missing.pth.tar"])
    # elements outside CHGNet's embedding (Z 1-94), a structure chgnet cannot make a graph of
    frames = label(si_cells(2, seed=6), m030)
    frames[1].numbers[0] = 118
    with pytest.raises(UnknownSpeciesError, match=r"\[118\].*Z = 1-94"):
        structure_data(frames, m030.model, "REF_energy", "REF_forces", "REF_stress")
    lonely = Atoms("Si2", positions=[[0, 0, 0], [5, 5, 5]], cell=[10, 10, 10], pbc=True)
    lonely.info["REF_energy"], lonely.arrays["REF_forces"] = -2.0, np.zeros((2, 3))
    frames[1] = lonely  # its atoms have no neighbour within CHGNet's 6 Å
    with pytest.raises(TrainingError, match=r"structures \[1\].*neighbour"):
        structure_data(frames, m030.model, "REF_energy", "REF_forces", None)


def test_training_set_outside_the_domain_fails_with_the_reason(tmp_path, m030):
    """Through train_committee: the member's process stops before training and the TrainingError
    carries the reason from its log."""
    frames = label(si_cells(3, seed=8), m030)
    frames[2].numbers[:2] = 95  # Am: outside CHGNet's Z 1-94
    write(str(tmp_path / "am.extxyz"), frames, format="extxyz")
    with pytest.raises(TrainingError, match=r"(?s)UnknownSpeciesError.*\[95\].*Z = 1-94"):
        train_committee(tmp_path / "am.extxyz", tmp_path / "c", backend="chgnet", n_members=1, max_epochs=1)


# ------------------------------------------------------------------ full size (slow suite)
@pytest.mark.slow
def test_full_size_fine_tune_learns_the_reference(tmp_path, m020, m030):
    """Four members, 40 Si8 cells, 10 epochs (~3 min on one core): the committee moves from
    CHGNet 0.3.0 towards the 0.2.0 labels on held-out cells, and its spread is finite."""
    frames = label(si_cells(50, seed=7, strain=0.05, rattle=0.1), m020)
    write(str(tmp_path / "train.extxyz"), frames[:40], format="extxyz")
    test = frames[40:]
    path = train_committee(tmp_path / "train.extxyz", tmp_path / "c", backend="chgnet", n_members=4,
                           bootstrap=True, max_epochs=10, n_jobs=1)
    comm = load_committee(path)

    def errors(preds):
        e = np.mean([abs(p["energy"] - a.info["REF_energy"]) / len(a) for p, a in zip(preds, test)])
        f = np.mean([np.abs(p["forces"] - a.arrays["REF_forces"]).mean() for p, a in zip(preds, test)])
        return e, f

    e_bare, f_bare = errors([m030.predict(a, ("energy", "forces")) for a in test])
    preds = comm.predict(test)
    e_ft, f_ft = errors(preds)
    assert f_ft < 0.7 * f_bare and e_ft < e_bare
    assert all(p[K.FORCES_STD_MAX] > 0 and np.isfinite(p[K.ENERGY_STD]) for p in preds)
