"""Issue 18, quiet by default: drivers run on a small input with a MACE committee (the framework
whose stack -- torch, e3nn, TorchScript -- emits most third-party warnings) print no third-party
warning line unless ``--verbose``; the hidden ones are counted in one line.

Each driver runs in a subprocess as a user runs it, stdout and stderr together in a file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import write

from tiny_models import rattled_si

ROOT = Path(__file__).resolve().parents[1]
#: a Python warning line (``path/module.py:NN: SomethingWarning: ...``) of a module outside committee_calc
#: (ours print as ``warning: ...`` in drivers)
WARNING_LINE = re.compile(r"^(\S+\.py):\d+: \w*Warning", re.M)


def _third_party(text: str) -> list:
    return [m.group(0) for m in WARNING_LINE.finditer(text) if "/committee_calc/" not in m.group(1)]


def _run(module: str, args: list, log: Path, verbose: bool = False) -> str:
    code = f"import sys; from drivers.{module} import main; raise SystemExit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    env.pop("COMMITTEE_CALC_VERBOSE", None)
    env.pop("PYTHONWARNINGS", None)
    argv = [*map(str, args), *(["--verbose"] if verbose else [])]
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-c", code, *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=env, timeout=600).returncode
    text = log.read_text()
    assert rc == 0, text
    return text


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mace_models):
    d = tmp_path_factory.mktemp("quiet")
    (d / "committee.yaml").write_text("members:\n" + "".join(
        f"  - {{backend: mace, path: '{mace_models / f'mace_{k}.model'}'}}\n" for k in range(4)))
    pool = [rattled_si(seed=s) for s in range(3)]
    for k, a in enumerate(pool):
        a.info["name"] = f"si{k}"
    write(d / "pool.extxyz", pool)
    write(d / "si64.extxyz", rattled_si(seed=5, repeat=(2, 2, 2)))
    write(d / "si8.extxyz", rattled_si(seed=6))
    return d


def _cases(d: Path) -> dict:
    c = d / "committee.yaml"
    return {
        "relax": [d / "pool.extxyz", "--committee", c, "--max-steps", "3"],
        "npt_md": [d / "si64.extxyz", "--committee", c, "--steps", "4", "--write-interval", "2",
                   "--temperature-K", "300"],
        "qha": [d / "si8.extxyz", "--committee", c, "--linear-scales", "0.99", "0.995", "1.0", "1.005", "1.01",
                "--relax", "none", "--supercell", "1", "--mesh", "2", "2", "2", "--tmax-K", "200", "--no-plots"],
        "threshold_mc": [d / "si8.extxyz", "--committee", c, "--units", "atoms", "--moves", "displace=1:0.05",
                         "--lid-eV-per-atom", "0.1", "--steps", "4", "--n-starts", "1", "--no-plots"],
    }


@pytest.mark.parametrize("driver", ["relax", "npt_md", "qha", "threshold_mc"])
def test_mace_driver_prints_no_third_party_warning(inputs, tmp_path, driver):
    args = [*_cases(inputs)[driver], "--out", tmp_path / driver]
    text = _run(driver, args, tmp_path / f"{driver}.log")
    assert not _third_party(text), text
    assert "Traceback" not in text, text
    hidden = re.search(r"(\d+) third-party warnings? hidden", text)
    if hidden and driver == "relax":  # counted, and --verbose shows them (one driver: they share run_cli)
        loud = _run(driver, [*_cases(inputs)[driver], "--out", tmp_path / f"{driver}_v"],
                    tmp_path / f"{driver}_v.log", verbose=True)
        assert _third_party(loud), loud
