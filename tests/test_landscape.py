"""Landscape helpers: baseline relaxation and deduplication of minima."""
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from committee_calc.active.baseline import relax_with_baseline
from committee_calc.analysis.landscape import deduplicate_minima
from committee_calc.errors import ConfigError


def test_relax_with_baseline_records_baseline_at_minimum():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.05, seed=2)
    before = atoms.copy()
    out = relax_with_baseline(atoms, EMT(), fmax=0.01, max_steps=300)
    assert atoms == before and atoms.calc is None  # the input is untouched
    assert out.calc is None and out.info["relax_converged"]
    ref = out.copy()
    ref.calc = EMT()
    assert out.info["baseline_energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(out.arrays["baseline_forces"], ref.get_forces(), atol=1e-10)
    assert np.abs(ref.get_forces()).max() <= 0.01
    assert out.get_volume() / len(out) == pytest.approx(3.59 ** 3 / 4, rel=0.02)  # EMT Cu a≈3.59 Å
    with pytest.raises(ConfigError, match="fmax"):
        relax_with_baseline(atoms, EMT(), fmax=0)
    with pytest.raises(ConfigError, match="optimizer"):
        relax_with_baseline(atoms, EMT(), optimizer="Nope")
    # one relaxation implementation (GatedRelaxer): its optimisers only
    with pytest.raises(ConfigError, match="optimizer"):
        relax_with_baseline(atoms, EMT(), optimizer="MDMin")
    lb = relax_with_baseline(atoms, EMT(), fmax=0.01, max_steps=300, optimizer="lbfgs", cell=False)
    assert lb.info["relax_converged"] and np.allclose(lb.cell, atoms.cell)


def test_deduplicate_minima_keeps_lowest_and_maps_duplicates():
    X = np.array([[1.0, 0.0], [1.0, 0.0005], [0.0, 1.0], [1.0, 0.0]])
    e = np.array([-1.0, -1.0004, -0.5, -0.2])
    kept, dup = deduplicate_minima(e, X, energy_tol_eV=1e-3, descriptor_tol=1e-2)
    assert kept == [1, 2, 3]  # 0 duplicates 1 (same energy and descriptor); 3 differs in energy
    assert dup == {0: 1}
    rho = np.array([1.0, 1.5, 1.0, 1.0])
    kept, dup = deduplicate_minima(e, X, densities=rho)
    assert kept == [1, 0, 2, 3] and dup == {}  # different density: not a duplicate
    with pytest.raises(ConfigError, match="descriptor row"):
        deduplicate_minima(e, X[:2])
    with pytest.raises(ConfigError, match="finite"):
        deduplicate_minima([np.nan, 0, 0, 0], X)
