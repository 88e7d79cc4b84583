"""Perturbed-EMT committee members for the relax tests (importable as ``test_relax_members``).

``PerturbedEMT(eps)``: EMT plus ``eps · Σ_pairs exp(-((r - r0)/w)²)``, an analytic
pair term whose strength differs per member, so the committee spread grows
where atoms come close (far from EMT minima) and the mean is biased by
``mean(eps)``.  Forces and stress are analytic; a test checks them against
finite differences.
"""
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

#: member strengths (eV): mean 0.0125 eV -> a small bias, spread ~0.03 eV
MEMBER_EPS = (0.045, -0.02, 0.03, -0.005)


class PerturbedEMT(Calculator):
    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, eps=0.02, r0=2.0, width=0.25, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.r0, self.width = float(eps), float(r0), float(width)
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.emt
        e = a.get_potential_energy()
        f = a.get_forces().copy()
        periodic = a.cell.rank == 3 and all(a.pbc)
        s = a.get_stress(voigt=False).copy() if periodic else np.zeros((3, 3))
        rc = self.r0 + 5 * self.width
        i, j, d, D = neighbor_list("ijdD", a, rc)
        x = (d - self.r0) / self.width
        g = np.exp(-x * x)
        dg = -2 * x / self.width * g
        e += 0.5 * self.eps * g.sum()
        pair = (0.5 * self.eps * dg / d)[:, None] * D      # dE/dD_k
        np.add.at(f, i, pair)
        np.add.at(f, j, -pair)
        if periodic:
            s += np.einsum("ka,kb->ab", pair, D) / a.get_volume()
        self.results = {"energy": e, "free_energy": e, "forces": f,
                        "stress": s.flat[[0, 4, 8, 5, 2, 1]] if periodic else np.zeros(6)}


def perturbed_members():
    return [PerturbedEMT(eps) for eps in MEMBER_EPS]


def test_perturbed_emt_forces_and_stress_are_gradients():
    atoms = bulk("Cu", "fcc", 3.6, cubic=True)
    atoms.rattle(0.15, seed=1)
    atoms.calc = PerturbedEMT(0.05)
    f = atoms.get_forces()
    s = atoms.get_stress()
    h = 1e-5
    for (k, c) in [(0, 0), (2, 1), (3, 2)]:
        p, m = atoms.copy(), atoms.copy()
        p.calc, m.calc = PerturbedEMT(0.05), PerturbedEMT(0.05)
        p.positions[k, c] += h
        m.positions[k, c] -= h
        num = -(p.get_potential_energy() - m.get_potential_energy()) / (2 * h)
        assert num == pytest.approx(f[k, c], abs=1e-5)
    for voigt, (a, b) in [(0, (0, 0)), (5, (0, 1))]:
        def energy(strain):
            eps = np.eye(3)
            eps[a, b] += strain
            q = atoms.copy()
            q.calc = PerturbedEMT(0.05)
            q.set_cell(atoms.cell[:] @ eps, scale_atoms=True)
            return q.get_potential_energy()
        num = (energy(h) - energy(-h)) / (2 * h) / atoms.get_volume()
        assert num == pytest.approx(s[voigt], abs=1e-5)


class SlowEMT(EMT):
    """EMT that sleeps ``delay_s`` per calculation (a stand-in for an expensive reference)."""

    def __init__(self, delay_s=0.05, **kwargs):
        super().__init__(**kwargs)
        self.delay_s = float(delay_s)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import time

        time.sleep(self.delay_s)
        super().calculate(atoms, properties, system_changes)


class FailingEMT(EMT):
    """A reference that fails on every call (stands in for a DFT code that never converges)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("SCF did not converge")


class Harmonic(Calculator):
    """E = k/2 Σ_i |r_i - (R_i + shift)|² (no cell, no stress): a constructed member."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, centres, shift, k=1.0, **kwargs):
        super().__init__(**kwargs)
        self.centres = np.asarray(centres, float) + np.asarray(shift, float)
        self.k = float(k)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.centres
        e = 0.5 * self.k * float((d * d).sum())
        self.results = {"energy": e, "free_energy": e, "forces": -self.k * d}


def cu_pool(n=10):
    """n rattled fcc Cu cells (4 atoms, lattice 3.56-3.70 Å, fixed cell)."""
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", 3.56 + 0.014 * k, cubic=True)
        a.rattle(0.05 + 0.006 * k, seed=k)
        a.info["candidate_id"] = f"cu{k:02d}"
        out.append(a)
    return out


def write_inputs(tmp_path, n=10, slow_reference_s=None, species=None):
    """candidates.extxyz, committee.yaml (perturbed EMT) and reference.yaml (EMT) in tmp_path."""
    import yaml
    from ase.io import write

    write(tmp_path / "candidates.extxyz", cu_pool(n), format="extxyz")
    members = [{"backend": "ase", "calculator": "test_relax_members.PerturbedEMT",
                "parameters": {"eps": e}} for e in MEMBER_EPS]
    if species:
        for m in members:
            m["species"] = species
    (tmp_path / "committee.yaml").write_text(yaml.safe_dump({"members": members}))
    ref = ({"calculator": "test_relax_members.SlowEMT", "parameters": {"delay_s": slow_reference_s}}
           if slow_reference_s else {"calculator": "ase.calculators.emt.EMT"})
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump(ref))
    return tmp_path
