"""Files of a QHA run: per-volume state (resumable), qha.csv, qha_members.csv,
qha_pressure.csv, imaginary_modes.csv, and phonopy-qha format inputs.

Per volume ``<out>/volumes/NN/``:
  ``phonopy_params.yaml``   phonopy state with the best-estimate forces (``phonopy.load`` it)
  ``thermal_properties.yaml`` phonopy's F_vib, S, C_V of the mean potential (kJ/mol, J/K/mol)
  ``forces.npz``            forces (S,N,3), forces_members (M,S,N,3), forces_std_max (S,) eV/Å
  ``structure.extxyz``      the (relaxed) structure used
  ``volume.json``           energies, decisions, imaginary modes; written last = "done"
Units are converted to user units only here (columns carry their unit).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, StructureReadError
from ..fileio import atomic_write_bytes, atomic_write_text, load_json, save_json_atomic
from ..units import PHONOPY_EV_A3_TO_GPA, PHONOPY_EV_TO_JMOL, PHONOPY_EV_TO_KJMOL
from .forces import ForceSet
from .qha import CommitteeQHA, QHAInputs
from .volumes import volume_point_from_forces


def volume_dir(out, index: int) -> Path:
    return Path(out) / "volumes" / f"{index:02d}"


def write_volume_point(out, index: int, point, settings_hash: str, extra=None) -> Path:
    """Write one finished volume (the json marker last, so a kill leaves it 'missing')."""
    from ase.io import write

    d = volume_dir(out, index)
    d.mkdir(parents=True, exist_ok=True)
    ph = point.phonons.mean.phonopy
    tmp = d / ".phonopy_params.yaml.tmp"
    ph.save(filename=str(tmp))
    os.replace(tmp, d / "phonopy_params.yaml")
    tmp = d / ".thermal_properties.yaml.tmp"
    ph.thermal_properties.write_yaml(filename=str(tmp), volume=ph.primitive.volume)
    os.replace(tmp, d / "thermal_properties.yaml")
    fs = point.phonons.forces
    buf = io.BytesIO()
    arrays = {"forces": fs.forces}
    if fs.forces_members is not None:
        arrays["forces_members"] = fs.forces_members
    if fs.forces_std_max is not None:
        arrays["forces_std_max"] = fs.forces_std_max
    np.savez(buf, **arrays)
    atomic_write_bytes(d / "forces.npz", buf.getvalue())
    sbuf = io.StringIO()
    write(sbuf, point.atoms, format="extxyz")
    atomic_write_text(d / "structure.extxyz", sbuf.getvalue())
    imag = {"mean": [list(q) + [f] for q, f in point.phonons.mean.imaginary_modes]}
    for k, m in enumerate(point.phonons.members):
        if m.imaginary_modes:
            imag[f"member{k}"] = [list(q) + [f] for q, f in m.imaginary_modes]
    save_json_atomic(d / "volume.json", dict(
        index=index, settings_hash=settings_hash, volume_A3=point.volume_A3,
        energy_eV=point.energy_eV,
        energies_members_eV=None if point.energies_members_eV is None
        else list(point.energies_members_eV),
        decisions=list(fs.decisions), label_indices=list(fs.label_indices),
        n_reference=fs.n_reference, imaginary_modes=imag, **(extra or {})))
    return d


def load_volume_point(out, index: int, settings, settings_hash: str):
    """The stored VolumePoint of volume ``index``, or None when it is not finished."""
    from ase.io import read

    d = volume_dir(out, index)
    meta = load_json(d / "volume.json")
    if meta is None:
        return None
    if meta.get("settings_hash") != settings_hash:
        raise ConfigError(
            f"{d} was computed with different settings (structure, phonon or relaxation "
            "options); use a new --out folder or the original options")
    with np.load(d / "forces.npz") as z:
        fs = ForceSet(forces=z["forces"],
                      forces_members=z["forces_members"] if "forces_members" in z else None,
                      forces_std_max=z["forces_std_max"] if "forces_std_max" in z else None,
                      decisions=tuple(meta["decisions"]),
                      label_indices=tuple(meta["label_indices"]))
    atoms = read(d / "structure.extxyz")
    return volume_point_from_forces(atoms, settings, meta["energy_eV"],
                                    meta.get("energies_members_eV"), fs)


def write_imaginary_csv(path, points) -> int:
    """``imaginary_modes.csv``: one row per imaginary mode of every volume's mean potential
    and members (volume_index, volume_A3, which, q1..q3, frequency_THz); returns the rows."""
    lines = ["volume_index,volume_A3,which,q1,q2,q3,frequency_THz"]
    for i, p in enumerate(points):
        for which, res in [("mean", p.phonons.mean)] + [
                (f"member{k}", m) for k, m in enumerate(p.phonons.members)]:
            for q, f in res.imaginary_modes:
                lines.append(f"{i},{p.volume_A3!r},{which},{q[0]},{q[1]},{q[2]},{f!r}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(lines) - 1


def write_pressure_csv(path, rows) -> None:
    """``qha_pressure.csv`` from :func:`committee_calc.phonons.qha.screen_pressures` rows
    (NaN lattice columns when no lattice parameters were fitted)."""
    lines = ["p_GPa,T_K,V_A3,V_members_std_A3,a_A,b_A,c_A,a_std_A,b_std_A,c_std_A"]
    for r in rows:
        lat = r["lattice_A"] if r["lattice_A"] is not None else [np.nan] * 3
        ls = r["lattice_std_A"] if r["lattice_std_A"] is not None else [np.nan] * 3
        lines.append(",".join(repr(float(v)) for v in [r["p"], r["T"], r["volume_A3"],
                                                        r["volume_std_A3"], *lat, *ls]))
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
QHA_COLUMNS = [
    ("V", "A3", "volume_A3", 1.0),
    ("G", "eV", "gibbs_eV", 1.0),
    ("B_T", "GPa", "bulk_modulus_eV_A3", PHONOPY_EV_A3_TO_GPA),
    ("beta_V", "per_K", "thermal_expansion_per_K", 1.0),
    ("C_P", "J_per_K_mol", "heat_capacity_P_eV_per_K", PHONOPY_EV_TO_JMOL),
    ("C_P_numerical", "J_per_K_mol", "heat_capacity_P_numerical_eV_per_K", PHONOPY_EV_TO_JMOL),
    ("gruneisen", "1", "gruneisen", 1.0),
]


def qha_table(result: CommitteeQHA) -> tuple:
    """(header, rows): T, then for each quantity the mean-potential value and the
    member mean and member std (ddof stated in the header)."""
    temps = result.temperatures_K
    mp = result.mean_potential
    sel = np.isin(mp.temperatures_K, temps)
    header = ["T_K"]
    cols = [temps]
    for name, unit, attr, f in QHA_COLUMNS:
        header += [f"{name}_{unit}", f"{name}_members_mean_{unit}",
                   f"{name}_members_std_ddof{result.ddof}_{unit}"]
        cols += [np.asarray(getattr(mp, attr))[sel] * f, result.stats[attr]["mean"] * f,
                 result.stats[attr]["std"] * f]
    if mp.lattice_A is not None and "lattice_A" in result.stats:
        for i, ax in enumerate("abc"):
            header += [f"{ax}_A", f"{ax}_members_mean_A", f"{ax}_members_std_ddof{result.ddof}_A"]
            cols += [mp.lattice_A[sel, i], result.stats["lattice_A"]["mean"][:, i],
                     result.stats["lattice_A"]["std"][:, i]]
    return header, np.column_stack(cols)


def write_qha_csv(path, result: CommitteeQHA) -> None:
    header, rows = qha_table(result)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([repr(float(x)) for x in r])
    atomic_write_text(path, buf.getvalue())


def write_members_csv(path, result: CommitteeQHA) -> None:
    """Long format: member, T_K and every quantity of each member's own QHA."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["member", "T_K"] + [f"{n}_{u}" for n, u, _, _ in QHA_COLUMNS])
    for k, m in enumerate(result.members):
        for i, t in enumerate(m.temperatures_K):
            w.writerow([k, repr(float(t))] + [repr(float(getattr(m, a)[i] * f))
                                              for _, _, a, f in QHA_COLUMNS])
    atomic_write_text(path, buf.getvalue())


