"""Drivers that move atoms never write a moved frame with the input's labels.

An input frame may carry reference labels (``REF_energy``, ``REF_forces``) or committee values
of its own geometry; after relaxation, MC or MD the atoms moved, so those values are stale and
a later reader (``committee-llpr-fit``, training) would take them as labels.  Drivers read their
inputs with :func:`committee_calc.structures.read_structures` ``labels=False``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from committee_calc.structures import drop_labels, read_structures
from driver_inputs import DRIVERS, argv, make_inputs

SENTINEL = 12345.0


@pytest.mark.parametrize("driver", ["relax", "md", "mc"])
def test_moved_frames_carry_no_input_labels(driver, tmp_path):
    inputs = make_inputs(tmp_path)
    frames = read(inputs["structure"], ":")
    for a in frames:
        a.info.update(REF_energy=SENTINEL, committee_energy=SENTINEL, name_kept="yes")
        a.arrays["REF_forces"] = np.full((len(a), 3), SENTINEL)
    write(inputs["structure"], frames)
    assert DRIVERS[driver][0](argv(driver, inputs)) == 0
    written = [f for f in Path(inputs["out"]).rglob("*.extxyz")]
    assert written
    for f in written:
        for frame in read(str(f), ":"):
            assert SENTINEL not in [v for v in frame.info.values() if isinstance(v, float)], f
            for key, arr in frame.arrays.items():
                assert not (np.asarray(arr) == SENTINEL).any(), (f, key)


def test_drop_labels_keeps_other_keys(tmp_path):
    inputs = make_inputs(tmp_path)
    a = read(inputs["structure"])
    a.info.update(REF_energy=1.0, BASE_energy=2.0, DELTA_energy=3.0, committee_energy_std=0.1, name="x")
    a.arrays["REF_forces"] = np.zeros((len(a), 3))
    drop_labels(a)
    assert a.info.get("name") == "x" and not any(k.startswith(("REF_", "BASE_", "DELTA_", "committee_"))
                                                 for k in list(a.info) + list(a.arrays))
    write(tmp_path / "l.extxyz", read(inputs["structure"]))
    assert all("REF_energy" not in f.info for f in read_structures(tmp_path / "l.extxyz", labels=False))
