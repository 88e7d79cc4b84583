"""Issue 17 (review items A1–A8, C15, C16): bad values and degenerate structures are refused
up front — one ``error:`` line, exit 2, nothing written — and the library checks behind them
(each kind fixed once, at the lowest layer) raise clear committee_calc errors."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111

from committee_calc import units
from committee_calc.errors import CellError, ConfigError, StructureReadError, UnitError
from committee_calc.fileio import load_json
from committee_calc.structures import check_cell, check_structure
from driver_inputs import DRIVERS, argv, make_inputs
from test_bad_input import snapshot

#: (driver, extra argv, regex of the error line)
BAD_VALUES = [
    ("mc", ["--seed", "-1"], r"--seed: must be an integer >= 0"),
    ("mc", ["--adaptive-every", "-1"], r"--adaptive-every: must be an integer >= 1"),
    ("mc", ["--max-lid-raises", "-1"], r"--max-lid-raises: must be an integer >= 0"),
    ("mc", ["--n-starts", "99"], r"--n-starts 99 .* 3 input structure"),
    ("md", ["--seed", "-1"], r"--seed: must be an integer >= 0"),
    ("md", ["--temperature-K", "100,,200"], r"--temperature-K '100,,200'.*no empty entries"),
    ("md", ["--cutoff-A", "-1"], r"--cutoff-A: must be > 0"),
    ("md", ["--tdamp-fs", "0"], r"--tdamp-fs: must be > 0"),
    ("md", ["--pdamp-fs", "-1"], r"--pdamp-fs: must be > 0"),
    ("md", ["--pressure-GPa", "nan"], r"--pressure-GPa: must be finite"),
    ("qha", ["--pressure-GPa", "nan"], r"\(--pressure-GPa\) must be finite"),
    ("qha", ["--qha-tmax-K", "-5"], r"\(--qha-tmax-K\) must be > 0"),
    ("qha", ["--supercell", "-1"], r"supercell matrix .*--supercell.* positive determinant"),
    ("qha", ["--linear-scales", "0.99", "nan", "1.0", "1.01", "1.02"], r"linear_scales value must be finite, got nan"),
    ("learn", ["--seed", "-1"], r"--seed: must be an integer >= 0"),
    ("learn", ["--max-train-size", "0"], r"--max-train-size: must be an integer >= 1"),
    ("learn", ["--max-iterations", "-1"], r"--max-iterations: must be an integer >= 1"),
    ("learn", ["--n-members", "1"], r"n_members .* >= 2"),
    ("campaign", ["--max-epochs", "-1"], r"--max-epochs: must be an integer >= 1"),
    ("campaign", ["--n-jobs", "0"], r"--n-jobs: must be an integer >= 1"),
    ("campaign", ["--device", "nosuchdev"], r"unknown training device 'nosuchdev' \(--device\)"),
    ("campaign", ["--pressure-GPa", "inf"], r"--pressure-GPa: must be finite"),
    ("rerank", ["--experimental", "nosuchname"], r"--experimental names \['nosuchname'\]"),
]


@pytest.mark.parametrize("driver, extra, expected", [pytest.param(*c, id=f"{c[0]}{''.join(c[1][:2])}")
                                                     for c in BAD_VALUES])
def test_bad_value_is_refused_before_any_output(driver, extra, expected, tmp_path, capsys):
    inputs = make_inputs(tmp_path, n=3, training=driver == "campaign")
    inputs["extra"] += extra
    before = snapshot(tmp_path)
    try:
        rc = DRIVERS[driver][0](argv(driver, inputs))
    except SystemExit as exc:
        rc = exc.code
    last = (capsys.readouterr().err.strip().splitlines() or [""])[-1]
    assert rc == 2 and last.startswith("error:"), last
    assert re.search(expected, last), last
    assert snapshot(tmp_path) == before


def test_rerank_labels_without_reference_is_refused(tmp_path, capsys):
    inputs = make_inputs(tmp_path, n=3)
    args = argv("rerank", inputs)
    i = args.index("--reference")
    del args[i:i + 2]
    before = snapshot(tmp_path)
    assert DRIVERS["rerank"][0](args) == 2
    assert "--labels is the store the reference writes to" in capsys.readouterr().err.splitlines()[-1]
    assert snapshot(tmp_path) == before


def test_md_one_atom_is_refused(tmp_path, capsys):
    """A1: one Cu atom in a 12 Å box: MD has no degrees of freedom (was a NaN cell / T = nan)."""
    from ase.io import write

    inputs = make_inputs(tmp_path, n=3)
    write(tmp_path / "one.extxyz", Atoms("Cu", positions=[[6, 6, 6]], cell=[12] * 3, pbc=True))
    inputs["structure"] = str(tmp_path / "one.extxyz")
    before = snapshot(tmp_path)
    for ensemble in ("mtk_iso", "nvt"):
        assert DRIVERS["md"][0](argv("md", inputs) + ["--ensemble", ensemble]) == 2
        assert "MD needs at least 2 atoms" in capsys.readouterr().err.splitlines()[-1]
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- library checks
def _cu():
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def _nan_position(a):
    a.positions[2, 1] = np.inf
    return a


def _duplicate(a):
    a.positions[3] = a.positions[0] + [0.01, 0, 0]
    return a


def _image_duplicate(a):  # the same atom across the periodic boundary
    a.positions[1] = a.positions[0] + a.cell[0] - [0.02, 0, 0]
    return a


@pytest.mark.parametrize("edit, error, text", [
    (lambda a: a[[]], StructureReadError, "has no atoms"),
    (_nan_position, StructureReadError, r"non-finite .*atom\(s\) \[2\]"),
    (_duplicate, StructureReadError, "atoms 0 and 3 only 0.01 Å apart"),
    (_image_duplicate, StructureReadError, "atoms 0 and 1 only 0.02 Å apart"),
    (lambda a: (a.cell.__setitem__((1, 1), np.nan), a)[1], CellError, "non-finite cell"),
    (lambda a: (a.set_cell([3.6, 3.6, 0.0]), a)[1], CellError, "no lattice vector there"),
])
def test_check_structure_kinds(edit, error, text):
    with pytest.raises(error, match=text) as info:
        check_structure(edit(_cu()), "structure 4 of 'x.extxyz'")
    assert "structure 4 of 'x.extxyz'" in str(info.value)


def test_check_structure_accepts_good_structures():
    check_structure(_cu(), "bulk")
    check_structure(Atoms("Cu"), "one atom without a cell")
    check_structure(fcc111("Cu", (2, 2, 2), vacuum=5), "slab")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_cell_is_nan_safe(value):
    """A1: a non-finite cell is a CellError, not numpy's LinAlgError (pbc False too)."""
    for pbc in (True, False):
        a = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 1.5, 0]], cell=np.eye(3) * 5, pbc=pbc)
        a.cell[0, 0] = value
        with pytest.raises(CellError, match="non-finite cell"):
            check_cell(a, "s")


