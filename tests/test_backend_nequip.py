"""NequIP members: equal to nequip's own calculator, shared graph, batch, drivers, bad input."""
import numpy as np
import pytest

pytest.importorskip("nequip")
pytestmark = pytest.mark.backend

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from committee_calc.committee import CommitteeCalculator  # noqa: E402
from committee_calc.config import build_committee  # noqa: E402
from committee_calc.errors import CutoffMismatchError, ModelFileError, UnknownSpeciesError  # noqa: E402
from committee_calc.members.nequip import NequIPMember  # noqa: E402
from tiny_models import fd_force_error, rattled_si, relax_and_md  # noqa: E402

torch.set_num_threads(1)


_si = rattled_si


def test_member_equals_nequip_calculator(nequip_models):
    from nequip.ase import NequIPCalculator

    path = str(nequip_models / "nequip_0.pth")
    m = NequIPMember(path)
    assert m.cutoff == 4.0 and m.species == {"Si"} and "stress" in m.implemented_properties
    a = _si()
    p = m.predict(a, ("energy", "forces", "stress", "energies"))
    b = a.copy()
    b.calc = NequIPCalculator.from_deployed_model(path, species_to_type_name={"Si": "Si"},
                                                  set_global_options=False)
    assert p["energy"] == pytest.approx(b.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(p["forces"], b.get_forces(), atol=1e-8)
    np.testing.assert_allclose(p["stress"], b.get_stress(), atol=1e-8)
    assert p["energies"].sum() == pytest.approx(p["energy"], abs=1e-8)


def test_yaml_glob_group_and_batch(nequip_models, monkeypatch):
    comm = build_committee({"members": [{"backend": "nequip", "path": "nequip_*.pth"}]},
                           base_dir=nequip_models)
    assert comm.n_members == 3 and len(comm._groups) == 1
    a = _si(4)
    single = [m.predict(a, ("energy", "forces")) for m in comm.members]
    calls = []
    orig = NequIPMember.build_graph
    monkeypatch.setattr(NequIPMember, "build_graph",
                        lambda self, s: calls.append(len(s)) or orig(self, s))
    a.calc = comm
    a.get_forces()
    assert calls == [1]
    np.testing.assert_allclose(comm.results["energy_members"], [s["energy"] for s in single],
                               atol=1e-9)
    structs = [_si(1), _si(2, (1, 1, 2))]
    rows = NequIPMember.predict_batch(comm.members, structs, ("energy", "forces"))
    for s, row in zip(structs, rows):
        for m, p in zip(comm.members, row):
            assert p["energy"] == pytest.approx(m.predict(s, ("energy",))["energy"], abs=1e-8)


def test_relax_md_and_finite_differences(nequip_models):
    members = [NequIPMember(str(nequip_models / f"nequip_{k}.pth")) for k in range(2)]
    comm = CommitteeCalculator(members)
    a = _si(7)
    e0, e1, e_md, _ = relax_and_md(comm, a, relax_steps=4, md_steps=20)
    assert e1 <= e0 + 1e-8
    assert len(e_md) == 21 and np.all(np.isfinite(e_md))
    assert fd_force_error(members[0], a) < 1e-4


def test_bad_inputs(nequip_models, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="cannot load deployed nequip model"):
        NequIPMember(str(bad))
    with pytest.raises(ModelFileError, match="does not exist"):
        NequIPMember(str(tmp_path / "missing.pth"))
    good = NequIPMember(str(nequip_models / "nequip_0.pth"))
    odd = NequIPMember(str(nequip_models / "odd_rmax.pth"))
    with pytest.raises(CutoffMismatchError):
        NequIPMember.predict_group([good, odd], _si(), ("energy", "forces"))
    comm = CommitteeCalculator([good, odd])
    c = bulk("C", "diamond", 3.57)
    c.calc = comm
    with pytest.raises(UnknownSpeciesError, match="'C'"):
        c.get_potential_energy()
