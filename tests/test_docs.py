"""Issue 18, documentation site: ``mkdocs build --strict`` succeeds (what ``make docs`` and CI run),
and every tutorial's commands run on its small inputs: the ``python`` blocks in order, then each
``committee-…`` line of the ``bash`` blocks through the driver's console entry point (setup.cfg)."""
from __future__ import annotations

import configparser
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _entry_points() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, target in (ln.split("=") for ln in lines)}


def _blocks(path: Path):
    return [(lang, body) for lang, body in BLOCK.findall(path.read_text())]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "tutorials" / "md" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "write_chemiscope" in api and "Gate" in api  # the API reference is generated


def test_every_tutorial_has_commands():
    assert {p.stem for p in TUTORIALS} >= {"relax", "mc", "md", "qha", "learn", "rerank", "campaign", "calibrate"}
    for p in TUTORIALS:
        assert any(lang == "bash" and "committee-" in body for lang, body in _blocks(p)), p


@pytest.mark.parametrize("page", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_commands_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    entry = _entry_points()
    ran = 0
    for lang, body in _blocks(page):
        if lang == "python":
            exec(compile(body, f"{page.name}:python", "exec"), {"__name__": "__tutorial__"})
        elif lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                words = shlex.split(line)
                if not words or not words[0].startswith("committee-"):
                    continue
                module, func = entry[words[0]].split(":")
                rc = getattr(importlib.import_module(module), func)(words[1:])
                assert rc == 0, (line, capsys.readouterr().err[-2000:])
                ran += 1
    assert ran >= 1
    outputs = re.findall(r"^\| `([\w.]+)` \|", page.read_text(), re.M)
    out_dir = tmp_path / page.stem
    for name in outputs:  # the outputs table names files the run wrote (record-mode extras aside)
        if name.endswith((".png", ".csv", ".extxyz", ".md", ".json", ".yaml")) and "selection" not in name:
            assert (out_dir / name).exists(), name
