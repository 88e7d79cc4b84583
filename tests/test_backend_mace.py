"""MACE members: oracle vs MACE's own committee mode, shared graph, batch, drivers, bad input."""
import os

import numpy as np
import pytest

pytest.importorskip("mace")
pytestmark = pytest.mark.backend

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from committee_calc.committee import CommitteeCalculator  # noqa: E402
from committee_calc.config import build_committee  # noqa: E402
from committee_calc.errors import ConfigError, CutoffMismatchError, ModelFileError, UnknownSpeciesError  # noqa: E402
from committee_calc.members.mace import MACEMember  # noqa: E402
from tiny_models import fd_force_error, rattled_si, relax_and_md  # noqa: E402

torch.set_num_threads(1)


_si = rattled_si


def _paths(d, n=4):
    return [str(d / f"mace_{k}.model") for k in range(n)]


def test_oracle_matches_mace_committee_mode(mace_models):
    from mace.calculators import MACECalculator

    paths = _paths(mace_models)
    ours = build_committee({"members": [{"backend": "mace", "path": "mace_[0-3].model"}]},
                           base_dir=mace_models)
    assert ours.n_members == 4 and len(ours._groups) == 1  # one shared graph
    ref = MACECalculator(model_paths=paths, device="cpu", default_dtype="float64")
    a, b = _si(), _si()
    a.calc, b.calc = ours, ref
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-6)
    np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-6)
    np.testing.assert_allclose(ours.results["energies"], ref.results["energies"], atol=1e-6)
    m = 4
    # MACE's energy_var is the population variance (ddof=0)
    assert ours.results["energy_std"] ** 2 == pytest.approx(
        ref.results["energy_var"] * m / (m - 1), rel=1e-9)
    np.testing.assert_allclose(ours.results["forces_std"] ** 2,
                               ref.results["forces_var"] * m / (m - 1), rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(ours.results["energy_members"], ref.results["energy_comm"], atol=1e-6)
    assert ours.results["energy_std"] > 0


def test_group_builds_graph_once_and_equals_single(mace_models, monkeypatch):
    members = [MACEMember.from_file(p) for p in _paths(mace_models, 3)]
    assert len({m.group_key() for m in members}) == 1
    a = _si(5)
    single = [m.predict(a, ("energy", "forces", "stress")) for m in members]
    calls = []
    orig = MACEMember.build_batch
    monkeypatch.setattr(MACEMember, "build_batch",
                        lambda self, s: calls.append(len(s)) or orig(self, s))
    group = MACEMember.predict_group(members, a, ("energy", "forces", "stress"))
    assert calls == [1]  # one graph for three models
    for s, g in zip(single, group):
        assert g["energy"] == pytest.approx(s["energy"], abs=1e-10)
        np.testing.assert_allclose(g["forces"], s["forces"], atol=1e-10)
        np.testing.assert_allclose(g["stress"], s["stress"], atol=1e-10)


def test_predict_batch_and_committee_predict(mace_models):
    members = [MACEMember.from_file(p) for p in _paths(mace_models, 2)]
    structs = [_si(1), _si(2, (1, 1, 2)), _si(3)]
    structs[2].pbc = False  # non-periodic: no stress, still energy/forces
    batched = MACEMember.predict_batch(members, structs, ("energy", "forces", "stress"))
    for s, row in zip(structs, batched):
        for m, p in zip(members, row):
            one = m.predict(s, ("energy", "forces", "stress"))
            assert p["energy"] == pytest.approx(one["energy"], abs=1e-9)
            np.testing.assert_allclose(p["forces"], one["forces"], atol=1e-9)
            assert ("stress" in p) == bool(s.pbc.all())
    comm = CommitteeCalculator(members)
    calls = []
    orig = MACEMember.predict_batch.__func__
    MACEMember.predict_batch = classmethod(lambda c, m, s, p: calls.append(len(s)) or orig(c, m, s, p))
    try:
        res = comm.predict(structs, batch_size=3)
    finally:
        MACEMember.predict_batch = classmethod(orig)
    assert calls == [3]  # one batched call for three structures
    assert len(res) == 3 and res[1]["forces"].shape == (16, 3)
    assert "stress" in res[0] and "stress" not in res[2]
    for s, r in zip(structs, res):  # same as the one-structure calculator path
        b = s.copy()
        b.calc = comm
        assert r["energy"] == pytest.approx(b.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(r["forces_std"], comm.results["forces_std"], atol=1e-9)


def test_relax_md_and_finite_differences(mace_models):
    members = [MACEMember.from_file(p) for p in _paths(mace_models, 2)]
    comm = CommitteeCalculator(members)
    a = _si(7)
    e0, e1, e_md, final = relax_and_md(comm, a, relax_steps=4, md_steps=20)
    assert e1 <= e0 + 1e-8
    assert len(e_md) == 21 and np.all(np.isfinite(e_md))
    assert np.ptp(e_md) < 0.05 * len(a)  # NVE roughly conserved
    assert fd_force_error(members[0], a) < 1e-5


def test_bad_inputs(mace_models, tmp_path):
    with pytest.raises(ModelFileError, match="no model file matches"):
        build_committee({"members": [{"backend": "mace", "path": "nope_*.model"}] * 2},
                        base_dir=tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        MACEMember.from_file(tmp_path / "missing.model")
    bad = tmp_path / "corrupt.model"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ModelFileError, match="corrupt"):
        MACEMember.from_file(bad)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        MACEMember.from_file(empty)
    with pytest.raises(ConfigError, match="unknown member backend"):
        build_committee({"members": [{"backend": "macee", "path": "x"}]})
    with pytest.raises(ConfigError, match="unknown keys"):
        MACEMember.from_spec({"backend": "mace", "path": str(bad), "cutof": 3})
    good = MACEMember.from_file(mace_models / "mace_0.model")
    odd = MACEMember.from_file(mace_models / "odd_rmax.model")
    assert good.group_key() != odd.group_key()
    with pytest.raises(CutoffMismatchError, match="different cutoffs"):
        MACEMember.predict_group([good, odd], _si(), ("energy", "forces"))
    # the committee keeps them in separate groups and still works
    comm = CommitteeCalculator([good, odd])
    assert len(comm._groups) == 2
    a = _si()
    a.calc = comm
    assert np.isfinite(a.get_potential_energy())
    b = bulk("Ge", "diamond", 5.6, cubic=True)
    b.calc = comm
    with pytest.raises(UnknownSpeciesError, match="Ge"):
        b.get_potential_energy()
    assert os.path.exists(mace_models / "mace_0.model")


def test_skin_reuses_graph_across_md_steps(mace_models):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    paths = _paths(mace_models, 2)
    plain = CommitteeCalculator([MACEMember.from_file(p) for p in paths])
    skinned = CommitteeCalculator([MACEMember.from_file(p, skin=0.5) for p in paths])
    assert skinned.members[0].group_key() != plain.members[0].group_key()
    a = _si(11)
    a.set_momenta(np.random.default_rng(0).normal(0, 0.3, (len(a), 3)))
    b = a.copy()
    a.calc, b.calc = plain, skinned
    for atoms in (a, b):
        VelocityVerlet(atoms, timestep=1.0 * units.fs).run(10)
    lead = skinned.members[0]
    assert lead.graph_reuses > 0 and lead.graph_builds < 11
    assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-9)
    np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-9)
    with pytest.raises(ConfigError, match="skin"):
        MACEMember.from_file(paths[0], skin=-1)
