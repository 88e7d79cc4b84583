"""Tiny inputs and command lines for every driver (bad-input matrix, CSV checks).

:func:`make_inputs` writes, into a folder, a small Cu landscape (4-atom cubic cells with
names and Lennard-Jones baseline values: :func:`test_active.synthetic_landscape`), a
committee YAML of two EMT variants (they disagree, so there is a spread; ``species: [Cu]``
so other elements are refused) and an EMT reference YAML.  :data:`DRIVERS` maps a driver
name to ``(main, argv(inputs))``; the inputs dict holds the paths and the threshold text;
``extra`` is appended to the argv.
"""
from __future__ import annotations

from pathlib import Path

from ase.io import write

from drivers.active_learn import main as learn_main
from drivers.npt_md import main as md_main
from drivers.qha import main as qha_main
from drivers.relax import main as relax_main
from drivers.rerank import main as rerank_main
from drivers.threshold_mc import main as mc_main
from test_active import synthetic_landscape

COMMITTEE = """members:
  - {backend: ase, calculator: ase.calculators.emt.EMT, species: [Cu]}
  - {backend: ase, calculator: ase.calculators.emt.EMT, parameters: {asap_cutoff: true}, species: [Cu]}
"""
REFERENCE = "calculator: ase.calculators.emt.EMT\nparameters: {}\n"


def make_inputs(d: Path, n=6) -> dict:
    d = Path(d)
    write(d / "land.extxyz", synthetic_landscape(n, seed=1))
    (d / "committee.yaml").write_text(COMMITTEE)
    (d / "ref.yaml").write_text(REFERENCE)
    return {"structure": str(d / "land.extxyz"), "committee": str(d / "committee.yaml"),
            "reference": str(d / "ref.yaml"), "labels": str(d / "labels" / "labels.extxyz"),
            "out": str(d / "out"), "threshold": "1e-9", "extra": []}


def _gate(i, threshold=True):
    out = ["--committee", i["committee"], "--reference", i["reference"], "--labels", i["labels"]]
    return out + (["--threshold-forces-std-max-eVA", i["threshold"]] if threshold else [])


DRIVERS = {
    "relax": (relax_main, lambda i: [i["structure"], *_gate(i), "--out", i["out"], "--max-steps", "2",
                                     "--no-progress", *i["extra"]]),
    "mc": (mc_main, lambda i: [i["structure"], *_gate(i), "--out", i["out"], "--units", "atoms",
                               "--moves", "displace=1:0.05", "--lid-eV-per-atom", "0.1", "--steps", "2",
                               "--no-plots", *i["extra"]]),
    "md": (md_main, lambda i: [i["structure"], *_gate(i), "--out", i["out"], "--mode", "online",
                               "--steps", "2", "--write-interval", "1", *i["extra"]]),
    "qha": (qha_main, lambda i: [i["structure"], *_gate(i), "--out", i["out"], "--linear-scales",
                                 "0.99", "0.995", "1.0", "1.005", "1.01", "--relax", "none",
                                 "--supercell", "1", "--mesh", "2", "2", "2", "--tmax-K", "300",
                                 "--no-plots", *i["extra"]]),
    "learn": (learn_main, lambda i: [i["structure"], "--reference", i["reference"], "--out", i["out"],
                                     "--molecules", "none", "--threshold-mev-atom", i["threshold"],
                                     "--batch-size", "2", "--max-train-size", "4", "--n-members", "3",
                                     "--no-progress", *i["extra"]]),
    "rerank": (rerank_main, lambda i: [i["structure"], *_gate(i), "--molecules", "none",
                                       "--out", i["out"], "--no-progress", *i["extra"]]),
}
#: drivers without a --committee / --labels option
NO_COMMITTEE = {"learn"}
NO_LABELS = {"learn"}


def argv(driver: str, inputs: dict) -> list:
    return [str(x) for x in DRIVERS[driver][1](inputs)]
