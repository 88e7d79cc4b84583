"""Issue 17: every driver against every kind of bad input.

Each case runs a driver's ``main(argv)`` in-process on tiny EMT inputs
(:mod:`driver_inputs`) with one input spoiled and checks the README's promise: exit code 2,
the last stderr line starts with ``error:`` and names the problem, and the input folder —
output folder and label store included — is byte for byte as before the run (nothing
created, nothing half-written).  A failing reference is met only while the run works, so
there the outputs written so far are kept (resumable); the label store must still be
unchanged.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from ase.io import read, write

from driver_inputs import DRIVERS, NEEDS_TRAINING, NO_COMMITTEE, NO_LABELS, argv, make_inputs


def _text(d, name, text):
    (d / name).write_text(text)
    return str(d / name)


def _structures(d, name, edit):
    """The landscape with ``edit`` applied to every frame (``edit(frames)`` -> frames for an
    edit made by :func:`_first`)."""
    frames = read(d / "land.extxyz", ":")
    write(d / name, edit(frames) if getattr(edit, "whole", False) else [edit(a) for a in frames])
    return str(d / name)


def _member(d, spec):
    return _text(d, "c.yaml", f"members:\n  - {spec}\n")


def _reference(d, calculator):
    return _text(d, "r.yaml", f"calculator: {calculator}\n")


def _corrupt_model(d):
    """A committee YAML whose one member is an n2p2 model folder holding a corrupt input.nn."""
    (d / "model_dir").mkdir()
    _text(d, "model_dir/input.nn", "garbage 1 2\n")
    return _member(d, "{backend: n2p2, path: model_dir}")


def _with_ni(a):
    a = a.copy()
    a.symbols[0] = "Ni"
    return a


PBC_NO_CELL = '2\npbc="T T T"\nSi 0.0 0.0 0.0\nSi 1.2 1.2 1.2\n'


def _first(edit):
    """An edit of the landscape's first structure only (the others stay good)."""
    def apply(frames):
        return [edit(frames[0].copy()), *frames[1:]]

    apply.whole = True
    return apply


def _nan_coordinate(a):
    a.positions[0, 0] = float("nan")
    return a


def _duplicate_atom(a):
    a.positions[1] = a.positions[0]
    return a


def _no_atoms(a):
    empty = a[[]]
    empty.info.update(a.info)
    return empty


def _nan_cell(a):
    a.cell[0, 0] = float("nan")
    return a


#: the resume-state JSON file(s) each driver reads from its --out folder
STATE_FILES = ("pool.json", "run.json", "chain_000/state.json", "md_state.json", "state.json",
               "campaign.json", "volumes/00/volume.json")


