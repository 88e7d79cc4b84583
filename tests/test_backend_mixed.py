"""One committee of four frameworks (MACE + NequIP + SchNetPack + LAMMPS) on Si."""
import numpy as np
import pytest

pytest.importorskip("mace")
pytest.importorskip("nequip")
pytest.importorskip("schnetpack")
pytestmark = pytest.mark.backend

from ase.build import bulk  # noqa: E402

from committee_calc.config import build_committee  # noqa: E402
from committee_calc.errors import BackendUnavailableError  # noqa: E402

SCHEMA = ("energy", "free_energy", "forces", "stress", "energy_members", "forces_members",
          "stress_members", "energy_std", "energy_std_per_atom", "forces_std", "forces_std_atom",
          "forces_std_max", "force_uncertainty_relative", "stress_std", "n_nonfinite")


def test_mixed_committee_full_schema(mace_models, nequip_models, schnetpack_models):
    try:
        from committee_calc.members.lammps import import_lammps

        import_lammps()
    except BackendUnavailableError as exc:  # pragma: no cover
        pytest.skip(str(exc))
    spec = {"members": [
        {"backend": "mace", "path": str(mace_models / "mace_0.model")},
        {"backend": "nequip", "path": str(nequip_models / "nequip_0.pth")},
        {"backend": "schnetpack", "path": str(schnetpack_models / "spk_0.pt"), "species": ["Si"]},
        {"backend": "lammps", "pair_style": "sw", "pair_coeff": "* * Si.sw Si", "elements": ["Si"]},
    ]}
    comm = build_committee(spec)
    assert [m.backend for m in comm.members] == ["mace", "nequip", "schnetpack", "lammps"]
    assert len(comm._groups) == 4
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.rattle(0.03, seed=0)
    a.calc = comm
    a.get_stress()
    r = comm.results
    for k in SCHEMA:
        assert k in r, k
    assert r["forces_members"].shape == (4, 8, 3) and r["stress_members"].shape == (4, 6)
    assert r["energy"] == pytest.approx(np.mean(r["energy_members"]))
    assert r["energy_std"] == pytest.approx(np.std(r["energy_members"], ddof=1))
    assert r["n_nonfinite"] == 0
    # each member's value equals that member alone
    for m, e in zip(comm.members, r["energy_members"]):
        assert e == pytest.approx(m.predict(a.copy(), ("energy",))["energy"], abs=1e-8)
