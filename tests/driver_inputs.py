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

from ase.calculators.emt import EMT
from ase.io import write

from committee_calc.train import train_committee
from drivers.active_learn import main as learn_main
from drivers.calibrate import main as calibrate_main
from drivers.campaign import main as campaign_main
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


def _ridge_committee(d: Path) -> str:
    """A committee with a ``training:`` section (what committee-campaign fine-tunes): 4 ridge
    members trained in-process on EMT labels of the landscape's structures."""
    seed = synthetic_landscape(6, seed=2, baseline=False)
    for a in seed:
        a.calc = EMT()
        a.info["REF_energy"], a.arrays["REF_forces"] = a.get_potential_energy(), a.get_forces()
        a.calc = None
    write(d / "seed.extxyz", seed)
    return train_committee(d / "seed.extxyz", d / "ridge", backend="ridge", n_members=4, bootstrap=True,
                           model_options={"r_cut": 4.5, "n_basis": 8, "ridge": 1e-6})


def make_inputs(d: Path, n=6, training=False) -> dict:
    """Tiny inputs in ``d``; ``training``: the committee is one with a ``training:`` section."""
    d = Path(d)
    write(d / "land.extxyz", synthetic_landscape(n, seed=1))
    (d / "committee.yaml").write_text(COMMITTEE)
    (d / "ref.yaml").write_text(REFERENCE)
    committee = _ridge_committee(d) if training else str(d / "committee.yaml")
    return {"structure": str(d / "land.extxyz"), "committee": committee,
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
    "campaign": (campaign_main, lambda i: [i["structure"], "--committee", i["committee"], "--reference",
                                           i["reference"], "--threshold-forces-std-max-eVA", i["threshold"],
                                           "--out", i["out"], "--max-rounds", "1", "--max-steps", "2",
                                           *i["extra"]]),
    # the landscape has no reference values: --reference labels every frame before calibrating
    "calibrate": (calibrate_main, lambda i: [i["structure"], "--committee", i["committee"], "--reference",
                                             i["reference"], "--out", i["out"], "--threshold-forces-std-max-eVA",
                                             i["threshold"], "--no-plots", *i["extra"]]),
}
#: drivers without a --committee / --labels option
NO_COMMITTEE = {"learn"}
NO_LABELS = {"learn", "campaign", "calibrate"}
#: drivers whose committee must carry a training: section
NEEDS_TRAINING = {"campaign"}


def argv(driver: str, inputs: dict) -> list:
    return [str(x) for x in DRIVERS[driver][1](inputs)]
