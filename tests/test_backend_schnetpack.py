"""SchNetPack members: equal to SpkCalculator, shared neighbour list, batch, drivers, bad input."""
import numpy as np
import pytest

pytest.importorskip("schnetpack")
pytestmark = pytest.mark.backend

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from committee_calc.committee import CommitteeCalculator  # noqa: E402
from committee_calc.config import build_committee  # noqa: E402
from committee_calc.errors import ConfigError, CutoffMismatchError, ModelFileError, UnknownSpeciesError  # noqa: E402
from committee_calc.members.schnetpack import SchNetPackMember  # noqa: E402
from tiny_models import fd_force_error, rattled_si, relax_and_md  # noqa: E402

torch.set_num_threads(1)


_si = rattled_si


def test_member_equals_spk_calculator(schnetpack_models):
    import schnetpack.transform as trn
    from schnetpack.interfaces import SpkCalculator

    path = str(schnetpack_models / "spk_0.pt")
    m = SchNetPackMember.from_file(path)
    assert m.cutoff == pytest.approx(4.0) and "stress" in m.implemented_properties
    a = _si()
    p = m.predict(a, ("energy", "forces", "stress"))
    b = a.copy()
    b.calc = SpkCalculator(path, neighbor_list=trn.MatScipyNeighborList(cutoff=4.0),
                           energy_unit="eV", position_unit="Ang", stress_key="stress",
                           dtype=torch.float64)
    assert p["energy"] == pytest.approx(b.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(p["forces"], b.get_forces(), atol=1e-8)
    np.testing.assert_allclose(p["stress"], b.get_stress(), atol=1e-8)
    # unit conversion: a model declared in kcal/mol gives energies scaled to eV
    mk = SchNetPackMember.from_file(path, energy_unit="kcal/mol")
    assert mk.predict(a, ("energy",))["energy"] == pytest.approx(p["energy"] * 0.0433641, rel=1e-4)


def test_yaml_glob_group_and_batch(schnetpack_models, monkeypatch):
    comm = build_committee({"members": [{"backend": "schnetpack", "path": "spk_*.pt"}]},
                           base_dir=schnetpack_models)
    assert comm.n_members == 3 and len(comm._groups) == 1
    a = _si(4)
    single = [m.predict(a, ("energy", "forces")) for m in comm.members]
    calls = []
    orig = SchNetPackMember.converter
    monkeypatch.setattr(SchNetPackMember, "converter",
                        lambda self: calls.append(self.name) or orig(self))
    a.calc = comm
    a.get_forces()
    assert len(calls) == 1  # one neighbour list for three models
    np.testing.assert_allclose(comm.results["energy_members"], [s["energy"] for s in single],
                               atol=1e-9)
    structs = [_si(1), _si(2, (1, 1, 2))]
    rows = SchNetPackMember.predict_batch(comm.members, structs, ("energy", "forces"))
    for s, row in zip(structs, rows):
        for m, p in zip(comm.members, row):
            assert p["energy"] == pytest.approx(m.predict(s, ("energy",))["energy"], abs=1e-8)


def test_relax_md_and_finite_differences(schnetpack_models):
    members = [SchNetPackMember.from_file(schnetpack_models / f"spk_{k}.pt") for k in range(2)]
    comm = CommitteeCalculator(members)
    a = _si(7)
    e0, e1, e_md, _ = relax_and_md(comm, a, relax_steps=4, md_steps=20)
    assert e1 <= e0 + 1e-8
    assert len(e_md) == 21 and np.all(np.isfinite(e_md))
    assert fd_force_error(members[0], a) < 1e-5


def test_bad_inputs(schnetpack_models, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ModelFileError, match="corrupt"):
        SchNetPackMember.from_file(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pt")
    with pytest.raises(ModelFileError, match="not a schnetpack model"):
        SchNetPackMember.from_file(tmp_path / "dict.pt")
    with pytest.raises(ConfigError, match="unknown keys"):
        SchNetPackMember.from_spec({"backend": "schnetpack", "path": "x", "cutof": 2})
    good = SchNetPackMember.from_file(schnetpack_models / "spk_0.pt", species=["Si"])
    odd = SchNetPackMember.from_file(schnetpack_models / "odd_cutoff.pt", species=["Si"])
    with pytest.raises(CutoffMismatchError):
        SchNetPackMember.predict_group([good, odd], _si(), ("energy", "forces"))
    c = bulk("C", "diamond", 3.57)
    c.calc = CommitteeCalculator([good, odd])
    with pytest.raises(UnknownSpeciesError, match="'C'"):
        c.get_potential_energy()
