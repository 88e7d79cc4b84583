"""The Si polymorph cells of the demo keep their space groups and sensible geometry."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

spglib = pytest.importorskip("spglib")
PATH = Path(__file__).resolve().parents[1] / "examples" / "si_demo" / "polymorphs.py"


def _module():
    spec = importlib.util.spec_from_file_location("si_polymorphs", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_polymorph_cells_have_their_space_groups():
    mod = _module()
    cells = mod.polymorphs()
    assert set(cells) == set(mod.SPACE_GROUPS)
    volumes = {}
    for name, atoms in cells.items():
        assert len(atoms) == 8 and atoms.cell.rank == 3 and atoms.pbc.all()
        data = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
        assert spglib.get_symmetry_dataset(data, symprec=1e-3).number == mod.SPACE_GROUPS[name], name
        d = atoms.get_all_distances(mic=True)[np.triu_indices(8, 1)]
        assert 2.2 < d.min() < 2.7, (name, d.min())  # Si–Si bonds, no overlapping images
        volumes[name] = atoms.get_volume() / 8
    # the open tetrahedral phases are the least dense, the metallic high-pressure phases the densest
    assert min(volumes["diamond"], volumes["lonsdaleite"]) > volumes["bc8"] > max(
        volumes["beta_sn"], volumes["simple_hexagonal"])
