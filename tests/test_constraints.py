"""User constraints (issue 17 item 4) kept on every path that copies, checkpoints, resumes or
re-creates a structure: MD (steps, frames, kill/resume), threshold MC (trial moves, resume from
state), the JSON form of a structure, baseline relaxation, QHA structures and phonons.

The structure: a Cu(111) slab (2x2x3, 6 Å vacuum) whose bottom layer is raised 0.15 Å and held
by ``FixAtoms``; the committee: EMT and a 3 %-scaled EMT.  The fixed layer must move 0 Å.
"""
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.mixing import LinearCombinationCalculator
from ase.constraints import FixAtoms, FixBondLengths, FixCartesian, FixedLine, FixSymmetry
from ase.io import read

from committee_calc import keys as K
from committee_calc.active.baseline import relax_with_baseline
from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.mc.threshold import ThresholdMC
from committee_calc.md.dynamics import CommitteeMD, read_log
from committee_calc.md.schedule import NPT_ENSEMBLES, make_integrator
from committee_calc.members.ase_member import ASEMember
from committee_calc.structures import atoms_from_dict, atoms_to_dict


def slab():
    """Cu(111) 2x2x3, 6 Å vacuum; bottom layer (tag 3) raised 0.15 Å and fixed."""
    atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    bottom = atoms.get_tags() == 3
    atoms.positions[bottom, 2] += 0.15
    atoms.set_constraint(FixAtoms(mask=bottom))
    return atoms


FIXED = np.flatnonzero(slab().get_tags() == 3)
FREE = np.flatnonzero(slab().get_tags() != 3)


def gate():
    return Gate(CommitteeCalculator([ASEMember(EMT()),
                                     ASEMember(LinearCombinationCalculator([EMT()], [1.03]))]))


def fixed_shift(positions) -> float:
    """Largest displacement [Å] of a fixed atom from the start."""
    return float(np.abs(np.asarray(positions)[FIXED] - slab().positions[FIXED]).max())


def free_shift(positions) -> float:
    return float(np.abs(np.asarray(positions)[FREE] - slab().positions[FREE]).max())


# ----------------------------------------------------------------------------- JSON form
def test_atoms_dict_round_trip_keeps_constraints():
    a = bulk("Cu", cubic=True) * 2
    a.set_constraint([FixAtoms([0, 1]), FixCartesian([2], [True, False, True]),
                      FixedLine(3, [0, 0, 1]), FixSymmetry(a)])
    b = atoms_from_dict(json.loads(json.dumps(atoms_to_dict(a))))
    assert [type(c).__name__ for c in b.constraints] == \
        ["FixAtoms", "FixCartesian", "FixedLine", "FixSymmetry"]
    assert b.constraints[0].index.tolist() == [0, 1]
    np.testing.assert_array_equal(b.constraints[1].mask, a.constraints[1].mask)
    assert "constraints" not in atoms_to_dict(bulk("Cu"))  # unconstrained: the old form


# ----------------------------------------------------------------------------- MD
@pytest.mark.parametrize("ensemble", ["nvt", "nve"])
def test_md_keeps_fixed_layer_through_steps_frames_and_resume(tmp_path, ensemble):
    kw = dict(ensemble=ensemble, timestep_fs=2.0, temperature=600.0, write_interval=5)
    CommitteeMD(slab(), gate(), tmp_path / "a", **kw).run(30)
    killed = CommitteeMD(slab(), gate(), tmp_path / "b", **kw).run(30, stop_after=12)
    assert killed.last_step == 12
    resumed = CommitteeMD(slab(), gate(), tmp_path / "b", **kw).run(30)
    assert resumed.start_step == 10 and resumed.last_step == 30
    for d in ("a", "b"):
        state = json.loads((tmp_path / d / "md_state.json").read_text())
        pos = state["integrator"]["positions"]
        assert fixed_shift(pos) == 0.0
        assert free_shift(pos) > 0.01  # the free atoms did move
        assert np.all(np.asarray(state["integrator"]["momenta"])[FIXED] == 0.0)
        frames = read(tmp_path / d / "md_trajectory.extxyz", index=":")
        assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20, 25, 30]
        for f in frames:  # every frame written keeps the constraint and the fixed layer
            assert fixed_shift(f.positions) < 1e-7  # extxyz writes 8 decimals
            assert [type(c).__name__ for c in f.constraints] == ["FixAtoms"]
            assert f.constraints[0].index.tolist() == FIXED.tolist()
    sa = json.loads((tmp_path / "a" / "md_state.json").read_text())
    sb = json.loads((tmp_path / "b" / "md_state.json").read_text())
    np.testing.assert_allclose(sa["integrator"]["positions"], sb["integrator"]["positions"], atol=1e-9)


