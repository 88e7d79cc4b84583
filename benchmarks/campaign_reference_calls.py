"""Reference calls of the active relaxation campaign against reference-only relaxations (slow).

    .venv/bin/python benchmarks/campaign_reference_calls.py [--only ID ...] [--skip-campaign]

Pool: the polymorph-ranking demo's candidates (``examples/si_demo/candidates.extxyz``: the five
known Si polymorphs under symmetry-keeping strains, a rattled diamond cell, two random Si8
cells).  Reference: GPAW (``examples/si_demo/reference.yaml``).
(a) every candidate relaxed by GPAW alone: BFGS on positions + cell (``FrechetCellFilter``),
    starting space group kept (``FixSymmetry``), until the largest atomic force ≤ 0.05 eV/Å and
    the residual stress ≤ 0.1 GPa (the demo's verification targets); every step one GPAW call.
(b) the campaign of the demo (``examples/si_demo/demo_settings.py``: the Δ-MACE committee on
    CHGNet, GPAW verification and polish, retraining between rounds), from scratch.
Prints per candidate the reference calls of each, the final GPAW energies and their difference
[meV/atom], whether both reached the same minimum (space group at 0.1 Å and volume per atom
within 2 %), then the totals, their ratio and the wall times.  Writes
``benchmarks/out/campaign_reference_calls.{json,txt,png}`` (the demo reads the JSON for its
reference ranking and shows the PNG).  Resumable: each finished reference-only relaxation is
kept in ``build/bench_campaign/ref_only/<id>.json``; ``--only`` runs just those candidates of (a)
(to spread (a) over processes) and skips (b) and the report; ``--campaign-dir`` reuses a
finished campaign of the same pool and settings (the demo's ``demo_output/campaign``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "si_demo")]
WORK = ROOT / "build" / "bench_campaign"
OUT = ROOT / "benchmarks" / "out"


def reference_only(atoms, reference_yaml, settings, workdir) -> dict:
    """GPAW-only relaxation of ``atoms`` -> {energy_per_atom_eV, reference_calls, converged, ...}."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter

    from committee_calc.reference import load_reference
    from committee_calc.relax.criteria import convergence
    from committee_calc.relax.policy import optimizer_class

    a = atoms.copy()
    a.set_constraint(FixSymmetry(a))
    a.calc = load_reference(reference_yaml).build(str(workdir))
    target = FrechetCellFilter(a)
    calls, t0 = 0, time.time()
    check = None
    opt = optimizer_class(settings["optimizer"])(target, logfile=None)
    for _ in opt.irun(fmax=0.0, steps=settings["max_steps"]):
        calls += 1
        check = convergence(target, a, settings["fmax"], True, settings["stress_tol_GPa"])
        print(f"  {atoms.info['candidate_id']} step {calls}: E = {a.get_potential_energy() / len(a):.5f} "
              f"eV/atom, {check.describe(settings['fmax'], settings['stress_tol_GPa'])}", flush=True)
        if check.converged:
            break
    final = a.copy()
    final.set_constraint()
    final.calc = None
    return {"energy_per_atom_eV": a.get_potential_energy() / len(a), "reference_calls": calls,
            "converged": bool(check and check.converged), "fmax_eVA": check.atom_fmax if check else None,
            "stress_GPa": check.stress_GPa if check else None, "seconds": time.time() - t0,
            "cell": final.cell[:].tolist(), "positions": final.positions.tolist()}


def same_minimum(a, b) -> bool:
    """Same space group (spglib, 0.1 Å) and volume per atom within 2 %."""
    import spglib

    def sg(x):
        return spglib.get_spacegroup((x.cell[:], x.get_scaled_positions(), x.numbers), symprec=0.1)
    va, vb = a.get_volume() / len(a), b.get_volume() / len(b)
    return sg(a) == sg(b) and abs(va - vb) / vb < 0.02