def _corrupt_state(d, i):
    """Every driver's resume state in --out, truncated (a run killed mid-write by hand)."""
    for name in STATE_FILES:
        path = Path(i["out"]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"seed": 0,')


#: drivers with a --seed option
SEEDED = {"mc", "md", "learn"}

#: kind -> (edit(d, inputs) that spoils one input, regex the error line must match)
CASES = {
    "structure_missing": (lambda d, i: i.update(structure=str(d / "nosuch.extxyz")), r"does not exist"),
    "structure_corrupt": (lambda d, i: i.update(structure=_text(d, "bad.extxyz", "garbage\n\x00 1 2\n")),
                          r"cannot read structures"),
    "structure_pbc_without_cell": (lambda d, i: i.update(structure=_text(d, "nocell.extxyz", PBC_NO_CELL)),
                                   r"cell"),
    "structure_no_atoms": (lambda d, i: i.update(structure=_structures(d, "s.extxyz", _first(_no_atoms))),
                           r"structure 0 of .* has no atoms"),
    "structure_nan_coordinate": (lambda d, i: i.update(structure=_structures(d, "s.extxyz",
                                                                             _first(_nan_coordinate))),
                                 r"structure 0 of .* non-finite .*coordinates"),
    "structure_duplicate_atom": (lambda d, i: i.update(structure=_structures(d, "s.extxyz",
                                                                             _first(_duplicate_atom))),
                                 r"structure 0 of .* atoms 0 and 1 .* apart"),
    "structure_nan_cell": (lambda d, i: i.update(structure=_structures(d, "s.extxyz", _first(_nan_cell))),
                           r"CellError: structure 0 of .* non-finite cell"),
    "resume_state_corrupt": (_corrupt_state, r"ConfigError: .*\.json' is corrupt.*delete it"),
    "seed_negative": (lambda d, i: i["extra"].extend(["--seed", "-1"]), r"--seed: must be an integer >= 0"),
    "unknown_species": (lambda d, i: i.update(structure=_structures(d, "ni.extxyz", _with_ni)),
                        r"UnknownSpeciesError.*'Ni'"),
    "committee_missing": (lambda d, i: i.update(committee=str(d / "nosuch.yaml")), r"nosuch\.yaml"),
    "committee_corrupt": (lambda d, i: i.update(committee=_text(d, "c.yaml", "members: [{backend: ase\n")),
                          r"c\.yaml"),
    "committee_unknown_backend": (lambda d, i: i.update(committee=_member(d, "{backend: nosuch}")),
                                  r"unknown member backend 'nosuch'"),
    "model_missing": (lambda d, i: i.update(committee=_member(d, "{backend: n2p2, path: nosuch_model}")),
                      r"ModelFileError.*nosuch_model"),
    "model_corrupt": (lambda d, i: i.update(committee=_corrupt_model(d)), r"ModelFileError.*model_dir"),
    "threshold_negative": (lambda d, i: i.update(threshold="-1"), r"> 0|positive"),
    "threshold_not_a_number": (lambda d, i: i.update(threshold="abc"), r"invalid float value: 'abc'"),
    "unknown_measure_option": (lambda d, i: i["extra"].extend(["--threshold-nosuch-eVA", "1"]),
                               r"unrecognized arguments: --threshold-nosuch-eVA"),
    "out_below_a_file": (lambda d, i: i.update(out=str(Path(_text(d, "afile", "x")) / "out")),
                         r"cannot create the output folder.*afile.* is a file"),
    "out_under_proc": (lambda d, i: i.update(out="/proc/committee_calc_test/out"),
                       r"cannot create the output folder.*/proc"),
    "labels_below_a_file": (lambda d, i: i.update(labels=str(Path(_text(d, "afile", "x")) / "labels.extxyz")),
                            r"label store.*afile.* is a file"),
    "reference_missing": (lambda d, i: i.update(reference=str(d / "nosuch_ref.yaml")), r"nosuch_ref\.yaml"),
    "reference_does_not_import": (lambda d, i: i.update(reference=_reference(d, "nosuchpkg.Calc")),
                                  r"nosuchpkg"),
    # ASE's base Calculator imports but implements no property: every reference call fails
    "reference_fails": (lambda d, i: i.update(reference=_reference(d, "ase.calculators.calculator.Calculator")),
                        r"ReferenceCalculationError"),
}
COMMITTEE_KINDS = {k for k in CASES if k.startswith(("committee", "model", "unknown_species"))}


def _applies(driver, kind):
    if driver in NO_COMMITTEE and kind in COMMITTEE_KINDS | {"unknown_species"}:
        return False  # committee-learn trains its own committee: no --committee, any species
    if kind == "seed_negative":
        return driver in SEEDED
    if kind == "resume_state_corrupt":
        return driver != "rerank"  # committee-rerank keeps no resume state
    return not (driver in NO_LABELS and kind.startswith("labels"))


def snapshot(root: Path) -> dict:
    """{relative path: bytes (None for a folder)} of everything under ``root``."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


#: (driver, kind) known to fail, with the reason (strict: they flag when fixed)
KNOWN: dict = {}  # (driver, kind) -> reason, for an expected failure
MATRIX = [pytest.param(drv, kind, id=f"{drv}-{kind}",
                       marks=[pytest.mark.xfail(strict=True, reason=KNOWN[drv, kind])] if (drv, kind) in KNOWN
                       else []) for drv in DRIVERS for kind in CASES if _applies(drv, kind)]


@pytest.mark.parametrize("driver, kind", MATRIX)
def test_bad_input_is_refused_cleanly(driver, kind, tmp_path, capsys):
    inputs = make_inputs(tmp_path, n=3, training=driver in NEEDS_TRAINING)
    spoil, expected = CASES[kind]
    spoil(tmp_path, inputs)
    before = snapshot(tmp_path)
    main = DRIVERS[driver][0]
    try:
        rc = main(argv(driver, inputs))
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1] if err else ""
    assert rc == 2, (rc, err[-5:])
    assert last.startswith("error:"), err[-5:]
    assert re.search(expected, last), last
    after = snapshot(tmp_path)
    if kind == "reference_fails":  # outputs so far are kept (resumable); no label was stored
        labels = Path(inputs["labels"]) if driver not in NO_LABELS else Path(inputs["out"]) / "labels.extxyz"
        assert not labels.exists() and not Path(str(labels) + ".lock").exists(), last
        return
    assert after == before, sorted(set(after) ^ set(before))


def test_matrix_covers_every_driver_and_kind():
    assert {d for d, _ in (p.values for p in MATRIX)} == set(DRIVERS)
    assert {k for _, k in (p.values for p in MATRIX)} == set(CASES)


def test_failing_reference_keeps_the_structure_for_inspection(tmp_path, capsys):
    """The structure a failing reference could not label is saved beside the label store."""
    inputs = make_inputs(tmp_path, n=3)
    CASES["reference_fails"][0](tmp_path, inputs)
    assert DRIVERS["mc"][0](argv("mc", inputs)) == 2
    assert "ReferenceCalculationError" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list((Path(inputs["labels"]).parent / "failed").iterdir())


@pytest.mark.parametrize("driver", ["mc", "md", "qha", "rerank"])
def test_hard_cap_stop_names_the_cli_option(driver, tmp_path, capsys, caplog):
    """Issue 17 item 9: a run stopped by a hard cap names the option that set it (an error
    line, exit 2; committee-md: a stopped run, exit 3, with the reason logged)."""
    inputs = make_inputs(tmp_path, n=3)
    inputs["threshold"] = "1e-13"
    inputs["extra"] += ["--cap-forces-std-max-eVA", "1e-12"]
    rc = DRIVERS[driver][0](argv(driver, inputs))
    if driver == "md":
        assert rc == 3 and "hard cap set by --cap-forces-std-max-eVA" in caplog.text
        assert not (Path(inputs["out"]) / "uncertainty_trace.png").exists()  # no steps: no figure
        return
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error: GateStop:"), last
    assert "hard cap set by --cap-forces-std-max-eVA" in last, last


def test_run_cli_one_line_errors_and_oserrors(capsys):
    from committee_calc.cli import run_cli
    from committee_calc.errors import ConfigError

    def multi_line(argv):
        raise ConfigError("first line\nsecond line")

    def disk_full(argv):
        raise OSError(28, "No space left on device", "/tmp/x.csv")

    assert run_cli(multi_line) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: ConfigError: first line second line"]
    assert run_cli(disk_full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: OSError:") and "/tmp/x.csv" in err[0]


@pytest.mark.parametrize("verbose", ["", "1"])
def test_run_cli_hides_third_party_warnings(verbose, monkeypatch):
    """Issue 17 item 9: warnings of torch/e3nn/mace/phonopy/… do not precede the error line
    (COMMITTEE_CALC_VERBOSE=1 shows them); the package's own warnings always show."""
    import warnings

    from committee_calc.cli import run_cli

    def noisy(argv):
        for module in ("e3nn.o3._wigner", "torch.jit", "phonopy.structure", "ase.md.nptberendsen"):
            warnings.warn_explicit("third-party chatter", UserWarning, "x.py", 1, module=module)
        warnings.warn_explicit("The TorchScript type system doesn't support", UserWarning, "ast.py", 1,
                               module="ast")
        warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="committee_calc.phonons.qha_run")
        return 0

    monkeypatch.setenv("COMMITTEE_CALC_VERBOSE", verbose)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_cli(noisy) == 0
    messages = [str(w.message) for w in caught]
    assert messages.count("ours") == 1
    assert len(messages) == (6 if verbose else 1), messages