@pytest.mark.parametrize("text", ['{"seed": 0,', "", "\x00\xff not json", "[1, 2"])
def test_load_json_corrupt_is_config_error(text, tmp_path):
    """A8: a corrupt resume state names the file and the fix (every resume path uses load_json)."""
    p = tmp_path / "state.json"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"state\.json' is corrupt.*delete it"):
        load_json(p)
    assert load_json(tmp_path / "nosuch.json", default={"a": 1}) == {"a": 1}


@pytest.mark.parametrize("make", [
    lambda: Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]], pbc=False),
    lambda: (lambda s: (s.cell.__setitem__(2, [0, 0, 0]), s.set_pbc([True, True, False]), s)[2])(
        fcc111("Cu", (2, 2, 2))),
])
def test_mc_moves_without_a_full_cell(make):
    """A3: molecule/atom moves on a cluster or a slab with c = 0 (was LinAlgError: Singular matrix)."""
    from committee_calc.mc.moves import MoveSet, make_whole

    atoms = make()
    whole, topo = make_whole(atoms, labels=np.arange(len(atoms)))
    rng = np.random.default_rng(0)
    moves = MoveSet({"translate": {"probability": 1.0, "step": 0.3}})
    for _ in range(5):
        trial, _name, _info = moves.propose(whole, topo, rng)
        assert np.all(np.isfinite(trial.positions))


