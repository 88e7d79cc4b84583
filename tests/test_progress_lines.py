"""Issue 18, progress everywhere: a driver whose stdout and stderr go to a file (``nohup``, a batch
scheduler) writes plain progress lines, at least one per 10 % of its work, each with rate and
ETA; committee-md's lines carry the thermo log (time, E, T, P, V, σ).  The drivers run in a
subprocess exactly as a user runs them, output redirected to a file (not a terminal)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from committee_calc.progress import LINE_TAG, Progress
from driver_inputs import make_inputs

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(rf"^{re.escape(LINE_TAG)} (\w+) ([\d.]+)/([\d.]+) \S+ \((\d+)%\) \S+ \S+/s elapsed \S+ ETA \S+")


def _run_to_file(module: str, args: list, log: Path) -> str:
    code = f"import sys; from drivers.{module} import main; raise SystemExit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("COMMITTEE_CALC_VERBOSE", None)
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-c", code, *map(str, args)], stdout=fh, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=env, timeout=600).returncode
    text = log.read_text()
    assert rc == 0, text
    return text


def _deciles_covered(text: str, desc: str) -> list:
    """For each tenth of the work (0–10 %, …, 90–100 %), the progress lines that fall in it."""
    pcts = [100 * float(m.group(2)) / float(m.group(3)) for m in map(LINE.match, text.splitlines())
            if m and m.group(1) == desc]
    return [[p for p in pcts if 10 * k < p <= 10 * (k + 1) + 1e-9] for k in range(10)]


def test_md_writes_thermo_progress_lines_to_a_file(tmp_path):
    i = make_inputs(tmp_path)
    text = _run_to_file("npt_md", [i["structure"], "--committee", i["committee"], "--out", tmp_path / "md",
                                   "--steps", "40", "--write-interval", "10", "--temperature-K", "300"],
                        tmp_path / "md.log")
    deciles = _deciles_covered(text, "md")
    assert all(deciles), (deciles, text)
    lines = [s for s in text.splitlines() if s.startswith(f"{LINE_TAG} md")]
    for field in ("t[ps]=", "Epot[eV]=", "T[K]=", "P[GPa]=", "V[Å³]=", "σF[eV/Å]="):
        assert all(field in s for s in lines), (field, lines[0])
    assert lines[-1].split()[2] == "40/40"
    summary = (tmp_path / "md" / "summary.md").read_text()
    for item in ("# committee-md summary", "| mean temperature |", " K |", "| mean pressure |", "GPa |",
                 "`md_log.csv`", "## Warnings"):
        assert item in summary, (item, summary)
    assert "Warning" not in text  # quiet by default: nothing from third parties


def test_qha_writes_progress_lines_to_a_file(tmp_path):
    i = make_inputs(tmp_path)
    text = _run_to_file("qha", [i["structure"], "--committee", i["committee"], "--out", tmp_path / "qha",
                                "--linear-scales", "0.99", "0.995", "1.0", "1.005", "1.01", "--relax", "none",
                                "--supercell", "1", "--mesh", "2", "2", "2", "--tmax-K", "300", "--no-plots"],
                        tmp_path / "qha.log")
    deciles = _deciles_covered(text, "qha")
    assert all(deciles), (deciles, text)
    assert re.search(r"volume 04: V = [\d.]+ Å³ \(primitive\), \d+ displaced supercells", text)
    summary = (tmp_path / "qha" / "summary.md").read_text()
    assert "| volumes | 5 (5 computed now) |" in summary and "| B_T at 0 K (mean potential) |" in summary, summary
    assert "GPa (members " in summary and "±1σ" in summary, summary


def test_mc_writes_progress_lines_to_a_file(tmp_path):
    i = make_inputs(tmp_path)
    text = _run_to_file("threshold_mc", [i["structure"], "--committee", i["committee"], "--out", tmp_path / "mc",
                                         "--units", "atoms", "--moves", "displace=1:0.05", "--lid-eV-per-atom",
                                         "0.1", "--steps", "10", "--n-starts", "2", "--no-plots"],
                        tmp_path / "mc.log")
    deciles = _deciles_covered(text, "mc")
    assert all(deciles), (deciles, text)
    lines = [s for s in text.splitlines() if s.startswith(f"{LINE_TAG} mc")]
    assert lines[-1].split()[2] == "20/20" and "accepted=" in lines[-1]
    summary = (tmp_path / "mc" / "summary.md").read_text()
    assert "| chains | 2 |" in summary and "| steps run (all chains) | 20 |" in summary, summary
    assert "Warning" not in text


def test_calibrate_writes_progress_lines_to_a_file(tmp_path):
    i = make_inputs(tmp_path)
    text = _run_to_file("calibrate", [i["structure"], "--committee", i["committee"], "--reference", i["reference"],
                                      "--out", tmp_path / "calib", "--methods", "alpha", "--no-plots"],
                        tmp_path / "calibrate.log")
    deciles = _deciles_covered(text, "calibrate")
    assert all(deciles), (deciles, text)
    assert "Warning" not in text


def test_learn_writes_a_progress_line_per_10_percent_of_its_labels(tmp_path):
    """committee-learn counts its work as the labels it can take at most (known up front: here
    --max-train-size 10: 4 initial, 2 per iteration): a line per label and one per iteration; a run that
    stops early jumps to 100 %."""
    i = make_inputs(tmp_path, n=24)
    text = _run_to_file("active_learn", [i["structure"], "--reference", i["reference"], "--out", tmp_path / "learn",
                                         "--molecules", "none", "--threshold-mev-atom", "1e-9", "--batch-size", "2",
                                         "--initial-size", "4", "--max-train-size", "10", "--n-members", "3"],
                        tmp_path / "learn.log")
    deciles = _deciles_covered(text, "learn")
    assert all(deciles), (deciles, text)
    lines = [s for s in text.splitlines() if s.startswith(f"{LINE_TAG} learn")]
    assert lines[-1].startswith(f"{LINE_TAG} learn 10/10 labels (100%)") and "stopped: max_train_size" in lines[-1]
    assert sum("iteration 3: 10 labels" in s for s in lines) == 1, lines  # the last iteration's line
    assert "Warning" not in text
    summary = (tmp_path / "learn" / "summary.md").read_text()  # the conclusions, like every driver's
    assert "committee-learn stopped after 4 iterations with 10 labels: the label budget" in summary, summary
    assert "| labels (reference calls) | 10 |" in summary
    assert "| candidates in the pool | 24 |" in summary and "meV/atom" in summary, summary


def test_learn_that_converges_early_ends_at_100_percent(tmp_path):
    i = make_inputs(tmp_path, n=12)
    text = _run_to_file("active_learn", [i["structure"], "--reference", i["reference"], "--out", tmp_path / "learn",
                                         "--molecules", "none", "--threshold-mev-atom", "1e9", "--batch-size", "2",
                                         "--n-members", "3"], tmp_path / "learn.log")
    lines = [s for s in text.splitlines() if s.startswith(f"{LINE_TAG} learn")]
    assert lines[0].startswith(f"{LINE_TAG} learn 1/12 labels"), lines  # the pool bounds the work
    assert lines[-1].startswith(f"{LINE_TAG} learn 12/12 labels (100%)") and "stopped: converged" in lines[-1]


def test_rerank_writes_progress_lines_for_its_batches_and_its_reference_calls(tmp_path):
    """committee-rerank: a line per batched committee call (``predict``) and, deciding, a line per
    5 % of the structures (``gate``), not one per reference call, each naming the reference calls
    so far; 40 structures in batches of 4, every one above the threshold (a reference call each)."""
    i = make_inputs(tmp_path, n=40)
    text = _run_to_file("rerank", [i["structure"], "--committee", i["committee"], "--reference", i["reference"],
                                   "--threshold-forces-std-max-eVA", "1e-9", "--molecules", "none",
                                   "--out", tmp_path / "rerank", "--batch-size", "4"], tmp_path / "rerank.log")
    for desc in ("predict", "gate"):
        deciles = _deciles_covered(text, desc)
        assert all(deciles), (desc, deciles, text)
    gate = [s for s in text.splitlines() if s.startswith(f"{LINE_TAG} gate")]
    assert 10 <= len(gate) <= 21, gate  # one per 5 % of 40 structures: 20 (+1 if a minute passes)
    assert all(s.endswith(": reference") for s in gate) and "| 40 reference calls;" in gate[-1], gate
    assert "re-ranked 40 structures; 40 above the σ cap" in text
    summary = (tmp_path / "rerank" / "summary.md").read_text()
    assert "| new reference calls | 40 |" in summary, summary
    assert "Warning" not in text


def test_campaign_writes_progress_lines_per_candidate_to_a_file(tmp_path):
    """committee-campaign over 2 rounds: its work is counted per candidate relaxed and labelled
    within a round, so a short campaign still covers every tenth."""
    i = make_inputs(tmp_path, training=True)
    text = _run_to_file("campaign", [i["structure"], "--committee", i["committee"], "--reference", i["reference"],
                                     "--threshold-forces-std-max-eVA", "1e-9", "--out", tmp_path / "camp",
                                     "--max-rounds", "2", "--max-steps", "2"], tmp_path / "campaign.log")
    deciles = _deciles_covered(text, "campaign")
    assert all(deciles), (deciles, text)
    lines = [s for s in text.splitlines() if LINE.match(s) and s.split()[1] == "campaign"]
    assert len(lines) >= 10 and lines[-1].split()[2] == "2/2", text
    assert "Warning" not in text


def test_relax_writes_progress_lines_to_a_file(tmp_path):
    """committee-relax (batched, the default): a plain line per finished candidate; 12 candidates
    cover every tenth of the pool."""
    i = make_inputs(tmp_path, n=12)
    text = _run_to_file("relax", [i["structure"], "--committee", i["committee"], "--out", tmp_path / "relax",
                                  "--max-steps", "3"], tmp_path / "relax.log")
    deciles = _deciles_covered(text, "relax")
    assert all(deciles), (deciles, text)
    assert "Warning" not in text
    _check_relax_summary(tmp_path / "relax", 12)


def _check_relax_summary(out: Path, n: int) -> str:
    """committee-relax's summary.md: statuses, lowest energies with units, reference calls and
    labels, warnings, files (the same from the in-process and the distributed pool)."""
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# committee-relax summary"), summary
    assert f"| candidates | {n} |" in summary and "| status " in summary, summary
    assert re.search(r"\| #1 lowest energy \(committee surface\) \| \S+: -?[\d.]+ eV/atom \(\+0\.0 meV/atom\) "
                     r"± [\d.]+ meV/atom \(±1σ\)", summary), summary
    assert "| reference calls / evaluated geometries | 0 / " in summary and "| reference labels | 0 |" in summary
    assert "## Warnings" in summary and "not converged within --max-steps (see summary.csv)" in summary, summary
    for name in ("relaxed.extxyz", "summary.csv", "trajectories/", "landscape.png"):
        assert f"- `{name}`:" in summary, (name, summary)
    return summary


def test_distributed_pool_writes_the_same_summary_md(tmp_path):
    """The pool relaxed as tasks on an executor (here threads: the same one-writer path as Dask
    workers) writes the summary.md of the in-process run."""
    from concurrent.futures import ThreadPoolExecutor

    from committee_calc.config import load_committee
    from committee_calc.gate import Gate
    from committee_calc.relax.gated import GatedRelaxer
    from committee_calc.scale.pool import RelaxRecipe, run_pool_scaled
    from committee_calc.structures import read_structures

    i = make_inputs(tmp_path, n=4)
    relaxer = GatedRelaxer(Gate(load_committee(i["committee"])), max_steps=3)
    recipe = RelaxRecipe.from_relaxer(relaxer, i["committee"])
    images = read_structures(i["structure"])
    with ThreadPoolExecutor(1) as ex:
        run = run_pool_scaled(recipe, images, tmp_path / "scaled", executor=ex, relaxer=relaxer, progress=False)
    assert run.tasks.describe().startswith("tasks: 4 done")
    scaled = _check_relax_summary(tmp_path / "scaled", 4)
    run_pool_scaled(recipe, images, tmp_path / "inproc", relaxer=relaxer, progress=False)
    inproc = _check_relax_summary(tmp_path / "inproc", 4)
    table = [s for s in scaled.splitlines() if s.startswith("| ")]
    assert table == [s for s in inproc.splitlines() if s.startswith("| ")]


def test_plain_lines_every_5_percent_and_eta(caplog):
    caplog.set_level("INFO", logger="committee_calc.progress")
    bar = Progress(200, "demo", unit="step", terminal=False, min_interval_s=1e9)
    for _ in range(200):
        bar.update(1, "x=1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 20 and lines[0].startswith(f"{LINE_TAG} demo 10/200 step (5%)")
    assert all("ETA" in s and "step/s" in s and s.endswith("| x=1") for s in lines)
    assert lines[-1].startswith(f"{LINE_TAG} demo 200/200 step (100%)")


def test_terminal_uses_tqdm(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    bar = Progress(10, "demo", terminal=True)
    assert isinstance(bar.bar, tqdm.tqdm)
    bar.update(10, "done")
    bar.close()
    assert bar.bar is None
