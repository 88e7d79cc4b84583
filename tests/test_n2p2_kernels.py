"""The compiled (numba) n2p2 kernels equal the PyTorch autograd path: SF values and
dE/dD for every SF type of the fixtures and every cutoff type 0-8 (with inner alpha)."""
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from committee_calc.errors import ConfigError
from committee_calc.members.n2p2 import N2P2Member, neighbour_pairs, read_input_data
from committee_calc.members.n2p2.descriptors import SFEngine
from committee_calc.members.n2p2.reader import load_model

pytest.importorskip("numba")
DATA = os.path.join(os.path.dirname(__file__), "data", "n2p2")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compare(model, atoms, n_members=2, seed=0, pad=1.0):
    """Max |numba - torch| of raw SFs and of dE/dD (random dE/dG of n_members), and scales.

    ``pad`` > 1 builds the neighbour list beyond the largest SF cutoff (extra pairs
    that both kernels must ignore)."""
    fast, slow = SFEngine(model, "numba"), SFEngine(model, "torch")
    assert (fast.kernel, slow.kernel) == ("numba", "torch")
    index = {e: k for k, e in enumerate(model.elements)}
    species = np.array([index[s] for s in atoms.get_chemical_symbols()], dtype=np.int64)
    cell = atoms.cell.array if atoms.pbc.all() else np.zeros((3, 3))
    i, j, D = neighbour_pairs(atoms.positions, cell, atoms.pbc, fast.cutoff * pad)
    geos = [e.prepare(species, i, j, D) for e in (fast, slow)]
    for g in geos[1:]:  # both sort pairs by centre (stable): same pair order
        np.testing.assert_array_equal(g["i"], geos[0]["i"])
        np.testing.assert_array_equal(g["j"], geos[0]["j"])
    G = [e.values(g) for e, g in zip((fast, slow), geos)]
    rng = np.random.default_rng(seed)
    dEdG = [[torch.from_numpy(rng.normal(size=tuple(x.shape))) for x in G[1]] for _ in range(n_members)]
    gD = [e.gradients(g, dEdG) for e, g in zip((fast, slow), geos)]
    dG = max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in zip(*G))
    sG = max(float(b.abs().max()) if b.numel() else 0.0 for b in G[1])
    dD = max(float(np.abs(a - b).max()) for a, b in zip(*gD))
    sD = max(float(np.abs(b).max()) for b in gD[1])
    return dG, sG, dD, sD


@pytest.mark.parametrize("name,conf", [("LJ_Ne", 9), ("H2O_RPBE-D3", 6), ("Cu2S_PBE", 6),
                                       ("Cu2S_PBE", 9), ("Anisole_SCAN", 7)])
def test_numba_equals_autograd_on_fixtures(name, conf):
    d = os.path.join(DATA, name)
    atoms = read_input_data(os.path.join(d, "input.data"))[conf - 1]
    atoms.rattle(0.05, seed=conf)
    dG, sG, dD, sD = compare(load_model(d), atoms)
    assert sG > 0 and sD > 0
    assert dG <= 1e-12 * sG
    assert dD <= 1e-10 * sD


@pytest.mark.parametrize("ctype,alpha", [(0, 0.0), (1, 0.0), (1, 0.3), (2, 0.0), (3, 0.0),
                                         (4, 0.0), (4, 0.2), (5, 0.0), (6, 0.25), (7, 0.0), (8, 0.5)])
def test_numba_equals_autograd_for_every_cutoff_type(tmp_path, ctype, alpha):
    """Cu2S has types 2, 3 and 9; a 12-atom cell smaller than the cutoff."""
    dst = tmp_path / "m"
    shutil.copytree(os.path.join(DATA, "Cu2S_PBE"), dst)
    text = (dst / "input.nn").read_text()
    text, n = re.subn(r"(?m)^cutoff_type\s.*$", f"cutoff_type {ctype} {alpha}", text)
    assert n == 1
    (dst / "input.nn").write_text(text)
    model = load_model(str(dst))
    assert (model.cutoff_type, model.cutoff_alpha) == (ctype, alpha)
    atoms = read_input_data(str(dst / "input.data"))[5]
    atoms.rattle(0.1, seed=ctype)
    dG, sG, dD, sD = compare(model, atoms, n_members=1, seed=ctype)
    assert dG <= 1e-12 * sG
    assert dD <= 1e-10 * sD


def test_numba_equals_autograd_with_mixed_cutoffs(tmp_path):
    """Angular SFs with two cutoffs below the radial one, and a padded neighbour list:
    exercises the per-cutoff slots, mixed-rc families and the pair subsets."""
    dst = tmp_path / "m"
    shutil.copytree(os.path.join(DATA, "Cu2S_PBE"), dst)
    lines, k = [], 0
    for line in (dst / "input.nn").read_text().splitlines():
        tok = line.split()
        if len(tok) >= 9 and tok[0] == "symfunction_short" and tok[2] in ("3", "9"):
            tok[8] = ("4.5", "5.2")[k % 2]
            k += 1
            line = " ".join(tok)
        lines.append(line)
    assert k > 10
    (dst / "input.nn").write_text("\n".join(lines) + "\n")
    model = load_model(str(dst))
    atoms = read_input_data(str(dst / "input.data"))[5]
    atoms.rattle(0.1, seed=3)
    for pad in (1.0, 1.4):
        dG, sG, dD, sD = compare(model, atoms, n_members=2, seed=4, pad=pad)
        assert dG <= 1e-12 * sG
        assert dD <= 1e-10 * sD


def test_kernel_choice_and_fallback_without_numba(monkeypatch):
    d = os.path.join(DATA, "LJ_Ne")
    model = load_model(d)
    assert N2P2Member(d).engine.kernel == "numba"          # default: compiled when available
    with pytest.raises(ConfigError, match="unknown n2p2 kernel 'cuda'"):
        SFEngine(model, "cuda")
    monkeypatch.setenv("COMMITTEE_CALC_N2P2_KERNEL", "torch")
    assert SFEngine(model).kernel == "torch"
    monkeypatch.delenv("COMMITTEE_CALC_N2P2_KERNEL")
    # numba not importable: "auto" falls back to autograd, "numba" names the problem
    monkeypatch.setitem(sys.modules, "committee_calc.members.n2p2.fast", None)
    assert SFEngine(model).kernel == "torch"
    with pytest.raises(ConfigError, match="needs numba"):
        SFEngine(model, "numba")
    atoms = read_input_data(os.path.join(d, "input.data"))[8]
    m = N2P2Member(d)
    assert m.engine.kernel == "torch"
    ref = np.loadtxt(os.path.join(d, "reference_energy.out"), comments="#")
    assert abs(m.predict(atoms, ["energy"])["energy"] - ref[ref[:, 0] == 9][0][3]) < 1e-8 * abs(ref[8][3])
