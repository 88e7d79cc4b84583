"""The drivers' edge (committee_calc.cli_edge, entered by cli.run_cli): SIGTERM — what SLURM sends
at the walltime or on ``scancel`` — is handled like Ctrl-C (the ``interrupted`` line, outputs
kept, a rerun resumes, no leaked semaphores) with exit code 143; committee_calc's own warnings
print as one ``warning: <message>`` line, while tests (which record warnings) see real ones.
The signal tests run a process exactly as a user's shell or a batch scheduler does."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from committee_calc.cli import run_cli
from committee_calc.cli_edge import SIGTERM_EXIT, Terminated, exit_code, is_ours
from committee_calc.domain import DomainWarning

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
ENV.pop("COMMITTEE_CALC_VERBOSE", None)

#: a driver that writes an output, holds a named semaphore (as worker pools do), then works on
SLOW_DRIVER = """
import multiprocessing, sys, time
from pathlib import Path
from committee_calc.cli import run_cli

def main(argv):
    lock = multiprocessing.get_context("spawn").Lock()  # registered with the resource tracker
    Path(argv[0]).write_text("written before the signal")
    time.sleep(120)
    return 0

sys.exit(run_cli(main, sys.argv[1:]))
"""

#: a driver that warns with one of our categories (a multi-line message) and a plain UserWarning
WARNING_DRIVER = """
import sys, warnings
from committee_calc.cli import run_cli
from committee_calc.domain import DomainWarning

def main(argv):
    warnings.warn("structure s1 leaves the domain of the committee:\\n  volume 30 Å³/atom", DomainWarning)
    warnings.warn("a plain user warning", UserWarning)
    return 0

sys.exit(run_cli(main, sys.argv[1:]))
"""


def _wait_for(path: Path, proc, timeout_s=120.0):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout_s, "the process never wrote its output"
        time.sleep(0.01)


def test_sigterm_exits_143_with_the_interrupted_line_and_no_leaked_semaphore(tmp_path):
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DRIVER, str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == SIGTERM_EXIT == 143, err
    assert err.splitlines() == ["interrupted (SIGTERM): outputs written so far are kept; rerun to resume"], err
    assert out.read_text() == "written before the signal"  # outputs are kept


def test_sigterm_mid_run_resumes_like_ctrl_c(tmp_path):
    """committee-mc killed by SIGTERM mid-chain: exit 143, and a rerun finishes the same chain."""
    from ase.io import write

    from drivers.threshold_mc import main
    from test_mc_driver import COMMITTEE, args, rows
    from test_mc_moves import water_crystal

    (tmp_path / "committee.yaml").write_text(COMMITTEE)
    (tmp_path / "ref.yaml").write_text("calculator: ase.calculators.emt.EMT\n")
    write(tmp_path / "start.extxyz", water_crystal(a=4.0))
    steps = 400
    proc = subprocess.Popen([sys.executable, "-m", "drivers.threshold_mc", *args(tmp_path, "cut", steps)],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    csvp = tmp_path / "cut" / "chain_000" / "steps.csv"
    t0 = time.monotonic()
    while not (csvp.exists() and csvp.read_bytes().count(b"\n") > 20):
        assert proc.poll() is None and time.monotonic() - t0 < 120, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM): outputs written so far are kept; rerun to resume" in err
    assert "Traceback" not in err and "leaked" not in err, err
    killed_at = len(rows(csvp))
    assert 0 < killed_at < steps + 1, "the run was not interrupted mid-way"
    assert main(args(tmp_path, "cut", steps)) == 0  # rerun = resume
    assert [int(x["step"]) for x in rows(csvp)] == list(range(steps + 1))


def test_ctrl_c_still_exits_130_and_sigterm_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)

    def interrupted(argv):
        assert signal.getsignal(signal.SIGTERM) is not before  # installed while the driver runs
        raise KeyboardInterrupt

    assert run_cli(interrupted, []) == 130
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_code(Terminated()) == 143 and exit_code(KeyboardInterrupt()) == 130


@pytest.mark.parametrize("verbose", [False, True])
def test_our_warnings_print_as_one_clean_line(verbose):
    argv = ["--verbose"] if verbose else []
    run = subprocess.run([sys.executable, "-c", WARNING_DRIVER, *argv], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    clean = "warning: structure s1 leaves the domain of the committee: volume 30 Å³/atom"
    if verbose:  # --verbose: every warning as Python prints it (file, line, category)
        assert clean not in lines and "DomainWarning: structure s1" in run.stderr
    else:
        assert clean in lines, lines
        assert "DomainWarning" not in run.stderr and run.stderr.count("leaves the domain") == 1, lines
    assert "UserWarning: a plain user warning" in run.stderr  # other categories: as Python prints them


def test_tests_still_record_our_warnings():
    """In-process (pytest records warnings) a driver's warnings stay real warnings."""
    def warns(argv):
        warnings.warn("left the domain", DomainWarning, stacklevel=2)
        return 0

    with pytest.warns(DomainWarning, match="left the domain"):
        assert run_cli(warns, []) == 0
    assert is_ours(DomainWarning) and not is_ours(UserWarning) and not is_ours(RuntimeWarning)
