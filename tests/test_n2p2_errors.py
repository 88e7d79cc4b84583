"""Bad n2p2 input gives a specific, named error."""
import os
import shutil

import pytest
from ase import Atoms

from committee_calc.errors import ConfigError, ModelFileError, UnitError, UnknownSpeciesError
from committee_calc.members import build_members
from committee_calc.members.n2p2 import N2P2Member

DATA = os.path.join(os.path.dirname(__file__), "data", "n2p2")


@pytest.fixture
def model(tmp_path):
    dst = tmp_path / "LJ"
    shutil.copytree(os.path.join(DATA, "LJ_Ne"), dst)
    return dst


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_missing_weight_file(model):
    os.remove(model / "weights.010.data")
    with pytest.raises(ModelFileError, match="weight file for element Ne missing"):
        N2P2Member(model)


def test_scaling_data_with_wrong_number_of_rows(model):
    lines = (model / "scaling.data").read_text().splitlines()
    data = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    del lines[data[-1]]
    (model / "scaling.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelFileError, match="4 data rows but input.nn defines 5"):
        N2P2Member(model)


def test_unsupported_symmetry_function_type_is_named(model):
    with open(model / "input.nn", "a") as fh:
        fh.write("symfunction_short Ne 13 Ne Ne 0.1 1.0 2.0 3.0\n")
    with pytest.raises(ModelFileError, match="symmetry function type 13 is not supported"):
        N2P2Member(model)


def test_unsupported_keyword_is_named(model):
    with open(model / "input.nn", "a") as fh:
        fh.write("element_nodes_short Ne 1 5\n")
    with pytest.raises(ModelFileError, match="element_nodes_short"):
        N2P2Member(model)


def test_fourth_generation_model_refused(model):
    with open(model / "input.nn", "a") as fh:
        fh.write("nnp_generation 4\n")
    with pytest.raises(ModelFileError, match="nnp_generation 4"):
        N2P2Member(model)


def test_weight_file_of_wrong_size(model):
    edit(model / "input.nn", "global_nodes_short              3", "global_nodes_short              4")
    with pytest.raises(ModelFileError, match="does not match input.nn"):
        N2P2Member(model)


def test_structure_with_element_the_model_lacks(model):
    m = N2P2Member(model)
    with pytest.raises(UnknownSpeciesError, match=r"\['Ar'\]"):
        m.predict(Atoms("NeAr", positions=[[0, 0, 0], [0, 0, 1.5]]), ["energy"])


def test_bad_units_and_spec(model):
    with pytest.raises(UnitError, match="parsec"):
        N2P2Member(model, length_unit="parsec")
    with pytest.raises(ConfigError, match="unknown key"):
        build_members({"backend": "n2p2", "path": str(model), "lenght_unit": "Bohr"})
    with pytest.raises(ModelFileError, match="no input.nn"):
        N2P2Member(model.parent)