def test_md_resume_with_other_constraints_is_refused(tmp_path):
    kw = dict(ensemble="nvt", timestep_fs=2.0, temperature=300.0, write_interval=5)
    CommitteeMD(slab(), gate(), tmp_path, **kw).run(5)
    free = slab()
    free.set_constraint()
    with pytest.raises(ConfigError, match="constraints"):
        CommitteeMD(free, gate(), tmp_path, **kw).run(10)


@pytest.mark.parametrize("ensemble", NPT_ENSEMBLES)
def test_md_cell_changing_ensembles_refuse_constraints_before_writing(tmp_path, ensemble):
    atoms = slab()
    atoms.pbc = True  # a 3-D periodic cell, so only the constraint is in the way
    with pytest.raises(ConfigError, match="constraints.*'nvt' or 'nve'"):
        CommitteeMD(atoms, gate(), tmp_path / "out", ensemble=ensemble)
    assert not (tmp_path / "out").exists()


def test_md_empty_fixatoms_is_no_constraint(tmp_path):
    atoms = bulk("Cu", cubic=True) * (2, 2, 2)
    atoms.set_constraint(FixAtoms(indices=[]))
    CommitteeMD(atoms, gate(), tmp_path, ensemble="mtk_iso", write_interval=2).run(2)


def test_nvt_thermostat_acts_on_free_degrees_of_freedom_only():
    atoms = slab()
    atoms.calc = gate()
    dyn = make_integrator(atoms, "nvt", timestep_fs=1.0, temperature_K=300.0)
    n_dof = atoms.get_number_of_degrees_of_freedom()
    assert n_dof == 3 * len(FREE)
    assert 3 * dyn._thermostat._num_atoms_global == pytest.approx(n_dof)
    # without constraints: ASE's own 3N
    free = slab()
    free.set_constraint()
    free.calc = gate()
    assert make_integrator(free, "nvt", 1.0, 300.0)._thermostat._num_atoms_global == len(free)


@pytest.mark.parametrize("ensemble", ["nvt", "nve"])
def test_md_fixed_slab_starts_at_the_target_temperature_over_free_dof(tmp_path, ensemble):
    """Review E21: velocities drawn for all atoms with the held ones zeroed gave 196 K for 300 K."""
    for seed in range(4):
        md = CommitteeMD(slab(), gate(), tmp_path / f"{ensemble}{seed}", ensemble=ensemble,
                         temperature=300.0, seed=seed)
        p = md.atoms.get_momenta()
        assert np.abs(p[FIXED]).max() == 0.0 and np.abs(p[FREE]).max() > 0
        assert md.atoms.get_number_of_degrees_of_freedom() == 3 * len(FREE)
        assert md.atoms.get_temperature() == pytest.approx(300.0, rel=1e-9)
    md.run(0)
    assert read_log(tmp_path / f"{ensemble}3" / "md_log.csv")["temperature_K"][0] == pytest.approx(300.0)
    free = bulk("Cu", cubic=True) * (2, 2, 2)  # without constraints: no drift, at the target too
    md = CommitteeMD(free, gate(), tmp_path / "free", ensemble=ensemble, temperature=300.0)
    assert np.abs(md.atoms.get_momenta().sum(axis=0)).max() < 1e-10
    assert md.atoms.get_temperature() == pytest.approx(300.0, rel=1e-9)
    held = slab()
    held.set_constraint(FixAtoms(indices=range(len(held))))
    with pytest.raises(ConfigError, match="no degree of freedom"):
        CommitteeMD(held, gate(), tmp_path / "held", ensemble=ensemble)


