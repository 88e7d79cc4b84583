"""Gate-boundary stalls, hysteresis, stall status and reference verification of a relaxation.

Constructed committee (two members, three Ar atoms in harmonic wells): the committee mean is
harmonic around ``X + d·x̂`` (a minimum displaced from the reference's ``X``), and the force
spread of atom i is ``s0·exp(β (x_i − X_i))``: it grows along the path from the reference
minimum towards the committee's.  Reference: harmonic around ``X``.
"""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from committee_calc import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.relax.gated import STATUSES, GatedRelaxer
from test_relax_members import Harmonic

X = np.array([[0, 0, 0], [3.0, 0, 0], [0, 3.0, 0.0]])  # reference minima [Å]
D, K_SPRING, THRESHOLD = 0.3, 2.0, 0.1  # committee displacement [Å], eV/Å², forces_std_max [eV/Å]
START = Atoms("Ar3", positions=X + [[-0.5, 0.1, 0], [-0.4, -0.1, 0.05], [-0.6, 0, -0.1]])
#: the behaviour of earlier versions: one mixed surface, no restart, no limit, no stall test
OLD = dict(reentry_factor=1.0, restart_on_switch=False, max_reentries=None, stall_steps=None)


class Biased(Calculator):
    """Harmonic well around X + D x̂ plus ``eps/β Σ_i exp(β (x_i − X_i))`` (the spread term)."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, eps, beta, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.beta = float(eps), float(beta)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        r = self.atoms.positions
        d = r - (X + [D, 0, 0])
        g = np.exp(self.beta * (r[:, 0] - X[:, 0]))
        e = 0.5 * K_SPRING * float((d * d).sum()) + self.eps / self.beta * float(g.sum())
        f = -K_SPRING * d
        f[:, 0] -= self.eps * g
        self.results = {"energy": e, "free_energy": e, "forces": f}


def make_gate(s0, beta, store=None):
    """Force spread s0 (in units of the threshold) at the reference minimum, growing as exp(β x)."""
    eps = THRESHOLD * s0 / np.sqrt(2)  # two members ±eps: sample std (ddof=1) = eps·√2
    return Gate(CommitteeCalculator([Biased(eps, beta), Biased(-eps, beta)]),
                Harmonic(X, [0, 0, 0], k=K_SPRING), thresholds={"forces_std_max": THRESHOLD},
                label_store=store)


def step_lengths(res):
    """Largest atomic displacement [Å] of every optimiser step (frames of new geometries)."""
    frames = {}
    for f in res.trajectory:
        frames.setdefault(f.info["relax_step"], f.positions)
    pos = np.array([frames[k] for k in sorted(frames)])
    return np.linalg.norm(np.diff(pos, axis=0), axis=2).max(axis=1)


# ---------------------------------------------------------------- hysteresis (acceptance)
def test_hysteresis_removes_the_stall_on_the_gate_boundary():
    """Committee minimum where the committee is uncertain (spread 1.55×threshold), reference
    minimum at 0.85×threshold: the boundary is a trap for one mixed surface (committee forces
    push out, reference forces push back), FIRE halves its time step at each crossing."""
    old = GatedRelaxer(make_gate(0.85, 2.0), fmax=0.01, max_steps=300, **OLD).relax(START)
    new = GatedRelaxer(make_gate(0.85, 2.0), fmax=0.01, max_steps=300).relax(START)
    old_steps = step_lengths(old)
    assert old.status == "max_steps" and "fmax" in old.reason and "0.01" in old.reason
    assert np.sum((old_steps[1:] < 1e-6) & (old_steps[:-1] < 1e-6)) > 10  # the stall: repeated tiny steps
    assert new.status == "converged" and new.verified is True
    assert "reference surface" in new.reason
    assert new.n_reference_calls < old.n_reference_calls / 3, (new.n_reference_calls, old.n_reference_calls)
    assert step_lengths(new).min() >= 1e-6  # no tiny step at all, let alone a repeated one
    np.testing.assert_allclose(new.atoms.positions, X, atol=0.01)  # the reference minimum
    assert new.reference_fmax < 0.01 and new.reference_energy == pytest.approx(new.energy)
    assert np.isfinite(new.committee_energy) and new.committee_energy != new.reference_energy
    # the optimiser restarts with each surface: frames record the changes
    assert new.n_switches == new.trajectory[-1].info["relax_switches"] >= 1


def test_stall_ends_the_relaxation_with_a_reason():
    old = GatedRelaxer(make_gate(0.85, 2.0), fmax=0.01, max_steps=300,
                       **dict(OLD, stall_steps=20)).relax(START)
    assert "stalled" in STATUSES and old.status == "stalled"
    assert old.steps < 300 and "no progress" in old.reason and "last 20 steps" in old.reason
    assert "surface changes" in old.reason and old.verified is None
    assert old.atoms.info["relax_status"] == "stalled"
    # a spent step budget says how far from the target it ended
    res = GatedRelaxer(make_gate(0.85, 2.0), fmax=0.01, max_steps=4).relax(START)
    assert res.status == "max_steps" and res.steps == 4
    assert res.reason.startswith("reached max_steps = 4 at fmax ") and ">= 0.01" in res.reason


def test_a_structure_that_keeps_returning_to_the_committee_is_kept_on_the_reference():
    """Committee minimum uncertain (1.2×threshold), reference minimum trusted (0.5×): hysteresis
    alone cycles; after max_reentries returns the next fallback is final."""
    cyc = GatedRelaxer(make_gate(0.5, 3.0), fmax=0.01, max_steps=150, max_reentries=None).relax(START)
    res = GatedRelaxer(make_gate(0.5, 3.0), fmax=0.01, max_steps=150).relax(START)
    assert cyc.status == "max_steps" and cyc.n_switches > 10
    assert res.status == "converged" and res.verified and "kept there after 3 returns" in res.reason
    assert res.trajectory[-1].info["relax_phase"] == "pinned"
    assert res.n_reference_calls < cyc.n_reference_calls
    np.testing.assert_allclose(res.atoms.positions, X, atol=0.01)


# ---------------------------------------------------------------- verification
def test_verification_at_a_displaced_committee_minimum():
    """Committee minimum trusted (0.9×threshold) but 0.3 Å from the reference's: the committee
    converges, the reference disagrees (fmax = k·d = 0.6 eV/Å)."""
    plain = GatedRelaxer(make_gate(0.5, 2.0), fmax=0.01).relax(START)
    assert plain.status == "unverified" and plain.verified is False
    assert "reference disagrees" in plain.reason and "--polish 0" in plain.reason
    assert plain.reference_fmax == pytest.approx(K_SPRING * D, rel=0.05)
    assert plain.decision == "reference" and plain.trajectory[-1].info["relax_phase"] == "verify"
    np.testing.assert_allclose(plain.atoms.positions, X + [D, 0, 0], atol=0.01)  # committee's minimum
    assert plain.trajectory[-1].info["relax_step"] == plain.trajectory[-2].info["relax_step"]
    polished = GatedRelaxer(make_gate(0.5, 2.0), fmax=0.01, polish=60).relax(START)
    assert polished.status == "converged" and polished.verified is True
    assert 0 < polished.n_polish_steps <= 60 and "polish steps" in polished.reason
    assert polished.reference_fmax < 0.01
    np.testing.assert_allclose(polished.atoms.positions, X, atol=0.01)
    assert polished.n_reference_calls == plain.n_reference_calls + polished.n_polish_steps
    # verification switched off, or no reference: converged on the committee surface, not verified
    off = GatedRelaxer(make_gate(0.5, 2.0), fmax=0.01, verify=False).relax(START)
    assert off.status == "converged" and off.verified is None and "not verified" in off.reason
    assert off.n_reference_calls == plain.n_reference_calls - 1 and np.isnan(off.reference_energy)
    gate = Gate(make_gate(0.5, 2.0).committee)
    alone = GatedRelaxer(gate, fmax=0.01).relax(START)
    assert alone.status == "converged" and alone.verified is None and alone.n_reference_calls == 0


def test_new_settings_are_validated():
    with pytest.raises(ConfigError, match="reference"):
        GatedRelaxer(Gate(make_gate(0.5, 2.0).committee), verify=True)
    for bad in ({"reentry_factor": 1.5}, {"reentry_factor": 0}, {"polish": -1}, {"stall_steps": 2.5},
                {"max_reentries": -1}, {"stress_tol_GPa": 0}):
        with pytest.raises(ConfigError):
            GatedRelaxer(make_gate(0.5, 2.0), **bad)


# ---------------------------------------------------------------- pool resume mid-verification
def _pool(tmp_path, name, store):
    from committee_calc.relax.pool import RelaxPool

    gate = make_gate(0.5, 2.0, store=store)
    return RelaxPool(GatedRelaxer(gate, fmax=0.01, polish=60), tmp_path / name, progress=False)


def _candidates():
    a = START.copy()
    b = Atoms("Ar3", positions=X + [[-0.3, 0.2, 0], [-0.5, 0, 0.1], [-0.4, 0.1, 0]])
    return [a, b]


@pytest.mark.parametrize("kill", ["after_verify_frame", "before_verify_frame"])
def test_pool_killed_during_verification_resumes_to_the_same_result(tmp_path, monkeypatch, kill):
    """A kill right after the verification frame was saved (or after its label, before the
    frame) resumes in the verification phase: same statuses, geometries and labels, none twice."""
    import committee_calc.relax.pool as pool_mod
    from committee_calc.labels import LabelStore

    ref_store = LabelStore(tmp_path / "ref_labels.extxyz")
    ref_rows = _pool(tmp_path, "ref", ref_store).run(_candidates())
    assert [r["status"] for r in ref_rows] == ["converged", "converged"]
    assert {r["verified"] for r in ref_rows} == {"yes"}

    real, killed = pool_mod.append_frame, []

    def append(path, frame):
        hit = frame.info.get("relax_phase") == "verify" and not killed
        if hit and kill == "before_verify_frame":
            killed.append(path)
            raise KeyboardInterrupt
        real(path, frame)
        if hit:
            killed.append(path)
            raise KeyboardInterrupt

    monkeypatch.setattr(pool_mod, "append_frame", append)
    store = LabelStore(tmp_path / "labels.extxyz")
    with pytest.raises(KeyboardInterrupt):
        _pool(tmp_path, "run", store).run(_candidates())
    assert killed and not (tmp_path / "run" / "summary.csv").read_text().count("\n") > 1
    rows = _pool(tmp_path, "run", LabelStore(tmp_path / "labels.extxyz")).run(_candidates())
    for r, q in zip(rows, ref_rows):
        assert (r["status"], r["verified"], r["steps"]) == (q["status"], q["verified"], q["steps"])
        assert float(r["reference_energy_eV"]) == pytest.approx(float(q["reference_energy_eV"]), abs=1e-8)
        assert float(r["reference_fmax_eVA"]) < 0.01
        if kill == "after_verify_frame":
            assert r["reference_calls"] == q["reference_calls"]
    labels = LabelStore(tmp_path / "labels.extxyz").read()
    hashes = [a.info["label_hash"] for a in labels]
    assert len(hashes) == len(set(hashes)) == len(ref_store.read())
    reasons = [a.info.get("prov_reason") for a in labels]  # labelled through the gate's labeller
    assert reasons.count("verify") == 2 and "polish" in reasons
    traj = pool_mod.read_frames_repair(tmp_path / "run" / "trajectories" / "c0000.extxyz")
    assert [f.info["relax_phase"] for f in traj].count("verify") == 1


def test_driver_options_reach_the_relaxer(tmp_path):
    from drivers.relax import build_parser, make_relaxer
    from test_relax_members import perturbed_members, write_inputs

    write_inputs(tmp_path, n=1)
    base = [str(tmp_path / "candidates.extxyz"), "--committee", str(tmp_path / "committee.yaml"),
            "--out", str(tmp_path / "out")]
    gated = base + ["--reference", str(tmp_path / "reference.yaml"),
                    "--threshold-forces-std-max-eVA", "0.2"]
    committee = CommitteeCalculator(perturbed_members())
    r = make_relaxer(build_parser().parse_args(gated), committee)
    assert (r.verify, r.polish, r.reentry_factor, r.max_reentries, r.stall_steps, r.stress_tol_GPa,
            r.restart_on_switch) == (True, 0, 0.7, 3, 20, 0.1, True)
    r = make_relaxer(build_parser().parse_args(gated + [
        "--no-verify", "--polish", "7", "--reentry-factor", "0.5", "--max-reentries", "-1",
        "--stall-steps", "0", "--stress-tol-GPa", "0.05"]), committee)
    assert (r.verify, r.polish, r.reentry_factor, r.max_reentries, r.stall_steps,
            r.stress_tol_GPa) == (False, 7, 0.5, None, None, 0.05)
    # committee only (no reference): nothing to verify with
    r = make_relaxer(build_parser().parse_args(base + ["--policy", "stop", "--u-max", "0.3"]), committee)
    assert r.verify is False and r.gate.reference is None
    assert r.settings()["verify"] is False and r.settings()["reentry_factor"] == 0.7
