"""committee-rerank through the batched committee path (issue 15, item 5): the same numbers,
decisions and reference calls batched and one structure at a time, a progress line per batch."""
import logging

import numpy as np
import pytest
from ase.calculators.lj import LennardJones

from committee_calc import CommitteeCalculator
from committee_calc.active.rerank import rerank
from committee_calc.analysis.landscape import make_landscape
from committee_calc.members.mace import MACEMember
from tiny_models import si_structures


class CountingLJ(LennardJones):
    """A cheap reference for Si that counts its calls (the labeller copies it: class counter)."""

    calls = 0

    def calculate(self, *a, **kw):
        CountingLJ.calls += 1
        super().calculate(*a, **kw)


def _landscape():
    structs = si_structures(6, seed=4) + si_structures(2, seed=7, repeat=(1, 1, 2))
    for k, a in enumerate(structs):
        a.info["name"] = f"si{k}"
    return make_landscape(structs, molecules=None)


def _progress_lines(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "committee_calc.progress" and r.getMessage().startswith("progress: predict")]


def test_rerank_batched_equals_one_at_a_time(mace_models, tmp_path, caplog, monkeypatch):
    committee = CommitteeCalculator([MACEMember.from_file(mace_models / f"mace_{k}.model")
                                     for k in range(4)])
    ls = _landscape()
    sizes = []
    orig = MACEMember.predict_batch.__func__
    monkeypatch.setattr(MACEMember, "predict_batch",
                        classmethod(lambda c, m, s, p: sizes.append(len(s)) or orig(c, m, s, p)))
    runs, lines = {}, {}
    for bs in (1, 3):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="committee_calc.progress"):
            runs[bs] = rerank(ls, committee, tmp_path / f"bs{bs}", batch_size=bs, plot=False,
                              progress=True)
        lines[bs] = _progress_lines(caplog)
    assert sizes == [1] * 8 + [3, 3, 2]  # one call per structure, then one per batch
    # cells of any size batch together (6 Si8 and 2 Si16 cells, one gate per unit count): 3/8, 6/8, 8/8
    assert len(lines[1]) == 8 and [x.split()[2] for x in lines[3]] == ["3/8", "6/8", "8/8"]
    one, many = runs[1], runs[3]
    np.testing.assert_allclose(many["final"], one["final"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(many["sigma"], one["sigma"], rtol=1e-9, atol=1e-12)
    assert many["rank_after"].tolist() == one["rank_after"].tolist()
    assert (tmp_path / "bs3" / "reranked.csv").read_text() == (tmp_path / "bs1" / "reranked.csv").read_text()

    # σ-capped: the same structures go to the reference, with the same energies
    cap = float(np.median(one["sigma"]))
    capped = {}
    for bs in (1, 3):
        CountingLJ.calls = 0
        capped[bs] = rerank(ls, committee, tmp_path / f"cap{bs}", reference=CountingLJ(),
                            sigma_cap_eV=cap, batch_size=bs, plot=False)
        capped[bs]["calls"] = CountingLJ.calls
    assert 0 < capped[1]["n_capped"] < len(ls)
    assert capped[3]["source"].tolist() == capped[1]["source"].tolist()
    assert capped[3]["calls"] == capped[1]["calls"] == capped[1]["n_capped"]
    np.testing.assert_allclose(capped[3]["final"], capped[1]["final"], rtol=0, atol=1e-10)


def test_rerank_driver_refuses_a_bad_batch_size(tmp_path, capsys):
    from drivers.rerank import main

    out = tmp_path / "out"
    assert main([str(tmp_path / "missing.extxyz"), "--committee", "c.yaml", "--out", str(out),
                 "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err and not out.exists()


if __name__ == "__main__":
    pytest.main([__file__])
