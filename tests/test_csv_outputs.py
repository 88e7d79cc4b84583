"""Issue 17: every CSV a driver writes is plain numbers, read by pandas with numeric dtypes.

Each driver runs once on tiny EMT inputs (:mod:`driver_inputs`, every structure through the
reference so the label columns are filled too); every ``*.csv`` under its output folder is
read with ``pandas.read_csv``.  A column with any number in it must come out numeric (no
``np.float64(…)``, ``None`` or array text mixed in), and no file may hold numpy reprs.
"""
from __future__ import annotations

import re

import pandas as pd
import pytest

from driver_inputs import DRIVERS, NEEDS_TRAINING, argv, make_inputs

#: extra options per driver so that it writes all of its CSV files
EXTRA = {"relax": ["--cluster", "--descriptor", "pair"],
         "qha": ["--screen-pressures-GPa", "0", "0.5"]}
#: the CSV files each driver must write (relative to --out)
EXPECTED = {"relax": {"summary.csv", "clusters.csv"}, "mc": {"chain_000/steps.csv"},
            "md": {"md_log.csv"}, "qha": {"qha.csv", "qha_members.csv", "qha_pressure.csv",
                                          "imaginary_modes.csv"},
            "learn": set(), "rerank": {"reranked.csv", "reference_calls.csv"},
            "campaign": {"summary.csv"}, "calibrate": {"calibration_report.csv"}}
NUMPY_REPR = re.compile(r"np\.(float|int|bool|str)\w*\(|array\(")


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def check_csv(path):
    """Assert the numeric columns of the CSV at ``path`` are numeric for pandas."""
    text = path.read_text()
    assert not NUMPY_REPR.search(text), (path.name, NUMPY_REPR.search(text).group(0))
    df = pd.read_csv(path, keep_default_na=True)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in raw.columns:
        values = [v for v in raw[col] if v != ""]
        if any(_is_number(v) for v in values):
            bad = [v for v in values if not _is_number(v)]
            assert not bad, (path.name, col, bad[:3])
            assert pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]), \
                (path.name, col, df[col].dtype)


@pytest.mark.filterwarnings("ignore:.*imaginary mode")  # rattled cells, no relaxation: expected
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_driver_csv_outputs_are_numeric(driver, tmp_path):
    inputs = make_inputs(tmp_path, n=4, training=driver in NEEDS_TRAINING)
    inputs["threshold"] = "1e-6"
    inputs["extra"] = EXTRA.get(driver, [])
    rc = DRIVERS[driver][0](argv(driver, inputs))
    assert rc == 0
    out = tmp_path / "out"
    found = {str(p.relative_to(out)) for p in out.rglob("*.csv")}
    assert EXPECTED[driver] <= found, found
    for name in sorted(found):
        check_csv(out / name)


def test_checker_catches_numpy_reprs(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("id,energy\na,np.float64(-5.08)\n")
    with pytest.raises(AssertionError):
        check_csv(p)
    p.write_text("id,energy\na,-5.08\nb,None\n")
    with pytest.raises(AssertionError):
        check_csv(p)
    p.write_text("id,energy,label_index\na,-5.08,\nb,1e-3,4\n")
    check_csv(p)
