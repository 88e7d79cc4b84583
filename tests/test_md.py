"""Committee MD library: schedules, units, conservation, NPT behaviour, resume, safety, bad input."""
import json

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.mixing import LinearCombinationCalculator

from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import CommitteeError, ConfigError
from committee_calc.gate import Gate
from committee_calc.md.dynamics import CSV_COLUMNS, CommitteeMD, read_log
from committee_calc.md.schedule import TemperatureSchedule, make_integrator
from committee_calc.members.ase_member import ASEMember


def emt_committee(cutoff=None):
    """EMT plus a 3 %-scaled EMT: a conservative mean and a real, smooth spread."""
    return CommitteeCalculator([ASEMember(EMT(), cutoff=cutoff),
                                ASEMember(LinearCombinationCalculator([EMT()], [1.03]), cutoff=cutoff)])


def emt_gate(cutoff=None):
    """The committee-only evaluator MD takes."""
    return Gate(emt_committee(cutoff))


def cu(n=(1, 1, 2)):
    return bulk("Cu", cubic=True).repeat(n)


def test_schedules():
    assert TemperatureSchedule([300]).is_constant and TemperatureSchedule([300])(1234) == 300
    ramp = TemperatureSchedule.parse("100:400", n_steps=300)
    assert [ramp(s) for s in (0, 150, 300, 999)] == [100, 250, 400, 400]
    hold = TemperatureSchedule.parse("100,200,300,400", n_steps=400, mode="hold")
    assert [hold(s) for s in (0, 99, 100, 250, 399, 400)] == [100, 100, 200, 300, 400, 400]
    interp = TemperatureSchedule([100, 200, 400], n_steps=100, mode="ramp")
    assert interp(25) == pytest.approx(150) and interp(75) == pytest.approx(300)
    for bad in ("0", "-5", "100:abc"):
        with pytest.raises(ConfigError):
            TemperatureSchedule.parse(bad, 10)


def test_pressure_converted_from_GPa():
    atoms = cu()
    atoms.calc = emt_committee()
    dyn = make_integrator(atoms, "mtk_iso", 1.0, 300.0, pressure_GPa=2.5)
    assert dyn._pressure_au == pytest.approx(2.5 * units.GPa)  # eV/Å³
    assert dyn._pressure_au == pytest.approx(2.5 / 160.21766208)
    lang = make_integrator(atoms, "langevin", 1.0, 300.0, pressure_GPa=2.5)
    assert lang.externalstress == pytest.approx(-2.5 * units.GPa)  # ASE stress sign convention
    ber = make_integrator(atoms, "berendsen", 1.0, 300.0, pressure_GPa=-1.0)
    assert ber.pressure == pytest.approx(-1.0 * units.GPa)


def test_csv_pressure_in_GPa(tmp_path):
    atoms = cu()
    atoms.rattle(0.02, seed=3)
    md = CommitteeMD(atoms, emt_gate(), tmp_path, ensemble="mtk_iso", init_velocities=False)
    res = md.run(0)
    row = read_log(res.log)
    ref = atoms.copy()
    ref.calc = emt_committee()
    p_gpa = -np.trace(ref.get_stress(voigt=False)) / 3 / units.GPa
    assert row["pressure_GPa"][0] == pytest.approx(p_gpa, rel=1e-10)
    assert list(read_log(res.log)) == list(CSV_COLUMNS)


def test_temperature_ramp_drives_thermostat(tmp_path):
    sched = TemperatureSchedule([100, 500], n_steps=160)
    md = CommitteeMD(cu((2, 2, 2)), emt_gate(), tmp_path, ensemble="nvt", timestep_fs=2.0,
                     temperature=sched, tdamp_fs=20.0, write_interval=40)
    res = md.run(160)
    log = read_log(res.log)
    assert np.allclose(log["temperature_target_K"], [sched(int(s)) for s in log["step"]])
    state = json.loads((tmp_path / "md_state.json").read_text())
    assert state["integrator"]["thermostat"]["_kT"] == pytest.approx(units.kB * 500.0)
    t = log["temperature_K"]
    assert t[-40:].mean() > t[:40].mean() + 100  # the instantaneous T follows the ramp up
    assert t[-40:].mean() == pytest.approx(log["temperature_target_K"][-40:].mean(), rel=0.3)


