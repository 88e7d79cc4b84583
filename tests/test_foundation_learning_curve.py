"""benchmarks/foundation_learning_curve.py (issue 21, item 5): the ``--quick`` run end to end.

Slow: it trains real (tiny) MACE, Δ-MACE and fine-tuned CHGNet committees (2 sizes x 2 members,
1-2 epochs; ~2.5 min on one core) and evaluates bare CHGNet 0.3.0 from the weights in the wheel.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("chgnet")
pytest.importorskip("mace")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "foundation_learning_curve.py"
NAME = "foundation_learning_curve"
COLUMNS = ["route", "labels", "epochs", "E MAE meV/atom", "E RMSE meV/atom", "F RMSE eV/Å",
           "Spearman(σ_E,|ΔE|)", "ρ aligned", "train wall s", "train CPU s"]


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.slow
def test_quick_run_writes_a_finite_table_for_every_route(tmp_path):
    out = tmp_path / "out"
    proc = _run("--quick", "--out", out, "--work", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("-> ") and "10 meV/atom" in last
    md = (out / f"{NAME}.md").read_text().splitlines()
    head = next(i for i, line in enumerate(md) if line.startswith("| route"))
    assert [c.strip() for c in md[head].strip("|").split(" | ")] == COLUMNS
    body = [line for line in md[head + 2:] if line.startswith("|")]
    data = json.loads((out / f"{NAME}.json").read_text())
    rows = data["rows"]
    assert len(body) == len(rows)
    routes = {r["route"] for r in rows}
    assert routes == {"mace", "delta_mace", "chgnet_ft", "chgnet", "chgnet+offset"}
    sizes = data["settings"]["sizes"]
    assert len(sizes) == 2 and data["settings"]["members"] == 2
    for r in rows:
        for key in ("energy_mae_meV_atom", "energy_rmse_meV_atom", "forces_rmse_eVA", "train_wall_s"):
            assert math.isfinite(r[key]) and r[key] >= 0, (r["route"], key, r[key])
        assert r["energy_rmse_meV_atom"] >= r["energy_mae_meV_atom"]
        if r["route"] in ("chgnet", "chgnet+offset"):
            assert r["spearman_sigma_abs_error"] is None      # no committee: n/a
        else:
            assert r["labels"] in sizes
            assert -1 <= r["spearman_sigma_abs_error"] <= 1 and -1 <= r["spearman_aligned"] <= 1
    bare = next(r for r in rows if r["route"] == "chgnet")
    # the committee YAML's bare CHGNet 0.3.0 errors on the 19 held-out frames (heldout_errors.json)
    assert bare["labels"] == 0 and bare["energy_mae_meV_atom"] == pytest.approx(84.56, abs=0.5)
    # on these frames the bare model's error is mostly a per-atom shift: the fitted offset lowers it
    for r in (r for r in rows if r["route"] == "chgnet+offset"):
        assert r["energy_mae_meV_atom"] < bare["energy_mae_meV_atom"]
        assert r["forces_rmse_eVA"] == pytest.approx(bare["forces_rmse_eVA"])
    assert (out / f"{NAME}.png").stat().st_size > 10_000
    assert data["verdict"] == last


@pytest.mark.slow
def test_bad_sizes_exit_2_and_write_nothing(tmp_path):
    proc = _run("--sizes", "20", "10", "--out", tmp_path / "out", "--work", tmp_path / "work")
    assert proc.returncode == 2 and "--sizes must be increasing" in proc.stderr
    proc = _run("--sizes", "10", "500", "--out", tmp_path / "out", "--work", tmp_path / "work")
    assert proc.returncode == 2 and "130" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
