"""Threshold MC engine: lid property, downhill monotonicity, exact resume, bad input."""
import json
import math

import numpy as np
import pytest
from ase.calculators.emt import EMT

from committee_calc.errors import ConfigError, UnitError
from committee_calc.gate import Gate
from committee_calc.mc.threshold import ThresholdMC, lid_from_units
from committee_calc.units import KJMOL
from test_mc_moves import water_crystal

MOVES = {"translate": {"probability": 2, "step": 0.4}, "rotate": {"probability": 2, "step": 20},
         "cell_volume": {"probability": 1, "step": 0.05}, "cell_angle": {"probability": 1, "step": 3}}


def test_lid_never_violated_and_lid_raises():
    mc = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.01, lid_raise_eV=0.005, lid_every=40,
                     max_lid_raises=2, seed=1)
    recs = mc.run(150)
    assert recs[0]["move"] == "start" and mc.step_index == 150
    acc = [r for r in recs[1:] if r["accepted"]]
    rej = [r for r in recs[1:] if not r["accepted"]]
    assert len(acc) > 10 and len(rej) > 10  # the lid really binds
    for r in recs[1:]:
        assert r["lid_eV"] == pytest.approx(mc.e0 + 0.01 + 0.005 * min(r["step"] // 40, 2))
        if r["accepted"]:
            assert r["trial_energy_eV"] < r["lid_eV"]
            assert r["energy_eV"] == r["trial_energy_eV"]
        else:
            assert r["trial_energy_eV"] >= r["lid_eV"]
    # the structure held by the chain really has the recorded energy and lies below the lid
    a = mc.atoms.copy()
    a.calc = EMT()
    assert a.get_potential_energy() == pytest.approx(mc.energy, abs=1e-9)
    assert mc.energy < mc.lid_at(mc.step_index)


def test_downhill_is_monotone():
    mc = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, mode="downhill", seed=3)
    recs = mc.run(120)
    e = [r["energy_eV"] for r in recs]
    assert all(b <= a for a, b in zip(e, e[1:]))
    assert e[-1] < e[0]
    for r in recs[1:]:
        assert r["accepted"] == (r["trial_energy_eV"] < (e[r["step"] - 1]))
        assert math.isinf(r["lid_eV"])


def test_adaptive_steps_move_toward_target():
    mc = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), {"translate": {"probability": 1, "step": 2.0}},
                     lid_eV=0.02, seed=5, adaptive_target=0.5, adaptive_every=10)
    mc.run(60)
    assert mc.moves.steps["translate"] < 2.0  # too large a step was shrunk


def test_resume_continues_the_same_chain():
    full = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.05, seed=11,
                       adaptive_target=0.4, adaptive_every=7)
    ref = full.run(60)
    part = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.05, seed=11,
                       adaptive_target=0.4, adaptive_every=7)
    first = part.run(25)
    state = json.loads(json.dumps(part.state(), sort_keys=True))  # as the driver writes it
    del part
    resumed = ThresholdMC.from_state(state, Gate(EMT()))
    second = resumed.run(60)
    got = first + second
    assert [r["step"] for r in got] == list(range(61))
    for a, b in zip(ref, got):
        assert a["move"] == b["move"] and a["accepted"] == b["accepted"]
        assert a["trial_energy_eV"] == pytest.approx(b["trial_energy_eV"], abs=1e-10, nan_ok=True)
    np.testing.assert_allclose(resumed.atoms.positions, full.atoms.positions, atol=1e-10)
    assert resumed.rng.bit_generator.state == full.rng.bit_generator.state


def test_lid_units():
    assert lid_from_units(12, n_molecules=4, lid_kjmol=10) == pytest.approx(40 * KJMOL)
    assert lid_from_units(12, lid_eV_per_atom=0.01) == pytest.approx(0.12)
    with pytest.raises(UnitError, match="> 0"):
        lid_from_units(12, n_molecules=4, lid_kjmol=0)
    with pytest.raises(ConfigError, match="exactly one"):
        lid_from_units(12, n_molecules=4)
    with pytest.raises(ConfigError, match="molecule count"):
        lid_from_units(12, lid_kjmol=5)


@pytest.mark.parametrize("lid", [0.0, -0.1, float("nan")])
def test_bad_lid(lid):
    with pytest.raises(UnitError, match="lid"):
        ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=lid)


def test_bad_input():
    with pytest.raises(UnitError, match="lid"):
        ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES)  # threshold mode needs a lid
    with pytest.raises(ConfigError, match="empty"):
        ThresholdMC(water_crystal(a=4.0), Gate(EMT()), {}, lid_eV=0.1)
    with pytest.raises(ConfigError, match="mode"):
        ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.1, mode="metropolis")
    with pytest.raises(ConfigError, match="adaptive_target"):
        ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.1, adaptive_target=1.5)
    mc = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.1)
    with pytest.raises(ConfigError, match="initialise"):
        mc.step()


def test_only_a_gate_evaluates():
    """One evaluator type: a bare calculator or committee is refused with the fix named."""
    with pytest.raises(ConfigError, match=r"Gate\(committee\)"):
        ThresholdMC(water_crystal(a=4.0), EMT(), MOVES, lid_eV=0.1)
    state = ThresholdMC(water_crystal(a=4.0), Gate(EMT()), MOVES, lid_eV=0.1).state()
    with pytest.raises(ConfigError, match="Gate"):
        ThresholdMC.from_state(state, EMT())