def plot(rows, path):
    import numpy as np

    from committee_calc.plotting import pyplot, save_figure

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["reference_only_calls"] for r in rows], 0.4, label="GPAW only", color="0.55")
    ax.bar(x + 0.2, [r["campaign_calls"] for r in rows], 0.4, label="campaign", color="C0")
    ax.set_xticks(x, [r["id"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GPAW calls per candidate")
    ax.legend(fontsize=8)
    ax.set_title("reference calls to a verified minimum", fontsize=10)
    for i, r in enumerate(rows):
        if r["same_minimum"] and r["delta_meV_atom"] is not None:
            bx.plot([i], [r["delta_meV_atom"]], "o", color="C2")
            bx.annotate(f"{r['delta_meV_atom']:+.2f}", (i, r["delta_meV_atom"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
        else:
            bx.annotate("other\nminimum" if r["delta_meV_atom"] is not None else "no GPAW\nenergy", (i, 0.0),
                        ha="center", va="center", fontsize=7, color="0.5")
    bx.axhline(5, color="C3", lw=0.8, ls="--", label="±5 meV/atom")
    bx.axhline(-5, color="C3", lw=0.8, ls="--")
    bx.set_ylim(-6, 6)
    bx.legend(fontsize=8, loc="lower right")
    bx.set_xticks(x, [r["id"] for r in rows], rotation=30, ha="right", fontsize=8)
    bx.set_ylabel("E(campaign) − E(GPAW only) [meV/atom]")
    bx.set_title("final GPAW energies where both reach the same minimum", fontsize=10)
    return save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="reference-only relaxations of these ids only")
    p.add_argument("--campaign-dir", default=str(WORK / "campaign"),
                   help="campaign folder (resumed; a finished one, e.g. the demo's demo_output/campaign "
                        "with the same pool and settings, is only read)")
    args = p.parse_args(argv)
    import demo_settings as S
    from ase import Atoms
    from ase.io import read

    from committee_calc.campaign import run_campaign
    from committee_calc.campaign.runner import campaign_seconds

    cands = read(S.CANDIDATES, ":")
    ids = [a.info["candidate_id"] for a in cands]
    (WORK / "ref_only").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ref = {}
    for a, cid in zip(cands, ids):
        f = WORK / "ref_only" / f"{cid}.json"
        if args.only is not None and cid not in args.only:
            if f.exists():
                ref[cid] = json.loads(f.read_text())
            continue
        if not f.exists():
            print(f"(a) GPAW-only relaxation of {cid} ...", flush=True)
            f.write_text(json.dumps(reference_only(a, S.REFERENCE, S.REFERENCE_ONLY, WORK / "gpaw")))
        ref[cid] = json.loads(f.read_text())
    t_ref = sum(r["seconds"] for r in ref.values())
    if args.only is not None:
        return 0
    t1 = time.time()
    out = Path(args.campaign_dir)
    res = run_campaign(cands, S.COMMITTEE, S.REFERENCE, out, ids=ids, progress=print, **S.CAMPAIGN)
    rows_c = res.candidates
    t_campaign = time.time() - t1
    t_campaign = campaign_seconds(res.rounds)  # its stages' wall time over all its runs
    finals = {a.info["candidate"]: a for a in read(out / "final.extxyz", ":")}
    rows = []
    for a, cid in zip(cands, ids):
        c = next(r for r in rows_c if r["id"] == cid)
        r = ref[cid]
        b = Atoms(a.numbers, positions=r["positions"], cell=r["cell"], pbc=True)
        e_c = c["reference_energy_per_atom_eV"]
        e_c = None if e_c in (None, "") else float(e_c)
        same = same_minimum(finals[cid], b)
        rows.append({"id": cid, "reference_only_calls": r["reference_calls"],
                     "reference_only_converged": r["converged"],
                     "reference_only_energy_per_atom_eV": r["energy_per_atom_eV"],
                     "reference_only_volume_A3_atom": b.get_volume() / len(b),
                     "campaign_calls": int(c["reference_calls"]), "campaign_status": c["status"],
                     "campaign_reference_energy_per_atom_eV": e_c, "same_minimum": same,
                     "delta_meV_atom": None if e_c is None else 1e3 * (e_c - r["energy_per_atom_eV"])})
    n_ref = sum(r["reference_only_calls"] for r in rows)
    n_c = sum(r["campaign_calls"] for r in rows)
    same = [abs(r["delta_meV_atom"]) for r in rows if r["same_minimum"] and r["delta_meV_atom"] is not None]
    lines = [f"{'id':<18s} {'GPAW-only calls':>15s} {'campaign calls':>14s} {'E GPAW-only':>12s} "
             f"{'E campaign':>11s} {'ΔE meV/atom':>11s} {'same min.':>9s} {'campaign status':>16s}"]
    for r in rows:
        e_c = r["campaign_reference_energy_per_atom_eV"]
        lines.append(f"{r['id']:<18s} {r['reference_only_calls']:>15d} {r['campaign_calls']:>14d} "
                     f"{r['reference_only_energy_per_atom_eV']:>12.5f} "
                     f"{'-' if e_c is None else format(e_c, '.5f'):>11s} "
                     f"{'-' if r['delta_meV_atom'] is None else format(r['delta_meV_atom'], '+.2f'):>11s} "
                     f"{'yes' if r['same_minimum'] else 'no':>9s} {r['campaign_status']:>16s}")
    lines.append(f"total: GPAW-only {n_ref} calls ({t_ref:.0f} s of GPAW relaxations), campaign {n_c} calls "
                 f"({t_campaign:.0f} s wall, training included); ratio campaign/GPAW-only = {n_c / n_ref:.3f}")
    lines.append(f"same minimum in {len(same)} of {len(rows)} candidates; largest |ΔE| there "
                 f"{max(same) if same else float('nan'):.2f} meV/atom")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "campaign_reference_calls.txt").write_text(text + "\n")
    (OUT / "campaign_reference_calls.json").write_text(json.dumps(
        {"rows": rows, "reference_only_calls": n_ref, "campaign_calls": n_c, "ratio": n_c / n_ref,
         "reference_only_seconds": t_ref, "campaign_seconds": t_campaign,
         "max_abs_delta_same_minimum_meV_atom": max(same) if same else None,
         "settings": {"campaign": S.CAMPAIGN, "reference_only": S.REFERENCE_ONLY}}, indent=1, default=float))
    plot(rows, OUT / "campaign_reference_calls.png")
    print(f"wrote benchmarks/out/campaign_reference_calls.{{txt,json,png}} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