def test_temperature_schedule_refuses_empty_entries():
    from committee_calc.md.schedule import TemperatureSchedule

    for text in ("100,,200", "100,", "100:", ":200", "1:2:3"):
        with pytest.raises(ConfigError, match="no empty entries"):
            TemperatureSchedule.parse(text, 10)
    assert TemperatureSchedule.parse("100, 200", 10).setpoints_K.tolist() == [100, 200]


def test_count_and_finite_checks():
    assert units.check_count("n", "3", 1) == 3 and units.check_count("n", 0) == 0
    for bad in (-1, 1.5, "x", float("nan"), None):
        with pytest.raises(UnitError, match="n must be an integer >= 0"):
            units.check_count("n", bad)
    assert units.check_finite("p", "-2.5") == -2.5
    with pytest.raises(UnitError, match=r"p must be finite, got nan"):
        units.check_finite("p", np.float64("nan"))  # plain text, not np.float64(nan)


def test_library_settings_refuse_bad_values():
    from committee_calc.campaign.runner import check_training_options
    from committee_calc.mc.runner import MCSettings
    from committee_calc.phonons.qha_run import QHAOptions, VolumeScan

    for kw in ({"seed": -1}, {"adaptive_every": 0}, {"max_lid_raises": -1}, {"lid_every": 0},
               {"adaptive_target": 1.5}):
        with pytest.raises(ConfigError):
            MCSettings(mode="downhill", **kw)
    for kw in ({"pressure_GPa": np.nan}, {"t_max_K": -5}, {"screen_pressures_GPa": (1, np.inf)}):
        with pytest.raises(ConfigError):
            QHAOptions(**kw)
    with pytest.raises(ConfigError, match="must be finite"):
        VolumeScan(pressures_GPa=(np.nan, 1, 2, 3, 4))
    for kw in ({"max_epochs": 0}, {"n_jobs": 0}, {"device": "nosuchdev"}, {"device": "cuda:x"}):
        with pytest.raises(ConfigError):
            check_training_options(**kw)
    check_training_options(max_epochs=3, n_jobs=2, device="cuda:1")


def test_negative_supercell_is_refused():
    from committee_calc.phonons.settings import PhononSettings
    from committee_calc.phonons.supercell import make_phonopy

    with pytest.raises(ConfigError, match="positive determinant"):
        make_phonopy(_cu(), PhononSettings(supercell_matrix=-1), generate=False)


def test_check_experimental_names():
    from types import SimpleNamespace

    from committee_calc.active.options import check_experimental

    ls = SimpleNamespace(names=["s000", "s001"])
    assert check_experimental(ls, ["s001"]) == ["s001"]
    with pytest.raises(ConfigError, match=r"\['typo'\]"):
        check_experimental(ls, ["s000", "typo"])


def test_read_structures_names_the_bad_frame(tmp_path):
    from committee_calc.structures import read_structures

    p = Path(tmp_path / "s.extxyz")
    p.write_text('2\nLattice="5 0 0 0 5 0 0 0 5" pbc="T T T"\nCu 0 0 0\nCu 0 0 0.05\n')
    with pytest.raises(StructureReadError, match=r"structure 0 of .*s\.extxyz.*atoms 0 and 1"):
        read_structures(p)