def test_nvt_refuses_constraints_it_cannot_integrate_nve_keeps_them(tmp_path):
    atoms = slab()
    atoms.set_constraint([FixAtoms(indices=FIXED), FixBondLengths([[4, 5]])])
    with pytest.raises(ConfigError, match="'nve'"):
        CommitteeMD(atoms, gate(), tmp_path / "nvt", ensemble="nvt")
    CommitteeMD(atoms, gate(), tmp_path / "nve", ensemble="nve", temperature=300.0,
                write_interval=5).run(10)
    frames = read(tmp_path / "nve" / "md_trajectory.extxyz", index=":")
    assert fixed_shift(frames[-1].positions) < 1e-7  # extxyz writes 8 decimals


# ----------------------------------------------------------------------------- threshold MC
MOVES = {"displace": {"probability": 3, "step": 0.2}}  # cell moves are refused on a constrained slab


def _mc(seed=3):
    return ThresholdMC(slab(), gate(), MOVES, lid_eV=2.0, molecules=np.arange(len(slab())),
                       seed=seed)


def _record_evaluated(mc):
    seen = []
    evaluate = mc.gate.evaluate

    def spy(atoms, *a, **kw):
        seen.append(atoms.positions.copy())
        return evaluate(atoms, *a, **kw)

    mc.gate.evaluate = spy
    return seen


def test_mc_trial_moves_never_move_fixed_atoms():
    mc = _mc()
    seen = _record_evaluated(mc)
    recs = mc.run(40)
    assert len(seen) == 41 and sum(r["accepted"] for r in recs[1:]) > 5
    assert max(fixed_shift(p) for p in seen) == 0.0  # no trial moved the fixed layer
    assert max(free_shift(p) for p in seen) > 0.05  # while the free atoms were moved
    assert fixed_shift(mc.atoms.positions) == 0.0
    assert [type(c).__name__ for c in mc.atoms.constraints] == ["FixAtoms"]


def test_mc_resume_from_state_keeps_constraints_and_chain():
    straight = _mc()
    straight.run(30)
    first = _mc()
    first.run(15)
    state = json.loads(json.dumps(first.state()))
    resumed = ThresholdMC.from_state(state, gate())
    assert [type(c).__name__ for c in resumed.atoms.constraints] == ["FixAtoms"]
    seen = _record_evaluated(resumed)
    resumed.run(30)
    assert max(fixed_shift(p) for p in seen) == 0.0
    np.testing.assert_allclose(resumed.atoms.positions, straight.atoms.positions, atol=1e-12)
    assert resumed.energy == pytest.approx(straight.energy, abs=1e-12)


@pytest.mark.parametrize("move", ["cell_length", "cell_angle", "cell_volume"])
def test_mc_cell_moves_refused_with_constraints_or_vacuum(move):
    """Review E19: a cell move would carry the held atoms with the cell or stretch a slab's vacuum."""
    moves = {**MOVES, move: 1.0}
    with pytest.raises(ConfigError, match=rf"cell moves \['{move}'\].*constraints \['FixAtoms'\]"):
        ThresholdMC(slab(), gate(), moves, lid_eV=2.0, molecules=np.arange(12))
    free = slab()
    free.set_constraint()  # no constraints, but pbc T T F: the c axis is vacuum
    with pytest.raises(ConfigError, match=r"not 3-D periodic.*vacuum"):
        ThresholdMC(free, gate(), moves, lid_eV=2.0, molecules=np.arange(12))
    state = _mc().state()  # a saved state with cell moves on the slab cannot be resumed
    state["moves"].append([move, 0.5, 0.02])
    state["step_bounds"][move] = [0.0, 0.1]
    with pytest.raises(ConfigError, match="saved MC state uses cell moves"):
        ThresholdMC.from_state(state, gate())


def test_mc_default_moves_drop_cell_moves_on_a_slab(caplog):
    from committee_calc.mc.moves import DEFAULT_ATOM_MOVES, DEFAULT_MOVES, parse_moves

    with caplog.at_level("WARNING", logger="committee_calc.mc"):
        mc = ThresholdMC(slab(), gate(), parse_moves(DEFAULT_ATOM_MOVES), lid_eV=2.0,
                         molecules=np.arange(12))
    assert mc.moves.names == ("displace",)
    assert len(caplog.records) == 1 and "dropped from the default move set" in caplog.text
    free = slab()
    free.set_constraint()
    mc = ThresholdMC(free, gate(), parse_moves(DEFAULT_MOVES), lid_eV=2.0, molecules=np.arange(12))
    assert mc.moves.names == ("translate", "rotate")
    bulk_mc = ThresholdMC(bulk("Cu", cubic=True), gate(), parse_moves(DEFAULT_ATOM_MOVES),
                          lid_eV=2.0, molecules=np.arange(4))
    assert "cell_volume" in bulk_mc.moves.names  # a free 3-D crystal keeps its cell moves


