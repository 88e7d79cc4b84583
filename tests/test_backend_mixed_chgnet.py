"""A heterogeneous committee: CHGNet 0.3.0 + CHGNet 0.2.0 (pretrained, shipped in the chgnet wheel)
+ a tiny MACE member trained on Stillinger-Weber Si labels (tests/tiny_models.py).

Its raw energy spread is the members' energy offsets: CHGNet's energies are on Materials Project's
DFT zero (~ -5.3 eV/atom for diamond Si), the MACE member's on its own training labels' zero (its
E0s: ~ -4.1 eV/atom here); the spread is nearly the same for every configuration and collapses once
each member's energy is measured from its own value on one reference structure.  Forces (and
stress) do not see a constant per-atom offset; they measure the members' real disagreement.
"""
import numpy as np
import pytest

pytest.importorskip("chgnet")
pytest.importorskip("mace")
pytestmark = pytest.mark.backend

from ase.build import bulk  # noqa: E402

from committee_calc import keys as K  # noqa: E402
from committee_calc.config import load_committee  # noqa: E402

SCHEMA = (K.ENERGY, K.FREE_ENERGY, K.FORCES, K.STRESS, K.ENERGY_MEMBERS, K.FORCES_MEMBERS,
          K.STRESS_MEMBERS, K.ENERGY_STD, K.ENERGY_STD_PER_ATOM, K.FORCES_STD, K.FORCES_STD_ATOM,
          K.FORCES_STD_MAX, K.FORCE_UNCERTAINTY_RELATIVE, K.STRESS_STD, K.N_NONFINITE)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, mace_models):
    path = tmp_path_factory.mktemp("mixed_chgnet") / "committee.yaml"
    path.write_text("members:\n"
                    '  - {backend: chgnet, version: "0.3.0"}\n'
                    '  - {backend: chgnet, version: "0.2.0"}\n'
                    f"  - {{backend: mace, path: {mace_models / 'mace_0.model'}}}\n")
    return load_committee(path)


def si_configs(n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Si", "diamond", 5.43 * (1 + rng.uniform(-0.02, 0.02)), cubic=True)
        a.rattle(0.05, seed=seed * 10 + i)
        out.append(a)
    return out


def test_chgnet_versions_and_mace_give_the_schema(mixed):
    assert [m.backend for m in mixed.members] == ["chgnet", "chgnet", "mace"]
    assert [m.dtype for m in mixed.members] == ["float32", "float32", "float64"]
    assert len(mixed._groups) == 3  # 6 Å and 5 Å CHGNet graphs, MACE's own neighbour list
    a = si_configs(1)[0]
    a.calc = mixed
    a.get_stress()
    r = mixed.results
    for k in SCHEMA:
        assert k in r, k
    assert r[K.ENERGY_MEMBERS].shape == (3,) and r[K.FORCES_MEMBERS].shape == (3, 8, 3)
    assert r[K.STRESS_MEMBERS].shape == (3, 6) and r[K.FORCES_STD_ATOM].shape == (8,)
    assert r[K.N_NONFINITE] == 0
    assert r[K.ENERGY] == pytest.approx(np.mean(r[K.ENERGY_MEMBERS]), abs=1e-9)
    assert r[K.ENERGY_STD] == pytest.approx(np.std(r[K.ENERGY_MEMBERS], ddof=1), abs=1e-9)
    assert r[K.ENERGY_STD_PER_ATOM] == pytest.approx(r[K.ENERGY_STD] / 8, abs=1e-12)
    np.testing.assert_allclose(r[K.FORCES_STD], np.std(r[K.FORCES_MEMBERS], axis=0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(r[K.STRESS_STD], np.std(r[K.STRESS_MEMBERS], axis=0, ddof=1), atol=1e-12)
    assert r[K.FORCES_STD_MAX] == pytest.approx(r[K.FORCES_STD_ATOM].max(), abs=1e-12)
    for m, e, f in zip(mixed.members, r[K.ENERGY_MEMBERS], r[K.FORCES_MEMBERS]):
        alone = m.predict(a.copy(), ("energy", "forces"))
        assert e == pytest.approx(alone["energy"], abs=1e-8)
        np.testing.assert_allclose(f, alone["forces"], rtol=0, atol=1e-8)


def test_raw_energy_spread_is_the_members_energy_offset(mixed):
    ideal = bulk("Si", "diamond", 5.43, cubic=True)
    configs = si_configs(4, seed=1)
    res = mixed.predict([ideal] + configs)
    offset = res[0][K.ENERGY_MEMBERS] / len(ideal)  # each member's eV/atom on ideal diamond
    assert offset[:2] == pytest.approx(-5.3, abs=0.1) and offset[2] > -4.6  # MP zero vs SW-trained zero
    raw = np.array([r[K.ENERGY_STD_PER_ATOM] for r in res[1:]])
    aligned = np.array([np.std(r[K.ENERGY_MEMBERS] / len(a) - offset, ddof=1) for r, a in zip(res[1:], configs)])
    chgnet_pair = np.array([np.std(r[K.ENERGY_MEMBERS][:2] / len(a), ddof=1) for r, a in zip(res[1:], configs)])
    # the raw spread (~0.7 eV/atom) is the offset: the same for every configuration ...
    assert raw.min() > 0.3 and np.ptp(raw) < 0.1 * raw.mean()
    assert raw == pytest.approx(np.std(offset, ddof=1), abs=0.05)
    # ... and an order of magnitude above the configuration-dependent disagreement
    assert aligned.max() < 0.1 * raw.min()
    # two CHGNet versions share a zero: their spread is small without any alignment
    assert chgnet_pair.max() < 0.1 * raw.min()
    # forces are blind to the offsets: finite, configuration-dependent spreads
    fmax = np.array([r[K.FORCES_STD_MAX] for r in res[1:]])
    assert np.all(fmax > 0.01) and np.all(np.isfinite(fmax))
