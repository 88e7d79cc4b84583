"""Issue 19, hybrid QHA (``committee-qha --static-from-reference``): static E(V) from the reference
at each volume, phonons from the committee with the gate's fallback; EMT is the reference and a
perturbed-EMT committee (:mod:`test_relax_members`) the model."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from committee_calc.committee import CommitteeCalculator
from committee_calc.errors import ConfigError
from committee_calc.gate import Gate
from committee_calc.labels import LabelStore
from committee_calc.phonons.qha_io import read_qha_csv
from committee_calc.phonons.qha_run import QHAOptions, VolumeScan, run_qha_scan
from committee_calc.phonons.settings import PhononSettings
from test_relax_members import MEMBER_EPS, PerturbedEMT

pytestmark = pytest.mark.filterwarnings("ignore:Half-grid shift")
SCALES = (0.99, 0.995, 1.0, 1.005, 1.01, 1.015, 1.02, 1.025, 1.03)
SETTINGS = PhononSettings(supercell_matrix=2, distance_A=0.01, mesh=(8, 8, 8), t_min_K=0, t_max_K=800,
                          t_step_K=20)
#: forces_std_max above which a displaced supercell goes to the reference [eV/Å]: the compressed volume
THRESHOLD = "0.004"
OPTIONS = QHAOptions(plots=False)


def _qha(gate, out, hybrid=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_qha_scan(bulk("Cu", "fcc", a=3.59), gate, SETTINGS,
                            VolumeScan(linear_scales=SCALES, relax="none", static_from_reference=hybrid),
                            out, OPTIONS)


def _driver_argv(tmp_path, out, extra=()):
    bulk("Cu", "fcc", a=3.59).write(tmp_path / "cu.extxyz")
    members = "".join(f"  - {{backend: ase, calculator: test_relax_members.PerturbedEMT, parameters: "
                      f"{{eps: {e}}}}}\n" for e in MEMBER_EPS)
    (tmp_path / "committee.yaml").write_text(f"members:\n{members}")
    (tmp_path / "ref.yaml").write_text("calculator: ase.calculators.emt.EMT\n")
    return [str(tmp_path / "cu.extxyz"), "--committee", str(tmp_path / "committee.yaml"), "--out", str(out),
            "--linear-scales", *map(str, SCALES), "--relax", "none", "--supercell", "2", "--distance-A", "0.01",
            "--mesh", "8", "8", "8", "--tmin-K", "0", "--tmax-K", "800", "--tstep-K", "20", "--no-plots", *extra]


def test_hybrid_qha_is_closer_to_the_reference_and_counts_its_calls(tmp_path):
    """Acceptance: V(T) of the hybrid mode is closer to the reference-only QHA than committee-only;
    the reference is called once per volume (static) plus the gated displaced supercells."""
    from drivers.qha import main

    ref = _qha(Gate(CommitteeCalculator([EMT(), EMT()])), tmp_path / "reference").result
    committee = CommitteeCalculator([PerturbedEMT(e) for e in MEMBER_EPS])
    com_gate = Gate(committee, EMT(), thresholds={"forces_std_max_eVA": float(THRESHOLD)})
    com_run = _qha(com_gate, tmp_path / "committee")
    out = tmp_path / "hybrid"
    labels = tmp_path / "labels.extxyz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(_driver_argv(tmp_path, out, ["--static-from-reference", "--reference", str(tmp_path / "ref.yaml"),
                                               "--labels", str(labels), "--threshold-forces-std-max-eVA",
                                               THRESHOLD]))
    assert rc == 0
    hyb = read_qha_csv(out / "qha.csv")
    summary = json.loads((out / "qha_summary.json").read_text())

    v_ref, v_com = ref.mean_potential.volume_A3, com_run.result.mean_potential.volume_A3
    n = min(len(v_ref), len(hyb["V_A3"]))
    np.testing.assert_allclose(hyb["T_K"][:n], ref.mean_potential.temperatures_K[:n])
    d_com, d_hyb = np.abs(v_com[:n] - v_ref[:n]), np.abs(hyb["V_A3"][:n] - v_ref[:n])
    i300 = int(np.argmin(np.abs(hyb["T_K"][:n] - 300)))
    print(f"V(T) vs reference-only QHA [Å³/cell]: committee-only mean |ΔV| {d_com.mean():.4f} (300 K: "
          f"{d_com[i300]:.4f}), hybrid {d_hyb.mean():.4f} (300 K: {d_hyb[i300]:.4f}); reference calls: "
          f"{summary['n_reference_static']} static + {summary['n_reference_supercells']} supercells")
    assert d_hyb.mean() < 0.7 * d_com.mean() and d_hyb[i300] < d_com[i300]

    # reference calls: one static point per volume + the gated displaced supercells, all labelled
    assert summary["static_energies"] == "reference" and summary["n_reference_static"] == len(SCALES)
    assert summary["n_reference_supercells"] >= 1
    assert summary["n_reference_calls_this_run"] == len(SCALES) + summary["n_reference_supercells"]
    frames = LabelStore(labels).read()
    assert len(frames) == summary["n_reference_calls_this_run"]
    assert sum(bool(f.info.get("prov_qha_static")) for f in frames) == len(SCALES)
    # committee-only mode: no static reference points, its own gated supercells
    assert com_run.summary["static_energies"] == "committee" and com_run.summary["n_reference_static"] == 0
    assert com_gate.n_reference_calls == com_run.summary["n_reference_supercells"]

    # the committee spread is propagated: members share E(V), so V(T) spreads by the phonons only
    std_hyb, std_com = hyb["V_members_std_ddof1_A3"][:n], com_run.result.stats["volume_A3"]["std"][:n]
    assert np.all(std_hyb[1:] > 0) and std_hyb[0] < std_com[0]
    for col in ("B_T_members_std_ddof1_GPa", "C_P_members_std_ddof1_J_per_K_mol"):
        assert np.all(hyb[col][1:n] > 0), col

    # a rerun loads every volume (same inputs, hybrid key) and calls nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_driver_argv(tmp_path, out, ["--static-from-reference", "--reference", str(tmp_path / "ref.yaml"),
                                                 "--labels", str(labels), "--threshold-forces-std-max-eVA",
                                                 THRESHOLD])) == 0
    summary = json.loads((out / "qha_summary.json").read_text())
    assert summary["computed_volumes"] == [] and summary["n_reference_calls_this_run"] == 0


def test_static_from_reference_needs_a_reference(tmp_path, capsys):
    from drivers.qha import main

    out = tmp_path / "out"
    assert main(_driver_argv(tmp_path, out, ["--static-from-reference"])) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--static-from-reference" in last and "--reference" in last, last
    assert not out.exists()
    with pytest.raises(ConfigError, match="need a reference"):
        _qha(Gate(CommitteeCalculator([EMT(), EMT()])), tmp_path / "x", hybrid=True)
    assert not (tmp_path / "x").exists()