def test_nve_energy_conservation(tmp_path):
    md = CommitteeMD(cu((2, 2, 1)), emt_gate(), tmp_path, ensemble="nve", timestep_fs=1.0,
                     temperature=300.0, write_interval=50)
    res = md.run(200)
    log = read_log(res.log)
    e = log["conserved_energy_eV"] / 16
    assert np.all(np.isfinite(e)) and log["temperature_K"].max() > 50
    assert np.abs(e - e[0]).max() < 2e-4  # eV/atom over 200 fs at 1 fs
    drift = np.polyfit(log["time_fs"], e, 1)[0] * 1000  # eV/atom/ps
    assert abs(drift) < 5e-4


def test_npt_short_run_holds_set_points(tmp_path):
    md = CommitteeMD(cu((2, 2, 2)), emt_gate(), tmp_path, ensemble="mtk_iso", timestep_fs=2.0,
                     temperature=300.0, pressure_GPa=0.0, tdamp_fs=40.0, pdamp_fs=200.0,
                     write_interval=100)
    res = md.run(300)
    log = read_log(res.log)
    h = log["step"] > 100
    assert not res.stopped and res.n_frames == 4
    assert log["temperature_K"][h].mean() == pytest.approx(300, rel=0.2)
    assert abs(log["pressure_GPa"][h].mean()) < 0.8
    assert np.ptp(log["volume_A3"]) > 0.5  # the barostat moves the cell


@pytest.mark.parametrize("ensemble", ["mtk_iso", "mtk", "langevin", "nve"])
def test_resume_after_kill_matches_uninterrupted(tmp_path, ensemble):
    kw = dict(ensemble=ensemble, timestep_fs=2.0, temperature=TemperatureSchedule([300, 500], 40),
              write_interval=10)
    a, b = tmp_path / "a", tmp_path / "b"
    CommitteeMD(cu(), emt_gate(), a, **kw).run(40)
    killed = CommitteeMD(cu(), emt_gate(), b, **kw).run(40, stop_after=17)  # "kill" at step 17
    assert killed.last_step == 17
    # rows 11..17 were written after the last checkpoint (step 10): they are dropped and redone
    resumed = CommitteeMD(cu(), emt_gate(), b, **kw).run(40)
    assert resumed.start_step == 10 and resumed.last_step == 40
    sa = json.loads((a / "md_state.json").read_text())
    sb = json.loads((b / "md_state.json").read_text())
    la, lb = read_log(a / "md_log.csv"), read_log(b / "md_log.csv")
    assert list(lb["step"]) == list(range(41))
    if ensemble == "nve":  # EMT's neighbour list history changes round-off only
        assert np.allclose(sa["integrator"]["positions"], sb["integrator"]["positions"], atol=1e-9)
        assert np.allclose(la["energy_eV"], lb["energy_eV"], atol=1e-9)
    else:  # the cell moves every step, so EMT rebuilds its list: bit-identical
        assert sa["integrator"] == sb["integrator"]
        assert (a / "md_log.csv").read_text() == (b / "md_log.csv").read_text()
        assert (a / "md_trajectory.extxyz").read_text() == (b / "md_trajectory.extxyz").read_text()


def test_resume_rejects_other_system_and_settings(tmp_path):
    CommitteeMD(cu(), emt_gate(), tmp_path, write_interval=5).run(5)
    al = bulk("Al", cubic=True).repeat((1, 1, 3))
    with pytest.raises(ConfigError, match="different system"):
        CommitteeMD(al, emt_gate(), tmp_path).run(10)
    with pytest.raises(ConfigError, match="timestep_fs"):
        CommitteeMD(cu(), emt_gate(), tmp_path, timestep_fs=2.0).run(10)
    (tmp_path / "md_state.json").unlink()  # a trajectory alone is still checked
    with pytest.raises(ConfigError, match="different system"):
        CommitteeMD(al, emt_gate(), tmp_path).run(10)


