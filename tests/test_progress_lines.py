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


def test_learn_writes_a_progress_line_per_label_to_a_file(tmp_path):
    """committee-learn's length is open (it stops when converged): each iteration's labelling batch
    writes plain lines up to 100 %."""
    i = make_inputs(tmp_path)
    text = _run_to_file("active_learn", [i["structure"], "--reference", i["reference"], "--out", tmp_path / "learn",
                                         "--molecules", "none", "--threshold-mev-atom", "1e-9", "--batch-size", "2",
                                         "--max-train-size", "4", "--n-members", "3"], tmp_path / "learn.log")
    done = [s for s in text.splitlines() if s.startswith(f"{LINE_TAG} label it") and "(100%)" in s]
    assert done and done[0].startswith(f"{LINE_TAG} label it0 2/2 it (100%)"), text  # the initial batch
    assert all("it/s elapsed" in s and "ETA" in s for s in done), done


def test_campaign_writes_a_progress_line_per_round_to_a_file(tmp_path):
    i = make_inputs(tmp_path, training=True)
    text = _run_to_file("campaign", [i["structure"], "--committee", i["committee"], "--reference", i["reference"],
                                     "--threshold-forces-std-max-eVA", "1e-9", "--out", tmp_path / "camp",
                                     "--max-rounds", "2", "--max-steps", "2"], tmp_path / "campaign.log")
    lines = [s for s in text.splitlines() if LINE.match(s) and s.split()[1] == "campaign"]
    assert lines and lines[-1].split()[2] == "2/2", text
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
