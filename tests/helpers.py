"""Small, real test committees built from ASE's EMT (no models needed)."""
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import LinearCombinationCalculator


class CountingEMT(EMT):
    """EMT that counts how often it actually computes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ncalc = 0

    def calculate(self, *a, **kw):
        self.ncalc += 1
        super().calculate(*a, **kw)


def emt_members(n=3, spread=0.03):
    """n EMT-like members that disagree smoothly: w·EMT + small LJ term."""
    out = []
    for i in range(n):
        w = 1.0 + spread * (i - (n - 1) / 2)
        lj = LennardJones(sigma=2.3, epsilon=0.01 * (i + 1), rc=5.0, smooth=True)
        out.append(LinearCombinationCalculator([EMT(), lj], [w, 1.0]))
    return out


def cu_cell(rattle=0.05, seed=1, size=(2, 2, 2)):
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True) * size
    atoms.rattle(rattle, seed=seed)
    return atoms


def member_stack(members, atoms, prop):
    vals = []
    for calc in members:
        a = atoms.copy()
        a.calc = calc
        vals.append(np.asarray(a.calc.get_property(prop, a)))
    return np.array(vals)


def rattled_cu_cells(n, seed, strain, rattle):
    """``n`` cubic fcc Cu cells (4 atoms), lattice 3.61 Å × (1 ± ``strain``), rattled by
    ``rattle`` Å; reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", 3.61 * (1 + rng.uniform(-strain, strain)), cubic=True)
        a.rattle(rattle, seed=seed * 100 + i)
        out.append(a)
    return out


def emt_labelled(frames, stress=False):
    """``frames`` with EMT reference labels REF_energy, REF_forces (and REF_stress), in place."""
    for a in frames:
        a.calc = EMT()
        a.info["REF_energy"], a.arrays["REF_forces"] = a.get_potential_energy(), a.get_forces()
        if stress:
            a.info["REF_stress"] = a.get_stress()
        a.calc = None
    return frames