def read_qha_csv(path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"{path} holds no rows")
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


# --- phonopy-qha style inputs ------------------------------------------------
def read_ev_dat(path) -> tuple:
    """(volumes Å³ (V,), energies eV (V,)) from a phonopy-qha e-v.dat (comments '#')."""
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise StructureReadError(f"cannot read E(V) from {path}: {exc}") from exc
    return data[:, 0].copy(), data[:, 1].copy()


def read_fe_v_dat(path) -> tuple:
    """(temperatures K (T,), electronic free energies eV (T, V)) from fe-v.dat."""
    data = np.loadtxt(path, comments="#", ndmin=2)
    return data[:, 0].copy(), data[:, 1:].copy()


def read_thermal_properties_yaml(path) -> dict:
    """phonopy thermal_properties.yaml -> temperatures_K, free_energy_eV,
    entropy_eV_per_K, heat_capacity_eV_per_K (T,) arrays, natom, volume_A3 (or None)."""
    import yaml

    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        tp = data["thermal_properties"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise StructureReadError(f"{path} is not a phonopy thermal_properties.yaml: {exc}") from exc
    get = lambda k: np.array([row[k] for row in tp], dtype=float)  # noqa: E731
    return dict(temperatures_K=get("temperature"), free_energy_eV=get("free_energy") / PHONOPY_EV_TO_KJMOL,
                entropy_eV_per_K=get("entropy") / PHONOPY_EV_TO_JMOL,
                heat_capacity_eV_per_K=get("heat_capacity") / PHONOPY_EV_TO_JMOL,
                natom=data.get("natom"), volume_A3=data.get("volume"))


def inputs_from_phonopy_files(ev_path, thermal_paths, fe_v_path=None):
    """QHAInputs from phonopy-qha files (e-v.dat, thermal_properties.yaml-NN, fe-v.dat)."""
    v, e = read_ev_dat(ev_path)
    tps = [read_thermal_properties_yaml(p) for p in thermal_paths]
    if len(tps) != len(v):
        raise ConfigError(f"{ev_path} lists {len(v)} volumes but {len(tps)} thermal-property "
                          "files were given; give one per volume, in the same order")
    temps = tps[0]["temperatures_K"]
    if any(len(t["temperatures_K"]) != len(temps) or
           not np.allclose(t["temperatures_K"], temps) for t in tps):
        raise ConfigError("the thermal_properties files use different temperature grids")
    stack = lambda k: np.array([t[k] for t in tps]).T  # noqa: E731
    efe = None
    if fe_v_path is not None:
        tf, efe = read_fe_v_dat(fe_v_path)
        if efe.shape[1] != len(v):
            raise ConfigError(f"{fe_v_path} has {efe.shape[1]} volume columns, expected {len(v)}")
        n = min(len(tf), len(temps))
        if not np.allclose(tf[:n], temps[:n]):
            raise ConfigError(f"{fe_v_path} temperatures do not match the thermal properties")
        temps, efe = temps[:n], efe[:n]
        return QHAInputs(v, e, temps, stack("free_energy_eV")[:n], stack("entropy_eV_per_K")[:n],
                         stack("heat_capacity_eV_per_K")[:n], electronic_free_energy_eV=efe)
    return QHAInputs(v, e, temps, stack("free_energy_eV"), stack("entropy_eV_per_K"),
                     stack("heat_capacity_eV_per_K"))
