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