def test_mc_moves_pick_only_free_atoms_and_molecules():
    """Review E19: no evaluation is spent on a trial that moves only a held atom."""
    mc = _mc()
    mc.initialise()
    moved, evaluate = [], mc.gate.evaluate

    def spy(atoms, *a, **kw):  # which atoms a trial moves from the current structure
        moved.append(np.flatnonzero(np.abs(atoms.positions - mc.atoms.positions).max(axis=1) > 0))
        return evaluate(atoms, *a, **kw)

    mc.gate.evaluate = spy
    mc.run(60)
    assert len(moved) == 60 and all(len(m) == 1 for m in moved)  # every trial moved one atom ...
    assert set(np.concatenate(moved)) <= set(FREE.tolist())  # ... a free one
    assert np.array_equal(mc.free_atoms, slab().get_tags() != 3)
    # molecules: a molecule holding a fixed atom is never translated or rotated
    h2 = Atoms("H4", [[1, 1, 1], [1.74, 1, 1], [4, 4, 4], [4.74, 4, 4]], cell=[8, 8, 8], pbc=True)
    h2.set_constraint(FixAtoms([0]))
    pairs = ThresholdMC(h2, gate(), {"translate": 1.0, "rotate": 1.0}, lid_eV=2.0)
    assert pairs.free_molecules.tolist() == [False, True]
    seen = _record_evaluated(pairs)
    pairs.run(10)
    assert all(np.array_equal(p[:2], seen[0][:2]) for p in seen)  # molecule 0 never moved
    assert all(not np.allclose(p[2:], seen[0][2:]) for p in seen[1:2])  # molecule 1 did
    everything = slab()
    everything.set_constraint(FixAtoms(indices=range(12)))
    with pytest.raises(ConfigError, match="'displace' has nothing to move"):
        ThresholdMC(everything, gate(), MOVES, lid_eV=2.0, molecules=np.arange(12))


# ----------------------------------------------------------------------------- relaxations
def test_relax_with_baseline_keeps_fixed_layer():
    out = relax_with_baseline(slab(), EMT(), fmax=0.02, max_steps=300, cell=False)
    assert out.info["relax_converged"]
    assert fixed_shift(out.positions) == 0.0
    assert free_shift(out.positions) > 0.005
    assert [type(c).__name__ for c in out.constraints] == ["FixAtoms"]


def test_relax_with_baseline_records_full_forces_and_free_fmax():
    atoms = slab()  # bottom and top layers fixed: the fixed layers keep a force at the minimum
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() != 2))
    out = relax_with_baseline(atoms, EMT(), fmax=0.02, max_steps=300, cell=False)
    f = out.arrays[K.BASELINE_FORCES]
    held = atoms.get_tags() != 2
    assert np.abs(f[held]).max() > 0.1  # the full baseline forces are recorded (not zeroed)
    assert out.info["relax_converged"] and out.info["relax_fmax"] < 0.02  # judged on free atoms
    assert np.abs(out.positions[held] - atoms.positions[held]).max() == 0.0


def test_qha_relaxed_and_scaled_structures_keep_constraints_phonons_warn():
    pytest.importorskip("phonopy")
    from committee_calc.phonons.harmonic import run_phonons
    from committee_calc.phonons.settings import PhononSettings, PhononWarning
    from committee_calc.phonons.volumes import relax_structure, scaled_structures

    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=2)
    cu.set_constraint(FixAtoms([0]))
    relaxed = relax_structure(cu, gate(), "internal", fmax_eVA=0.01, steps=200)
    assert np.abs(relaxed.positions[0] - cu.positions[0]).max() == 0.0
    assert np.abs(relaxed.positions[1:] - cu.positions[1:]).max() > 0.01
    assert [type(c).__name__ for c in relaxed.constraints] == ["FixAtoms"]
    assert all(s.constraints for s in scaled_structures(cu, linear_scales=[0.99, 1.01]))
    with pytest.warns(PhononWarning, match="constraints.*full structure"):
        run_phonons(cu, gate(), PhononSettings(supercell_matrix=2, mesh=(4, 4, 4)))
