"""committee-learn / committee-rerank command lines on a small synthetic landscape."""
import csv
import json

import pytest
from ase.io import write

from drivers.active_learn import main as learn_main
from drivers.rerank import main as rerank_main
from test_active import synthetic_landscape


def test_learn_then_rerank_cli(tmp_path, capsys):
    land = tmp_path / "land.extxyz"
    write(land, synthetic_landscape(40, seed=3))
    ref = tmp_path / "ref.yaml"
    ref.write_text("calculator: ase.calculators.emt.EMT\nparameters: {}\n")
    out = tmp_path / "al"
    args = [str(land), "--reference", str(ref), "--out", str(out), "--molecules", "none",
            "--backend", "ridge", "--n-members", "4", "--quantity", "dE", "--batch-size", "5",
            "--threshold-mev-atom", "1.0", "--energy-cutoff-mev-atom", "400", "--max-train-size", "15",
            "--no-progress"]
    assert learn_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] <= 15 and summary["stopped"]
    assert learn_main(args) == 0                       # resumed run: nothing new
    assert json.loads((out / "summary.json").read_text())["n_train"] == summary["n_train"]
    rr = tmp_path / "rr"
    assert rerank_main([str(land), "--learn-dir", str(out), "--reference", str(ref), "--molecules", "none",
                        "--sigma-cap-mev-atom", "2", "--out", str(rr), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(rr / "reranked.csv")))
    assert len(rows) == 40 and {r["source"] for r in rows} <= {"committee", "reference"}
    assert (rr / "labels.extxyz").exists() and (rr / "reference_calls.csv").exists()
    # the σ cap is the gate threshold on energy_std_per_atom: the shared option gives the same ranking,
    # and giving both is an error
    rr2 = tmp_path / "rr2"
    base = [str(land), "--learn-dir", str(out), "--reference", str(ref), "--molecules", "none", "--no-progress"]
    assert rerank_main(base + ["--threshold-energy-std-per-atom-meV", "2", "--out", str(rr2)]) == 0
    assert list(csv.DictReader(open(rr2 / "reranked.csv"))) == rows
    assert rerank_main(base + ["--threshold-energy-std-per-atom-meV", "2", "--sigma-cap-mev-atom", "2",
                               "--out", str(tmp_path / "z")]) == 2
    assert "twice" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert rerank_main(base + ["--sigma-cap-kjmol", "2", "--out", str(tmp_path / "z")]) == 2
    assert "per molecule" in capsys.readouterr().err and not (tmp_path / "z").exists()
    # a shared hard cap stops the re-ranking (GateStop) instead of labelling
    assert rerank_main(base + ["--cap-energy-std-per-atom-meV", "1e-6", "--out", str(tmp_path / "c")]) == 2
    assert "hard cap" in capsys.readouterr().err and not (tmp_path / "c" / "reranked.csv").exists()
    # bad input: batch size 0, cutoff leaving nothing -> exit code 2 with a message
    with pytest.raises(SystemExit) as stop:  # refused by the parser: usage + one error: line
        learn_main(args[:-1] + ["--batch-size", "0", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "--batch-size" in capsys.readouterr().err
    bad = [a if a != "400" else "0" for a in args]
    assert learn_main(bad[:4] + [str(tmp_path / "y")] + bad[5:]) == 2
    assert "cutoff" in capsys.readouterr().err