def test_bad_input(tmp_path):
    for kw in ({"temperature": 0.0}, {"temperature": -10.0}, {"timestep_fs": 0.0},
               {"timestep_fs": -1.0}, {"ensemble": "nph"}, {"write_interval": 0},
               {"max_volume_ratio": 0.5}):
        with pytest.raises(CommitteeError):
            CommitteeMD(cu(), emt_gate(), tmp_path, **kw)
    with pytest.raises(ConfigError, match="Gate"):  # one evaluator type: a bare committee is refused
        CommitteeMD(cu(), emt_committee(), tmp_path)
    with pytest.raises(ConfigError, match="supercell"):
        CommitteeMD(bulk("Cu", cubic=True), emt_gate(cutoff=5.0), tmp_path)
    CommitteeMD(bulk("Cu", cubic=True).repeat(2), emt_gate(cutoff=5.0), tmp_path)  # 7.2 Å is fine
    with pytest.raises(ConfigError, match="3-D periodic"):
        CommitteeMD(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]), emt_gate(),
                    tmp_path / "x").run(1)


def test_safety_stops_keep_outputs(tmp_path):
    close = cu()
    close.positions[1] = close.positions[0] + [0.4, 0, 0]
    res = CommitteeMD(close, emt_gate(), tmp_path / "d", min_distance_A=0.6).run(10)
    assert res.stopped and "minimum distance" in res.stop_reason
    assert (tmp_path / "d" / "md_unphysical.extxyz").exists()

    res = CommitteeMD(cu(), emt_gate(), tmp_path / "v", ensemble="mtk_iso", pdamp_fs=20.0,
                      pressure_GPa=-20.0, max_volume_ratio=1.02, write_interval=5).run(400)
    assert res.stopped and "volume" in res.stop_reason
    log = read_log(tmp_path / "v" / "md_log.csv")
    assert log["step"][-1] == res.last_step and res.n_frames >= 1  # everything so far kept

    capped = Gate(emt_committee(), None, hard_cap={"forces_std_max": 1e-3})  # the record-mode gate
    res = CommitteeMD(cu(), capped, tmp_path / "c").run(50)
    assert res.stopped and "hard cap" in res.stop_reason and res.last_step > 0
    assert capped.n_calls == res.last_step + 1 and capped.n_reference_calls == 0
    log = read_log(tmp_path / "c" / "md_log.csv")
    assert np.all(log["forces_std_max_eVA"] <= 1e-3) and log["step"][-1] == res.last_step - 1
    rattled = cu()
    rattled.rattle(0.05, seed=1)  # above the cap at step 0 already: a stop, not an exception
    res = CommitteeMD(rattled, Gate(emt_committee(), None, hard_cap={"forces_std_max": 1e-6}),
                      tmp_path / "c0").run(5)
    assert res.stopped and res.last_step == 0 and "hard cap" in res.stop_reason
    with pytest.raises(TypeError):  # caps live on the gate only
        CommitteeMD(cu(), emt_gate(), tmp_path / "x", hard_cap={"forces_std_max": 1e-3})


def test_user_atoms_untouched(tmp_path):
    atoms = cu()
    before = atoms.positions.copy()
    CommitteeMD(atoms, emt_gate(), tmp_path).run(3)
    assert atoms.calc is None and np.array_equal(atoms.positions, before)


