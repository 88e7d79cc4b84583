"""CHGNet members: equal to chgnet's own ASE calculator, a YAML committee of two pretrained
versions, shared graphs, batched prediction, bad input.  The pretrained weights ship inside the
chgnet wheel: nothing is downloaded."""
import warnings

import numpy as np
import pytest

pytest.importorskip("chgnet")
pytestmark = pytest.mark.backend

import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402

from committee_calc import keys as K  # noqa: E402
from committee_calc.config import build_committee, load_committee  # noqa: E402
from committee_calc.errors import CommitteeError, ConfigError, ModelFileError, UnknownSpeciesError  # noqa: E402
from committee_calc.members import BACKENDS, build_members  # noqa: E402
from committee_calc.members.chgnet import VERSIONS, CHGNetMember  # noqa: E402

ALL = ("energy", "forces", "stress", "energies")
#: chgnet's own calculator (the reference here) lets torch warn about its volume tensor
REFERENCE_WARNS = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def m030():
    return CHGNetMember.pretrained("0.3.0")


def si64(seed=7):
    """Rattled Si64: diamond conventional cell 2x2x2, rattle 0.05 Å."""
    a = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    a.rattle(0.05, seed=seed)
    return a


def si8_triclinic(seed=11):
    """Si8 under a general (non-orthogonal, non-symmetric) strain, rattled."""
    a = bulk("Si", "diamond", 5.43, cubic=True)
    strain = np.array([[1.00, 0.05, 0.02], [0.03, 0.98, 0.04], [-0.02, 0.06, 1.03]])
    a.set_cell(a.cell[:] @ strain, scale_atoms=True)
    a.rattle(0.03, seed=seed)
    return a


def nacl(seed=5):
    a = bulk("NaCl", "rocksalt", 5.64) * (1, 1, 2)
    a.rattle(0.04, seed=seed)
    return a


def chgnet_calc(version):
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(CHGNet.load(model_name=version, use_device="cpu", verbose=False), use_device="cpu")


