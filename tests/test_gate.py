"""Uncertainty gate: gated Langevin MD against an independent recomputation, logic, caps, units."""
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import SumCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from committee_calc import CommitteeCalculator
from committee_calc.errors import ConfigError, GateStop, UnitError
from committee_calc.gate import Gate, GateResult
from committee_calc.labels import LabelStore
from committee_calc.measures import parse_limits
from committee_calc.units import KJMOL


def _poor_member(i):
    """EMT plus a member-specific Lennard-Jones perturbation: a deliberately poor committee."""
    lj = LennardJones(sigma=2.2 + 0.06 * i, epsilon=0.01 * (1 + i), rc=4.5, smooth=True)
    return SumCalculator([EMT(), lj])


def _poor_members():
    return [_poor_member(i) for i in range(3)]


class Const(Calculator):
    """Energy ``e`` [eV], zero forces and stress: members with a chosen energy spread."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, e, **kw):
        super().__init__(**kw)
        self.e = e

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": self.e, "free_energy": self.e, "forces": np.zeros((n, 3)),
                        "stress": np.zeros(6)}


def _independent_forces_std_max(atoms):
    fm = []
    for c in _poor_members():
        a = atoms.copy()
        a.calc = c
        fm.append(a.get_forces())
    std = np.std(np.array(fm), axis=0, ddof=1)
    return float(np.max(np.sqrt((std ** 2).sum(axis=1))))


def test_gated_langevin_md_labels_exactly_the_uncertain_steps(tmp_path):
    atoms = bulk("Cu", cubic=True).repeat((2, 2, 1))
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    threshold = 0.18  # eV/Å, about the median, inside the spread range seen along this trajectory
    gate = Gate(CommitteeCalculator(_poor_members()), EMT(),
                thresholds={"forces_std_max": threshold}, label_store=tmp_path / "labels.extxyz",
                provenance={"driver": "md-test"})
    atoms.calc = gate
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=600, friction=0.02,
                   rng=np.random.default_rng(1))
    log = []

    def record():
        log.append((atoms.copy(), gate.results["gate_decision"],
                    gate.results["gate_measures"]["forces_std_max"], atoms.get_potential_energy()))

    dyn.attach(record, interval=1)
    dyn.run(200)
    assert atoms.calc is gate  # the user's calculator is never replaced
    assert len(log) == gate.n_calls == gate.n_committee_calls == 201
    decisions = [d for _, d, _, _ in log]
    n_ref = decisions.count("reference")
    assert 10 < n_ref < 191, "threshold should split the trajectory"
    for a, decision, measure, _ in log:
        indep = _independent_forces_std_max(a)
        assert measure == pytest.approx(indep, rel=1e-9, abs=1e-12)
        assert decision == ("reference" if indep > threshold else "committee")
    assert gate.n_reference_calls == gate.n_labels == n_ref
    assert gate.n_trusted == 201 - n_ref
    frames = LabelStore(tmp_path / "labels.extxyz").read()
    expected = [(a, e) for a, d, _, e in log if d == "reference"]
    assert len(frames) == n_ref
    for f, (a, e) in zip(frames, expected):
        np.testing.assert_allclose(f.positions, a.positions, atol=1e-7)
        ref = a.copy()
        ref.calc = EMT()
        assert f.info["REF_energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-10)
        assert f.info["REF_energy"] == pytest.approx(e, abs=1e-10)  # the driver saw EMT
        np.testing.assert_allclose(f.arrays["REF_forces"], ref.get_forces(), atol=1e-7)
        assert f.info["committee_forces_std_max"] > threshold
        assert f.info["prov_driver"] == "md-test"
    for a, d, _, e in log:
        if d == "committee":
            c = a.copy()
            c.calc = CommitteeCalculator(_poor_members())
            assert e == pytest.approx(c.get_potential_energy(), abs=1e-10)


def _h2_box():
    pos = [[0, 0, 0], [0, 0, 0.74]]
    atoms = Atoms("H2" * 4, positions=[np.add(p, s) for s in
                                       ([1, 1, 1], [5, 1, 1], [1, 5, 1], [1, 1, 5]) for p in pos],
                  cell=[9, 9, 9], pbc=True)
    return atoms


def _spread_committee(std):
    # two members at ±d: sample std (ddof=1) = d·√2
    d = std / np.sqrt(2)
    return CommitteeCalculator([Const(-d), Const(d)])


def test_kjmol_per_molecule_threshold_on_four_molecule_cell():
    th = parse_limits(energy_std_per_molecule_kjmol=2.0)
    assert th["energy_std_per_molecule"] == pytest.approx(0.0207285, rel=1e-5)  # documented value
    assert th["energy_std_per_molecule"] == pytest.approx(2.0 * KJMOL)
    atoms = _h2_box()
    total = 4 * th["energy_std_per_molecule"]  # 0.0829 eV on 4 molecules
    for mol in (4, "auto"):
        below = Gate(_spread_committee(0.99 * total), EMT(), thresholds=th, molecules=mol).evaluate(atoms)
        above = Gate(_spread_committee(1.01 * total), EMT(), thresholds=th, molecules=mol).evaluate(atoms)
        assert below.decision == "committee" and above.decision == "reference"
        assert below.measures["energy_std_per_molecule"] == pytest.approx(0.99 * total / 4)
    # string form with a unit gives the same value
    assert parse_limits({"energy_std_per_molecule": "2 kJ/mol"})["energy_std_per_molecule"] == \
        pytest.approx(2.0 * KJMOL)
    assert parse_limits({"energy_std_per_atom": "5 meV/atom"})["energy_std_per_atom"] == pytest.approx(0.005)
    # keyword, YAML-style mapping and CLI spelling are one parser
    assert parse_limits({"forces_std_max_eVA": 0.3}) == parse_limits(forces_std_max="300 meV/A")


def test_invalid_units_and_thresholds():
    with pytest.raises(UnitError):
        parse_limits(energy_std_per_atom_furlong=1.0)
    with pytest.raises(UnitError):
        parse_limits(energy_std_per_molecule_kjmol=-2.0)
    with pytest.raises(UnitError):
        parse_limits(forces_std_max_kjmol=0.1)
    with pytest.raises(UnitError):
        parse_limits(energy_std="2 parsecs")
    with pytest.raises(ConfigError, match="given twice"):
        parse_limits(forces_std_max_eVA=0.1, forces_std_max_meVA=100)
    com = _spread_committee(0.1)
    with pytest.raises(UnitError):
        Gate(com, EMT(), thresholds={"energy_std": -0.1})
    with pytest.raises(UnitError):
        Gate(com, EMT(), thresholds={"energy_std": float("nan")})
    with pytest.raises(ConfigError, match="unknown uncertainty measure"):
        Gate(com, EMT(), thresholds={"energy_sd": 0.1})
    with pytest.raises(ConfigError, match="molecule count"):
        Gate(com, EMT(), thresholds={"energy_std_per_molecule": 0.01})
    with pytest.raises(ConfigError):
        Gate(com, EMT(), thresholds={"energy_std": 0.1}, logic="most")
    with pytest.raises(ConfigError, match="hard cap"):
        Gate(com, EMT(), thresholds={"energy_std": 0.1}, hard_cap={"energy_std": 0.05})


def test_logic_any_all_and_hard_cap(tmp_path):
    atoms = _h2_box()
    com = _spread_committee(0.1)  # energy_std 0.1 eV, forces_std_max 0
    th = {"energy_std": 0.05, "forces_std_max": 0.01}
    assert Gate(com, EMT(), thresholds=th, logic="any").evaluate(atoms).decision == "reference"
    r = Gate(com, EMT(), thresholds=th, logic="all").evaluate(atoms)
    assert isinstance(r, GateResult) and r.decision == "committee" and r.label_index is None
    store = LabelStore(tmp_path / "l.extxyz")
    gate = Gate(com, EMT(), thresholds={"energy_std": 0.05}, hard_cap={"energy_std": 0.08},
                label_store=store)
    with pytest.raises(GateStop, match="hard cap"):
        gate.evaluate(atoms)
    assert len(store) == 0 and gate.n_reference_calls == 0


class NaNCalc(Const):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = float("nan")


def test_nonfinite_committee_always_falls_back(tmp_path):
    atoms = _h2_box()
    store = LabelStore(tmp_path / "l.extxyz")
    for members in ([NaNCalc(0.0), NaNCalc(0.0)], [Const(0.0), Const(0.0), NaNCalc(0.0)]):
        gate = Gate(CommitteeCalculator(members), EMT(), thresholds={"energy_std": 1e3},
                    hard_cap={"energy_std": 1e4}, label_store=store)
        atoms.calc = gate
        e = atoms.get_potential_energy()
        ref = atoms.copy()
        ref.calc = EMT()
        assert e == pytest.approx(ref.get_potential_energy())
        assert gate.results["gate_decision"] == "reference"
        assert "non-finite" in gate.results["gate_reason"]
    # the second gate meets the same structure: the labeller reuses the stored label
    # (same geometry, same reference settings) instead of paying for it again
    assert len(store) == 1
    assert gate.n_reference_calls == 0 and gate.labeller.n_duplicates == 1


def test_retrain_every_k_labels_swaps_committee(tmp_path):
    atoms = bulk("Cu", cubic=True)
    calls = []

    def retrain(label_file):
        calls.append((label_file, len(LabelStore(label_file))))
        return CommitteeCalculator([EMT(), EMT()])  # a "perfect" committee: zero spread

    gate = Gate(CommitteeCalculator(_poor_members()), EMT(), thresholds={"forces_std_max": 1e-4},
                label_store=tmp_path / "l.extxyz", retrain=retrain, retrain_every=3)
    rng = np.random.default_rng(0)
    decisions = []
    for _ in range(6):
        a = atoms.copy()
        a.rattle(0.05, rng=rng)
        decisions.append(gate.evaluate(a).decision)
    assert decisions == ["reference"] * 3 + ["committee"] * 3
    assert calls == [(str(tmp_path / "l.extxyz"), 3)] and gate.n_retrains == 1
    with pytest.raises(ConfigError):
        Gate(gate.committee, EMT(), thresholds={"energy_std": 1}, retrain=retrain)


def test_failing_retrain_warns_and_keeps_committee(tmp_path):
    def broken(label_file):
        raise RuntimeError("no GPU")

    com = _spread_committee(1.0)
    gate = Gate(com, EMT(), thresholds={"energy_std": 0.1}, label_store=tmp_path / "l.extxyz",
                retrain=broken, retrain_every=1)
    with pytest.warns(RuntimeWarning, match="retraining failed"):
        gate.evaluate(_h2_box())
    assert gate.committee is com and gate.n_labels == 1


def test_gate_without_thresholds_is_committee_only_with_cap():
    atoms = _h2_box()
    gate = Gate(_spread_committee(0.1), None, hard_cap={"energy_std": 0.5})
    atoms.calc = gate
    atoms.get_potential_energy()
    assert gate.results["gate_decision"] == "committee" and gate.n_reference_calls == 0
    with pytest.raises(GateStop):
        Gate(_spread_committee(1.0), None, hard_cap={"energy_std": 0.5}).evaluate(atoms)
    with pytest.raises(ConfigError, match="reference"):
        Gate(_spread_committee(0.1), None, thresholds={"energy_std": 0.5})
    from committee_calc.errors import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError):
        Gate(CommitteeCalculator([NaNCalc(0.0), NaNCalc(0.0)]), None).evaluate(atoms)


def test_threshold_scale_is_the_hysteresis_reentry_factor():
    """decide(threshold_scale=f) compares with threshold·f (caps unscaled): a structure on the
    reference returns to the committee only below the re-entry threshold."""
    from committee_calc.measures import decide

    th, caps = {"forces_std_max": 0.3}, {"forces_std_max": 1.0}
    m = {"forces_std_max": 0.25}
    assert decide(m, th, caps).trusted
    assert not decide(m, th, caps, threshold_scale=0.7).trusted      # 0.25 > 0.21
    assert decide({"forces_std_max": 0.2}, th, caps, threshold_scale=0.7).trusted
    assert decide({"forces_std_max": 1.1}, th, caps, threshold_scale=2.0).stop  # caps not scaled
    atoms = _h2_box()
    gate = Gate(_spread_committee(0.01), EMT(), thresholds={"energy_std": 0.012})
    assert gate.evaluate(atoms).decision == "committee"
    assert gate.evaluate(atoms, threshold_scale=0.7).decision == "reference"


def test_limit_text_must_match_the_measure():
    """A unit qualifier that contradicts the measure, or a boolean, is refused; numbers glued to
    their unit parse."""
    assert parse_limits({"forces_std_max": "0.3eV/A"}) == {"forces_std_max": pytest.approx(0.3)}
    assert parse_limits(energy_std="5meV") == {"energy_std": pytest.approx(0.005)}
    for bad in ({"energy_std_per_molecule": "5 meV/atom"}, {"energy_std": "0.01 eV per atom"},
                {"energy_std_per_atom": "2 kJ/mol per molecule"}, {"forces_std_max_eVA": True}):
        with pytest.raises(UnitError):
            parse_limits(bad)
