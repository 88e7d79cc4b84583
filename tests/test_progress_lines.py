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