def write_yaml(path, *entries):
    lines = ["members:"] + [f"  - {e}" for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ equal to CHGNetCalculator
@REFERENCE_WARNS
@pytest.mark.parametrize("make", [si64, si8_triclinic], ids=["Si64", "Si8-triclinic"])
def test_member_equals_chgnet_calculator(m030, make):
    a = make()
    p = m030.predict(a, ALL)
    b = a.copy()
    b.calc = chgnet_calc("0.3.0")
    assert p["energy"] == pytest.approx(float(b.get_potential_energy()), abs=1e-6)
    np.testing.assert_allclose(p["forces"], b.get_forces(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(p["stress"], b.get_stress(), rtol=0, atol=1e-6)
    assert p["forces"].shape == (len(a), 3) and p["stress"].shape == (6,)
    assert p["forces"].dtype == np.float64 and np.abs(p["forces"]).max() > 0.1
    # the per-atom energies add up to the energy (float32 round-off)
    assert p["energies"].shape == (len(a),)
    assert p["energies"].sum() == pytest.approx(p["energy"], abs=1e-3)
    # asking for energy and forces only changes nothing
    q = m030.predict(a, ("energy", "forces"))
    assert "stress" not in q and q["energy"] == p["energy"]
    np.testing.assert_array_equal(q["forces"], p["forces"])


def test_triclinic_cell_is_triclinic():
    cell = si8_triclinic().cell
    assert not np.allclose(cell.angles(), 90.0, atol=1.0)


def test_domain_dtype_and_describe(m030):
    assert m030.cutoff == 6.0 and m030.dtype == "float32"
    assert m030.model.atom_embedding.embedding.num_embeddings == 94
    assert len(m030.species) == 94 and "Pu" in m030.species and "Cm" not in m030.species
    d = m030.describe()
    assert d["backend"] == "chgnet" and d["version"] == "0.3.0" and d["cutoff"] == 6.0
    assert set(VERSIONS) == {"0.3.0", "0.2.0", "r2scan"}
    assert BACKENDS["chgnet"] == "committee_calc.members.chgnet:CHGNetMember"


def test_quiet_and_global_state(capsys):
    """No print, no warning (torch's, pymatgen's), torch's default dtype and threads kept."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            m = CHGNetMember.pretrained("0.3.0")
            m.predict(si8_triclinic(), ALL)
            m.predict(Atoms("ArSi", positions=[[0, 0, 0], [2.4, 0, 0]], cell=[5, 5, 5], pbc=True), ALL)
        assert torch.get_default_dtype() == torch.float64 and torch.get_num_threads() == 1
    finally:
        torch.set_default_dtype(old)
    assert [str(w.message) for w in seen] == []
    out = capsys.readouterr()
    assert out.out == "" and "CHGNet" not in out.err


# ------------------------------------------------------------------ committee from YAML
@REFERENCE_WARNS
def test_yaml_committee_of_two_versions(tmp_path):
    spec = write_yaml(tmp_path / "committee.yaml", '{backend: chgnet, version: "0.3.0"}',
                      '{backend: chgnet, version: "0.2.0"}')
    comm = load_committee(spec)
    assert comm.n_members == 2 and [m.version for m in comm.members] == ["0.3.0", "0.2.0"]
    # 0.2.0 has a 5 Å graph cutoff, 0.3.0 a 6 Å one: two groups, one graph each
    assert [m.cutoff for m in comm.members] == [6.0, 5.0] and len(comm._groups) == 2
    a = si64()
    a.calc = comm
    e = a.get_potential_energy()
    r = comm.results
    n = len(a)
    assert r[K.ENERGY_MEMBERS].shape == (2,) and r[K.FORCES_MEMBERS].shape == (2, n, 3)
    assert r[K.STRESS_MEMBERS].shape == (2, 6) and r[K.ENERGIES_MEMBERS].shape == (2, n)
    assert r[K.FORCES_STD].shape == (n, 3) and r[K.STRESS_STD].shape == (6,)
    assert r[K.FORCES_STD_ATOM].shape == (n,)
    singles = [m.predict(a, ALL) for m in comm.members]
    np.testing.assert_allclose(r[K.ENERGY_MEMBERS], [s["energy"] for s in singles], rtol=0, atol=1e-9)
    np.testing.assert_allclose(r[K.FORCES_MEMBERS], [s["forces"] for s in singles], rtol=0, atol=1e-9)
    assert e == pytest.approx(np.mean(r[K.ENERGY_MEMBERS]), abs=1e-9)
    # the committee's spread is the sample std (ddof=1) over the two members
    assert r[K.ENERGY_STD] == pytest.approx(np.std(r[K.ENERGY_MEMBERS], ddof=1), abs=1e-9)
    assert r[K.ENERGY_STD] == pytest.approx(abs(np.diff(r[K.ENERGY_MEMBERS])[0]) / np.sqrt(2), abs=1e-9)
    np.testing.assert_allclose(r[K.FORCES_STD], np.std(r[K.FORCES_MEMBERS], axis=0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(r[K.STRESS_STD], np.std(r[K.STRESS_MEMBERS], axis=0, ddof=1), atol=1e-12)
    assert r[K.ENERGY_STD] > 1e-3 and r[K.FORCES_STD_MAX] > 1e-3  # two different models disagree
    # the members equal chgnet's own calculators of the same versions
    for m, version in zip(comm.members, ("0.3.0", "0.2.0")):
        b = a.copy()
        b.calc = chgnet_calc(version)
        assert m.predict(a, ("energy",))["energy"] == pytest.approx(float(b.get_potential_energy()), abs=1e-6)


def test_checkpoint_member_shares_the_graph(tmp_path, m030, monkeypatch):
    """A checkpoint as chgnet's Trainer.save writes it ({"model": as_dict(), ...}) loads by 'path:';
    with the same cutoffs it shares one graph per structure with the pretrained member."""
    torch.save({"model": m030.model.as_dict(), "trainer_args": {}}, tmp_path / "bestE_epoch1.pth.tar")
    spec = write_yaml(tmp_path / "c.yaml", '{backend: chgnet, version: "0.3.0"}',
                      "{backend: chgnet, path: bestE_*.pth.tar, name: tuned}")
    comm = load_committee(spec)
    assert len(comm._groups) == 1 and comm.members[1].name == "tuned"
    calls = []
    orig = CHGNetMember.graph
    monkeypatch.setattr(CHGNetMember, "graph", lambda self, a: calls.append(len(a)) or orig(self, a))
    a = si8_triclinic()
    a.calc = comm
    a.get_forces()
    assert calls == [8]
    assert comm.results[K.ENERGY_STD] == pytest.approx(0.0, abs=1e-9)  # same weights
    assert comm.members[1].predict(a, ("energy",))["energy"] == m030.predict(a, ("energy",))["energy"]


# ------------------------------------------------------------------ batched prediction
def test_batched_prediction_equals_one_by_one(m030):
    structures = [si64(), si8_triclinic(), nacl()]
    m = CHGNetMember.pretrained("0.3.0", batch_size=16)
    seen = []
    orig = m.model.predict_graph
    m.model.predict_graph = lambda graphs, **kw: seen.append((len(graphs), kw["batch_size"])) or orig(graphs, **kw)
    rows = CHGNetMember.predict_batch([m], structures, ALL)
    assert seen == [(3, 16)]  # one call, CHGNet batches the three graphs
    for a, row in zip(structures, rows):
        one = m030.predict(a, ALL)
        assert row[0]["energy"] == pytest.approx(one["energy"], abs=1e-6)
        np.testing.assert_allclose(row[0]["forces"], one["forces"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(row[0]["stress"], one["stress"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(row[0]["energies"], one["energies"], rtol=0, atol=1e-5)
    # the committee's many-structure path gives the same as its one-structure path
    comm = build_committee({"members": [{"backend": "chgnet", "version": "0.3.0"},
                                        {"backend": "chgnet", "version": "0.2.0", "batch_size": 2}]})
    batched = comm.predict(structures)
    for a, res in zip(structures, batched):
        b = a.copy()
        b.calc = comm
        b.get_potential_energy()
        assert res[K.ENERGY] == pytest.approx(comm.results[K.ENERGY], abs=1e-6)
        np.testing.assert_allclose(res[K.FORCES_STD], comm.results[K.FORCES_STD], atol=1e-5)
        np.testing.assert_allclose(res[K.STRESS], comm.results[K.STRESS], atol=1e-6)


def test_molecule_without_cell_and_isolated_atoms(m030):
    water = molecule("H2O")  # no cell, not periodic
    p = m030.predict(water, ALL)
    assert "stress" not in p and np.isfinite(p["energy"])
    boxed = water.copy()
    boxed.center(vacuum=8.0)
    q = m030.predict(boxed, ALL)
    assert p["energy"] == pytest.approx(q["energy"], abs=1e-4)
    np.testing.assert_allclose(p["forces"], q["forces"], atol=1e-4)
    lonely = molecule("H2O")
    lonely += Atoms("Ar", positions=[[10.0, 0.0, 0.0]])
    m = CHGNetMember.pretrained("0.3.0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        m.predict(lonely, ("energy", "forces"))
        m.predict(lonely, ("energy", "forces"))
    msgs = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "indices [3]" in msgs[0] and "on_isolated_atoms" in msgs[0]
    strict = CHGNetMember.pretrained("0.3.0", on_isolated_atoms="error")
    with pytest.raises(CommitteeError, match="no neighbour within CHGNet's 6 Å graph cutoff"):
        strict.predict(lonely, ("energy",))


# ------------------------------------------------------------------ bad input
def test_bad_version_species_and_options(m030):
    with pytest.raises(ConfigError, match=r"unknown CHGNet version '9\.9\.9'.*'0\.3\.0', '0\.2\.0', 'r2scan'"):
        build_committee({"members": [{"backend": "chgnet", "version": "9.9.9"},
                                     {"backend": "chgnet"}]})
    with pytest.raises(ConfigError, match="unknown CHGNet version '0.3'"):
        build_members({"backend": "chgnet", "version": 0.3})
    cm = bulk("Si", "diamond", 5.43, cubic=True)
    cm.numbers[0] = 96  # curium: beyond CHGNet's 94-element embedding
    with pytest.raises(UnknownSpeciesError, match=r"no parameters for element\(s\) \['Cm'\]"):
        m030.predict(cm, ("energy", "forces"))
    comm = build_committee({"members": [{"backend": "chgnet"}, {"backend": "chgnet", "version": "r2scan"}]})
    cm.calc = comm
    with pytest.raises(UnknownSpeciesError, match="Cm"):
        cm.get_potential_energy()
    pu = Atoms("Pu2", positions=[[0, 0, 0], [1.6, 1.6, 1.6]], cell=[3.2, 3.2, 3.2], pbc=True)
    assert np.isfinite(m030.predict(pu, ("energy",))["energy"])  # Z = 94 is inside
    for spec, match in (({"dtype": "float64"}, "float32 only"),
                        ({"on_isolated_atoms": "shout"}, "on_isolated_atoms must be one of"),
                        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
                        ({"cutoff": 5.0}, r"unknown keys \['cutoff'\] for a chgnet member"),
                        ({"path": "x.pth.tar"}, "'version:' .* or 'path:' .*not both")):
        with pytest.raises(ConfigError, match=match):
            CHGNetMember.from_spec({"backend": "chgnet", "version": "0.3.0", **spec})


def test_corrupt_missing_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"\x00\x01garbage not a torch file" * 10)
    with pytest.raises(ModelFileError, match="cannot load CHGNet checkpoint .*bad.pth.tar.* corrupt, truncated"):
        CHGNetMember.from_file(bad)
    spec = write_yaml(tmp_path / "c.yaml", "{backend: chgnet}", "{backend: chgnet, path: bad.pth.tar}")
    with pytest.raises(ModelFileError, match="written by chgnet's Trainer"):
        load_committee(spec)
    with pytest.raises(ModelFileError, match="does not exist"):
        CHGNetMember.from_file(tmp_path / "missing.pth.tar")
    with pytest.raises(ModelFileError, match="does not exist"):
        build_members({"backend": "chgnet", "path": "missing.pth.tar"}, tmp_path)
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        CHGNetMember.from_file(tmp_path / "empty.pth.tar")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "foreign.pth.tar")
    with pytest.raises(ModelFileError, match="not a CHGNet checkpoint"):
        CHGNetMember.from_file(tmp_path / "foreign.pth.tar")