@pytest.mark.slow
def test_npt_ensemble_long_run(tmp_path):
    """Mean T and P within statistical error (block averages) of the set points."""
    T0, P0 = 400.0, 1.0
    md = CommitteeMD(cu((2, 2, 2)), emt_gate(), tmp_path, ensemble="mtk_iso", timestep_fs=2.0,
                     temperature=T0, pressure_GPa=P0, tdamp_fs=50.0, pdamp_fs=300.0, write_interval=500)
    res = md.run(4000)
    log = read_log(res.log)
    keep = log["step"] > 1000
    for col, target in (("temperature_K", T0), ("pressure_GPa", P0)):
        x = log[col][keep]
        blocks = x[: len(x) // 10 * 10].reshape(10, -1).mean(1)
        err = blocks.std(ddof=1) / np.sqrt(len(blocks))
        assert abs(x.mean() - target) < 3 * err + 0.03 * abs(target or 1), (col, x.mean(), err)


def _ridge_online(out, retrain_calls, threshold=0.0012, every=2):
    """An online gate on a ridge committee trained on 4 rattled EMT cells; the retrain
    callback refits on those plus every label in the file it is given."""
    from ase.io import read

    from committee_calc.labels import LabelStore
    from committee_calc.train.ridge import PairRidgeCommittee

    train = []
    for i in range(4):
        a = cu((2, 2, 2))
        a.rattle(0.03, seed=i)
        a.calc = EMT()
        a.get_forces()
        train.append(a)
    energies = [a.get_potential_energy() for a in train]
    forces = [a.get_forces() for a in train]

    def fit(frames, e, f):
        return PairRidgeCommittee(["Cu"], n_members=4, n_basis=6, r_cut=4.5, seed=0).fit(frames, e, f).as_committee()

    def retrain(label_file):
        labels = read(label_file, ":")
        com = fit(train + labels, energies + [f.info["REF_energy"] for f in labels],
                  forces + [f.arrays["REF_forces"] for f in labels])
        retrain_calls.append((len(labels), com))
        return com

    gate = Gate(fit(train, energies, forces), EMT(), thresholds={"forces_std_max": threshold},
                label_store=LabelStore(out / "labels.extxyz", deduplicate=True), retrain=retrain,
                retrain_every=every)
    return CommitteeMD(cu((2, 2, 2)), gate, out, ensemble="nvt", timestep_fs=2.0, temperature=600.0,
                       write_interval=10), gate


@pytest.mark.parametrize("kill_at", [15, 25])
def test_online_retrain_every_swaps_committee_and_resumes(tmp_path, kill_at):
    from committee_calc.labels import LabelStore

    calls_a = []
    md, gate = _ridge_online(tmp_path / "a", calls_a)
    initial = gate.committee
    res = md.run(40)
    assert not res.stopped and res.last_step == 40 and res.n_labels >= 4
    # a retraining after every 2 labels, on the label file as it stood then
    assert gate.n_retrains == res.n_labels // 2 >= 2
    assert [n for n, _ in calls_a] == [2 * (k + 1) for k in range(gate.n_retrains)]
    assert gate.committee is calls_a[-1][1] and gate.committee is not initial
    log = read_log(res.log)
    ref = np.array([d == "reference" for d in log["gate_decision"]])
    assert ref.sum() == res.n_labels and not ref[-5:].any()  # retrained committee is trusted again
    last_label = int(log["step"][ref][-1])
    assert log["forces_std_max_eVA"][log["step"] > last_label].max() <= 0.0012

    calls_b = []
    killed = _ridge_online(tmp_path / "b", calls_b)[0].run(40, stop_after=kill_at)
    assert killed.last_step == kill_at
    saved = json.loads((tmp_path / "b" / "md_state.json").read_text())
    assert saved["step"] <= kill_at and saved["gate"]["n_retrains"] >= 1
    calls_b.clear()
    md_b, gate_b = _ridge_online(tmp_path / "b", calls_b)
    resumed = md_b.run(40)
    assert resumed.start_step == saved["step"] and resumed.last_step == 40
    # resume rebuilt the committee once, on exactly the labels the last retraining saw
    assert calls_b[0][0] == saved["gate"]["retrain_n_labels"]
    assert gate_b.n_retrains == gate.n_retrains
    assert (tmp_path / "a" / "md_log.csv").read_text() == (tmp_path / "b" / "md_log.csv").read_text()
    la, lb = LabelStore(tmp_path / "a" / "labels.extxyz").read(), LabelStore(tmp_path / "b" / "labels.extxyz").read()
    assert [f.info["label_hash"] for f in la] == [f.info["label_hash"] for f in lb]  # none twice
