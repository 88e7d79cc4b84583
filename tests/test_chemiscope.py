"""Issue 18, chemiscope export: a relaxed pool and a landscape written as chemiscope JSON load
with chemiscope's own reader (``chemiscope.show_input``) and carry energy, density, σ and cluster."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from committee_calc.analysis.chemiscope_io import landscape_to_chemiscope, pool_to_chemiscope, write_chemiscope
from committee_calc.analysis.landscape import make_landscape
from committee_calc.errors import ConfigError
from committee_calc.structures import density_gcm3

chemiscope = pytest.importorskip("chemiscope")


def _pool():
    """Three Cu cells at different lattice constants, EMT energies as the committee mean."""
    images = []
    for i, a0 in enumerate((3.55, 3.62, 3.70)):
        a = bulk("Cu", "fcc", a=a0, cubic=True)
        a.calc = EMT()
        a.info.update(committee_energy=a.get_potential_energy(), committee_energy_std=0.004 * (i + 1),
                      cluster=i % 2, status="converged" if i else "unverified")
        a.calc = None
        images.append(a)
    return images


def _loaded(path) -> dict:
    widget = chemiscope.show_input(str(path))  # chemiscope's reader (validates meta, builds its widget)
    return json.loads(widget.value)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_relaxed_pool_loads_with_chemiscope(tmp_path, suffix):
    images = _pool()
    path = pool_to_chemiscope(tmp_path / f"pool{suffix}", images)
    data = _loaded(path)
    assert data["meta"]["name"] == "relaxed pool"
    assert len(data["structures"]) == 3
    assert [s["size"] for s in data["structures"]] == [4, 4, 4]
    props = data["properties"]
    assert set(props) >= {"energy", "density", "σ", "cluster", "status"}
    e = np.array([a.info["committee_energy"] for a in images]) / 4 * 1000
    np.testing.assert_allclose(props["energy"]["values"], e - e.min())
    assert props["energy"]["units"] == "meV/atom" and min(props["energy"]["values"]) == 0
    np.testing.assert_allclose(props["σ"]["values"], [1.0, 2.0, 3.0])  # 4, 8, 12 meV / 4 atoms
    np.testing.assert_allclose(props["density"]["values"], [density_gcm3(a) for a in images])
    assert props["cluster"]["values"] == [0, 1, 0]
    assert props["status"]["values"] == ["unverified", "converged", "converged"]
    assert data["settings"]["map"]["x"]["property"] == "density"
    assert data["settings"]["map"]["y"]["property"] == "energy"


def test_landscape_per_molecule_in_kjmol(tmp_path):
    images = _pool()
    for a in images:
        a.info["baseline_energy"] = a.info["committee_energy"]
    ls = make_landscape(images, molecules=2)
    path = landscape_to_chemiscope(tmp_path / "land.json", ls, energy_std_eV=[0.01, 0.02, 0.03], cluster=[0, 0, 1])
    props = _loaded(path)["properties"]
    assert props["energy"]["units"] == "kJ/mol per molecule"
    np.testing.assert_allclose(props["σ"]["values"], np.array([0.01, 0.02, 0.03]) / 2 * 96.485, rtol=1e-3)


def test_bad_inputs_refused(tmp_path):
    images = _pool()
    with pytest.raises(ConfigError, match="one value per structure"):
        write_chemiscope(tmp_path / "x.json", images, energy_eV=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"\.json"):
        write_chemiscope(tmp_path / "x.txt", images)
    with pytest.raises(ConfigError, match="no structures"):
        write_chemiscope(tmp_path / "x.json", [])
    assert not (tmp_path / "x.json").exists()
