"""Quasi-harmonic approximation over a set of volumes, with committee spreads.

Compute only (I/O in :mod:`committee_calc.phonons.qha_io`, plots in
:mod:`committee_calc.phonons.qha_plots`, structures in :mod:`committee_calc.phonons.volumes`).
The EOS fits are phonopy's own array engine (``phonopy.qha.core.QHA``, the code
behind ``phonopy-qha`` and ``run_qha``), so outputs match phonopy exactly.

Conventions (fixture traps):
* E and V are per **primitive cell**, the cell phonopy normalises F_vib to;
* the last temperature is used for finite differences: QHA arrays have one
  temperature fewer than the thermal-property grid;
* internal units eV, Å³, K, eV/Å³ (B), eV/K (C_P); converted at the output edge.

Committee aggregation, both reported:
* ``members`` — the full QHA for every member, then mean ± std over members
  (``stats``; sample std, ddof=1 by default);
* ``mean_potential`` — one QHA on the committee-mean energies and forces.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ..errors import ConfigError
from ..units import PHONOPY_EV_A3_TO_GPA, PHONOPY_EV_TO_JMOL, PHONOPY_EV_TO_KJMOL

#: fewest volumes an EOS fit accepts
MIN_VOLUMES = 5
EOS_NAMES = ("vinet", "birch_murnaghan", "murnaghan")
#: QHAData fields that carry a (N,) temperature series (aggregated over members)
SERIES = ("volume_A3", "gibbs_eV", "bulk_modulus_eV_A3", "thermal_expansion_per_K",
          "heat_capacity_P_eV_per_K", "heat_capacity_P_numerical_eV_per_K", "gruneisen")


class QHAWarning(UserWarning):
    """A QHA result that needs attention (volume range, extrapolation, imaginary modes)."""


@dataclasses.dataclass(frozen=True)
class QHAInputs:
    """Everything a QHA needs, per primitive cell; M members may be absent.

    volumes_A3              (V,)        Å³
    energies_eV             (V,)        eV, static E(V) (mean potential / best estimate)
    temperatures_K          (T,)        K, thermal-property grid
    free_energy_eV          (T, V)      eV, F_vib
    entropy_eV_per_K        (T, V)      eV/K
    heat_capacity_eV_per_K  (T, V)      eV/K, C_V
    *_members               (M, V) / (M, T, V) the same per member, or None
    lattice_A               (V, 3)      Å, conventional/unit-cell lengths a, b, c, or None
    electronic_free_energy_eV (T, V)    eV, replaces energies_eV when given (phonopy --efe)
    """

    volumes_A3: np.ndarray
    energies_eV: np.ndarray
    temperatures_K: np.ndarray
    free_energy_eV: np.ndarray
    entropy_eV_per_K: np.ndarray
    heat_capacity_eV_per_K: np.ndarray
    energies_members_eV: np.ndarray | None = None
    free_energy_members_eV: np.ndarray | None = None
    entropy_members_eV_per_K: np.ndarray | None = None
    heat_capacity_members_eV_per_K: np.ndarray | None = None
    lattice_A: np.ndarray | None = None
    electronic_free_energy_eV: np.ndarray | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                object.__setattr__(self, f.name, np.array(v, dtype=float))
        nv, nt = len(self.volumes_A3), len(self.temperatures_K)
        check_volume_count(nv)
        if self.energies_eV.shape != (nv,):
            raise ConfigError(f"energies_eV has shape {self.energies_eV.shape}, expected ({nv},)")
        for name in ("free_energy_eV", "entropy_eV_per_K", "heat_capacity_eV_per_K"):
            if getattr(self, name).shape != (nt, nv):
                raise ConfigError(f"{name} has shape {getattr(self, name).shape}, expected "
                                  f"(temperatures, volumes) = ({nt}, {nv})")
        if nt < 3 or np.any(np.diff(self.temperatures_K) <= 0):
            raise ConfigError("temperatures_K must hold >= 3 strictly increasing values")

    @property
    def n_members(self) -> int:
        return 0 if self.energies_members_eV is None else len(self.energies_members_eV)

    def member(self, k: int) -> QHAInputs:
        """The inputs of member k alone."""
        return QHAInputs(self.volumes_A3, self.energies_members_eV[k], self.temperatures_K,
                         self.free_energy_members_eV[k], self.entropy_members_eV_per_K[k],
                         self.heat_capacity_members_eV_per_K[k], lattice_A=self.lattice_A)


@dataclasses.dataclass(frozen=True)
class QHAData:
    """One QHA fit; every (N,) series is at ``temperatures_K`` (N = T − 1, or fewer).

    temperatures_K                     (N,) K
    volume_A3                          (N,) Å³ per primitive cell, equilibrium V(T)
    gibbs_eV                           (N,) eV per primitive cell, G(T, p)
    bulk_modulus_eV_A3                 (N,) eV/Å³, isothermal B_T
    thermal_expansion_per_K            (N,) 1/K, volumetric β = (1/V) dV/dT (linear = β/3)
    heat_capacity_P_eV_per_K           (N,) eV/K, C_P from polyfits of C_V(V), S(V) (NaN with efe)
    heat_capacity_P_numerical_eV_per_K (N,) eV/K, C_P = −T d²G/dT²
    gruneisen                          (N,) 1, thermodynamic γ
    eos_parameters                     (N, 4) E0 eV, B0 eV/Å³, B0', V0 Å³
    lattice_A                          (N, 3) Å, a, b, c at V(T), or None
    volumes_A3 (V,), pressure_GPa, eos: the grid and settings used.
    """

    temperatures_K: np.ndarray
    volume_A3: np.ndarray
    gibbs_eV: np.ndarray
    bulk_modulus_eV_A3: np.ndarray
    thermal_expansion_per_K: np.ndarray
    heat_capacity_P_eV_per_K: np.ndarray
    heat_capacity_P_numerical_eV_per_K: np.ndarray
    gruneisen: np.ndarray
    eos_parameters: np.ndarray
    lattice_A: np.ndarray | None
    volumes_A3: np.ndarray
    pressure_GPa: float | None
    eos: str


@dataclasses.dataclass(frozen=True)
class CommitteeQHA:
    """QHA of a committee by both aggregation strategies.

    mean_potential: QHAData on the committee-mean E(V) and F_vib (one fit).
    members: tuple of QHAData, one per member (empty for a single calculator).
    stats: {series name: {"mean": (N,), "std": (N,)}} over ``members``, at
           ``temperatures_K`` (the temperatures every member kept); std with ``ddof``.
    """

    mean_potential: QHAData
    members: tuple
    stats: dict
    temperatures_K: np.ndarray
    ddof: int = 1


# ---------------------------------------------------------------------------
def check_volume_count(n: int) -> None:
    if n < MIN_VOLUMES:
        raise ConfigError(
            f"an EOS fit needs at least {MIN_VOLUMES} volumes, got {n}; add volumes "
            "(e.g. 7–11 points spanning about ±3 % in lattice constant around the minimum)")


def check_eos(eos: str) -> str:
    if eos not in EOS_NAMES:
        raise ConfigError(f"unknown EOS {eos!r}; use one of {EOS_NAMES}")
    return eos


def fit_static_eos(volumes_A3, energies_eV, eos: str = "vinet") -> np.ndarray:
    """EOS fit of E(V): [E0 eV, B0 eV/Å³, B0', V0 Å³] (phonopy's fitter)."""
    from phonopy.qha.eos import fit_to_eos, get_eos

    check_volume_count(len(volumes_A3))
    p = fit_to_eos(np.asarray(volumes_A3, float), np.asarray(energies_eV, float),
                   get_eos(check_eos(eos)))
    if p is None or not np.all(np.isfinite(p)):
        raise ConfigError("the EOS fit of E(V) failed: check that E(V) has a minimum inside "
                          "the volume range")
    return np.asarray(p, dtype=float)


def check_bracket(volumes_A3, energies_eV, eos: str = "vinet", pressure_GPa=None) -> bool:
    """Warn (QHAWarning) when the volume range does not bracket the E(V)+pV minimum."""
    v = np.asarray(volumes_A3, float)
    e = np.asarray(energies_eV, float)
    if pressure_GPa:
        e = e + v * pressure_GPa / PHONOPY_EV_A3_TO_GPA
    i = int(np.argmin(e))
    try:
        v0 = float(fit_static_eos(v, e, eos)[3])
    except Exception:  # noqa: BLE001 - a failed fit is reported below
        v0 = float("nan")
    inside = 0 < i < len(v) - 1 and np.isfinite(v0) and v.min() <= v0 <= v.max()
    if not inside:
        warnings.warn(
            f"the volumes {v.min():.4f}–{v.max():.4f} Å³ do not bracket the minimum of E(V)"
            f"{' + pV' if pressure_GPa else ''}: the lowest energy is at volume {i} "
            f"and the fitted minimum is V0 = {v0:.4f} Å³. Extend the volume range around V0.",
            QHAWarning, stacklevel=2)
    return bool(inside)


def run_qha_arrays(inputs: QHAInputs, eos: str = "vinet", pressure_GPa: float | None = None,
                   t_max_K: float | None = None) -> QHAData:
    """QHA of one potential from arrays (phonopy.qha.core.QHA underneath)."""
    from phonopy.qha.core import QHA

    check_eos(eos)
    el = inputs.energies_eV if inputs.electronic_free_energy_eV is None \
        else inputs.electronic_free_energy_eV
    q = QHA(inputs.volumes_A3, el, inputs.temperatures_K, inputs.heat_capacity_eV_per_K * PHONOPY_EV_TO_JMOL,
            inputs.entropy_eV_per_K * PHONOPY_EV_TO_JMOL, inputs.free_energy_eV * PHONOPY_EV_TO_KJMOL,
            pressure=pressure_GPa, eos=eos, t_max=t_max_K)
    q.run()
    n = len(q.thermal_expansion)
    temps = np.array(q._temperatures[:n])
    vol = np.array(q.volume_temperature)
    try:
        cp = np.array(q.heat_capacity_P_polyfit) / PHONOPY_EV_TO_JMOL
    except NotImplementedError:  # temperature-dependent electronic free energy
        cp = np.full(n, np.nan)
    lattice = None
    if inputs.lattice_A is not None:
        from phonopy.qha.lattice import LatticeParametersFit

        try:
            lattice = LatticeParametersFit(inputs.volumes_A3, inputs.lattice_A).evaluate(vol)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"lattice parameters vs volume not fitted: {exc}", QHAWarning,
                          stacklevel=2)
    _check_extrapolation(inputs.volumes_A3, vol, temps)
    return QHAData(
        temperatures_K=temps, volume_A3=vol, gibbs_eV=np.array(q.gibbs_temperature),
        bulk_modulus_eV_A3=np.array(q.bulk_modulus_temperature) / PHONOPY_EV_A3_TO_GPA,
        thermal_expansion_per_K=np.array(q.thermal_expansion), heat_capacity_P_eV_per_K=cp,
        heat_capacity_P_numerical_eV_per_K=np.array(q.heat_capacity_P_numerical) / PHONOPY_EV_TO_JMOL,
        gruneisen=np.array(q.gruneisen_temperature),
        eos_parameters=np.array(q._equiv_parameters[:n]), lattice_A=lattice,
        volumes_A3=np.array(inputs.volumes_A3), pressure_GPa=pressure_GPa, eos=eos)


def _check_extrapolation(volumes, vol_T, temps) -> None:
    out = (vol_T < volumes.min()) | (vol_T > volumes.max())
    if np.any(out):
        t = temps[np.argmax(out)]
        warnings.warn(
            f"V(T) leaves the sampled volume range {volumes.min():.4f}–{volumes.max():.4f} Å³ "
            f"from T = {t:g} K on: those results are EOS extrapolations. Add larger volumes "
            "or lower the maximum temperature.", QHAWarning, stacklevel=3)


def member_stats(results, ddof: int = 1):
    """Mean and std over members of every QHA series, on the common temperatures."""
    temps = results[0].temperatures_K
    for r in results[1:]:
        temps = np.intersect1d(temps, r.temperatures_K)
    stats = {}
    for name in SERIES:
        stack = np.array([getattr(r, name)[np.isin(r.temperatures_K, temps)] for r in results])
        stats[name] = {"mean": stack.mean(axis=0),
                       "std": stack.std(axis=0, ddof=ddof) if len(results) > ddof
                       else np.zeros(len(temps))}
    lat = [r.lattice_A for r in results]
    if all(x is not None for x in lat):
        stack = np.array([x[np.isin(r.temperatures_K, temps)] for x, r in zip(lat, results)])
        stats["lattice_A"] = {"mean": stack.mean(axis=0),
                              "std": stack.std(axis=0, ddof=ddof) if len(results) > ddof
                              else np.zeros_like(stack[0])}
    return temps, stats


def run_committee_qha(inputs: QHAInputs, eos: str = "vinet", pressure_GPa: float | None = None,
                      t_max_K: float | None = None, ddof: int = 1,
                      check: bool = True) -> CommitteeQHA:
    """Both aggregation strategies: QHA per member (+ stats) and QHA on the mean potential."""
    if check:
        check_bracket(inputs.volumes_A3, inputs.energies_eV, eos, pressure_GPa)
    mean = run_qha_arrays(inputs, eos, pressure_GPa, t_max_K)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QHAWarning)
        members = tuple(run_qha_arrays(inputs.member(k), eos, pressure_GPa, t_max_K)
                        for k in range(inputs.n_members))
    _warn_once_for_members(caught, inputs.n_members)
    if members:
        temps, stats = member_stats(members, ddof)
    else:
        temps = mean.temperatures_K
        stats = {name: {"mean": np.array(getattr(mean, name)),
                        "std": np.zeros(len(temps))} for name in SERIES}
    return CommitteeQHA(mean_potential=mean, members=members, stats=stats, temperatures_K=temps,
                        ddof=ddof)


def _warn_once_for_members(caught, n_members: int) -> None:
    """Re-emit the members' QHA warnings once per kind (the line that raised it), saying how many
    members raised it; other warnings pass through unchanged."""
    kinds: dict = {}
    for w in caught:
        if not issubclass(w.category, QHAWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        kinds.setdefault((w.filename, w.lineno), []).append(str(w.message))
    for msgs in kinds.values():
        warnings.warn(f"{len(msgs)} of {n_members} committee members: {msgs[0]}", QHAWarning,
                      stacklevel=3)


def inputs_from_points(points, energies_members=None, lattice_A=None) -> QHAInputs:
    """QHAInputs from per-volume (energy_eV, PhononResult) pairs, per primitive cell.

    ``points``: sequence of (energy_eV per primitive cell, PhononResult);
    ``energies_members``: (M, V) eV per primitive cell, or None.
    """
    energies = np.array([e for e, _ in points], dtype=float)
    ph = [p for _, p in points]
    temps = ph[0].mean.temperatures_K
    stack = lambda attr, res: np.array([getattr(r, attr) for r in res]).T  # noqa: E731
    kw = {}
    nm = {len(p.members) for p in ph}
    if energies_members is not None and nm != {0}:
        if len(nm) != 1 or nm.pop() != len(energies_members):
            raise ConfigError("every volume needs results for the same committee members")
        kw = dict(
            energies_members_eV=np.asarray(energies_members, float),
            free_energy_members_eV=np.array([stack("free_energy_eV", [p.members[k] for p in ph])
                                             for k in range(len(energies_members))]),
            entropy_members_eV_per_K=np.array([stack("entropy_eV_per_K", [p.members[k] for p in ph])
                                               for k in range(len(energies_members))]),
            heat_capacity_members_eV_per_K=np.array(
                [stack("heat_capacity_eV_per_K", [p.members[k] for p in ph])
                 for k in range(len(energies_members))]))
    return QHAInputs(
        volumes_A3=np.array([p.mean.primitive_volume_A3 for p in ph]), energies_eV=energies,
        temperatures_K=temps, free_energy_eV=stack("free_energy_eV", [p.mean for p in ph]),
        entropy_eV_per_K=stack("entropy_eV_per_K", [p.mean for p in ph]),
        heat_capacity_eV_per_K=stack("heat_capacity_eV_per_K", [p.mean for p in ph]),
        lattice_A=lattice_A, **kw)


def screen_pressures(inputs: QHAInputs, pressures_GPa, temperature_K: float = 300.0,
                     eos: str = "vinet", t_max_K: float | None = None, ddof: int = 1) -> list:
    """The QHA at each pressure, read at the temperature nearest ``temperature_K`` [K].

    Returns one dict per pressure: ``p`` GPa, ``T`` K, ``volume_A3`` (mean potential,
    per primitive cell), ``volume_std_A3`` (member std), ``lattice_A`` (3,) Å or None,
    ``lattice_std_A`` (3,) Å or None.
    """
    rows = []
    for p in pressures_GPa:
        r = run_committee_qha(inputs, eos=eos, pressure_GPa=p, t_max_K=t_max_K, ddof=ddof)
        t = r.temperatures_K
        j = int(np.argmin(np.abs(t - temperature_K)))
        mp_j = int(np.argmin(np.abs(r.mean_potential.temperatures_K - t[j])))
        lat = r.mean_potential.lattice_A
        rows.append(dict(
            p=p, T=float(t[j]), volume_A3=float(r.mean_potential.volume_A3[mp_j]),
            volume_std_A3=float(r.stats["volume_A3"]["std"][j]),
            lattice_A=None if lat is None else lat[mp_j],
            lattice_std_A=r.stats["lattice_A"]["std"][j] if "lattice_A" in r.stats else None))
    return rows
