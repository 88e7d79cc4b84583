"""Temperature schedules and ASE integrators for committee MD (with full state save/restore).

``TemperatureSchedule`` gives the thermostat target [K] at every step: constant,
linear ramp, or a list of set points (held in equal segments, or linearly
interpolated).  ``make_integrator`` builds one of the ASE integrators below with
pressure given in GPa (converted to eV/Å³ here, the only place):

=============  ===============================================  ==============
ensemble       ASE class                                        cell
=============  ===============================================  ==============
``mtk_iso``    ``nose_hoover_chain.IsotropicMTKNPT``            isotropic NPT
``mtk``        ``nose_hoover_chain.MTKNPT``                     full-cell NPT
``langevin``   ``langevinbaoab.LangevinBAOAB`` (Langevin-Hoover) NPT, iso/aniso
``berendsen``  ``nptberendsen.NPTBerendsen`` (Inhomogeneous_)   weak coupling
``nvt``        ``nose_hoover_chain.NoseHooverChainNVT``          fixed cell
``nve``        ``verlet.VelocityVerlet``                        fixed cell
=============  ===============================================  ==============

User constraints: ``nvt`` (Nose-Hoover chain, thermostat on the free degrees of
freedom) keeps :data:`NVT_CONSTRAINTS`, ``nve`` keeps every ASE constraint; the
cell-changing ensembles refuse constraints (:func:`check_constraints`).

``set_target_temperature(dyn, T)`` moves the thermostat target (and the
barostat's kT) without touching the fixed thermostat/barostat masses, so a
ramp acts on every step.  ``integrator_state``/``restore_integrator_state``
capture everything the next step depends on (positions, momenta, cell, chain
variables, masses, RNG state) as JSON-able data, so a resumed run continues
bit-for-bit.
"""
from __future__ import annotations

import numpy as np
from ase import units

from ..errors import ConfigError
from ..structures import is_bulk
from ..units import check_positive, gpa_to_ev_per_a3

ENSEMBLES = ("mtk_iso", "mtk", "langevin", "berendsen", "nvt", "nve")
NPT_ENSEMBLES = ("mtk_iso", "mtk", "langevin", "berendsen")
#: ASE constraints the Nose-Hoover chain (nvt) integrates correctly: linear projections of
#: positions, momenta and forces (VelocityVerlet, nve, applies every ASE constraint)
NVT_CONSTRAINTS = ("FixAtoms", "FixCartesian", "FixedLine", "FixedPlane", "FixCom")


def active_constraints(atoms) -> list:
    """The constraints of ``atoms`` that hold something (an empty ``FixAtoms`` is dropped)."""
    return [c for c in atoms.constraints if not (type(c).__name__ == "FixAtoms" and len(c.index) == 0)]


def check_constraints(atoms, ensemble: str) -> None:
    """Refuse (ConfigError) user constraints an integrator would not keep.

    The cell-changing ensembles move every atom with the cell (ASE's MTK integrators do
    not support constraints at all), so a structure with constraints runs in ``nvt``
    (:data:`NVT_CONSTRAINTS`) or ``nve`` (any ASE constraint) only.
    """
    names = [type(c).__name__ for c in active_constraints(atoms)]
    if not names:
        return
    if ensemble in NPT_ENSEMBLES:
        raise ConfigError(f"the structure has constraints {names}, but ensemble {ensemble!r} changes "
                          "the cell and moves every atom with it; use ensemble 'nvt' or 'nve' for a "
                          "structure with fixed atoms, or remove the constraints")
    bad = [n for n in names if n not in NVT_CONSTRAINTS]
    if ensemble == "nvt" and bad:
        raise ConfigError(f"ensemble 'nvt' (Nose-Hoover chain) keeps only the constraints "
                          f"{NVT_CONSTRAINTS}, not {bad}; use ensemble 'nve' (VelocityVerlet "
                          "applies every ASE constraint)")


class TemperatureSchedule:
    """Thermostat target temperature [K] as a function of the MD step.

    Parameters
    ----------
    setpoints_K:
        one value (constant), or several set points visited in order over
        ``n_steps`` steps.
    n_steps:
        length of the schedule in steps (after it, the last set point holds).
    mode:
        ``"ramp"``: linear interpolation between the set points (two set points =
        a linear ramp); ``"hold"``: each set point held for an equal share of the run.
    """

    def __init__(self, setpoints_K, n_steps: int = 1, mode: str = "ramp"):
        pts = np.atleast_1d(np.asarray(setpoints_K, dtype=float))
        if pts.size == 0:
            raise ConfigError("a temperature schedule needs at least one set point")
        for t in pts:
            check_positive("temperature_K", float(t))
        if mode not in ("ramp", "hold"):
            raise ConfigError(f"temperature schedule mode must be 'ramp' or 'hold', got {mode!r}")
        if int(n_steps) < 1:
            raise ConfigError(f"n_steps must be >= 1, got {n_steps}")
        self.setpoints_K = pts
        self.n_steps = int(n_steps)
        self.mode = mode

    @classmethod
    def parse(cls, text, n_steps: int, mode: str = "ramp") -> TemperatureSchedule:
        """``"300"`` constant, ``"100:400"`` ramp, ``"100,200,300,400"`` set points."""
        s = str(text).strip()
        sep = ":" if ":" in s else ","
        parts = s.split(sep)
        try:  # an empty part ("100,,200", "100:") is a typo, not a set point to skip
            if any(not x.strip() for x in parts) or (sep == ":" and len(parts) != 2):
                raise ValueError(text)
            pts = [float(x) for x in parts]
        except ValueError:
            raise ConfigError(f"--temperature-K {text!r} must be a number, 'T0:T1' or 'T1,T2,...' "
                              "in K (no empty entries)") from None
        return cls(pts, n_steps, "ramp" if sep == ":" else mode)

    @property
    def is_constant(self) -> bool:
        return bool(np.all(self.setpoints_K == self.setpoints_K[0]))

    def __call__(self, step: int) -> float:
        pts = self.setpoints_K
        if len(pts) == 1:
            return float(pts[0])
        x = min(max(step, 0), self.n_steps) / self.n_steps  # fraction of the run, 0..1
        if self.mode == "ramp":
            return float(np.interp(x, np.linspace(0.0, 1.0, len(pts)), pts))
        return float(pts[min(int(x * len(pts)), len(pts) - 1)])

    def to_dict(self) -> dict:
        return {"setpoints_K": self.setpoints_K.tolist(), "n_steps": self.n_steps, "mode": self.mode}

    def __repr__(self):
        return f"TemperatureSchedule({self.setpoints_K.tolist()}, n_steps={self.n_steps}, mode={self.mode!r})"


def make_integrator(atoms, ensemble: str, timestep_fs: float, temperature_K: float,
                    pressure_GPa: float = 0.0, tdamp_fs: float | None = None,
                    pdamp_fs: float | None = None, compressibility_per_GPa: float = 1.0e-2,
                    hydrostatic: bool = True, seed: int = 0):
    """An ASE integrator on ``atoms`` (its calculator must already be set).

    ``tdamp_fs``/``pdamp_fs`` default to 100/1000 timesteps (the ASE advice);
    ``compressibility_per_GPa`` is only used by Berendsen.
    """
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble {ensemble!r}; use one of {ENSEMBLES}")
    dt_fs = check_positive("timestep_fs", timestep_fs)
    temperature_K = check_positive("temperature_K", temperature_K)
    tdamp = check_positive("tdamp_fs", tdamp_fs if tdamp_fs is not None else 100 * dt_fs) * units.fs
    pdamp = check_positive("pdamp_fs", pdamp_fs if pdamp_fs is not None else 1000 * dt_fs) * units.fs
    p_au = gpa_to_ev_per_a3(pressure_GPa)
    if ensemble in NPT_ENSEMBLES and not is_bulk(atoms):
        raise ConfigError(f"ensemble {ensemble!r} changes the cell: the structure must be 3-D periodic")
    check_constraints(atoms, ensemble)
    dt = dt_fs * units.fs
    if ensemble == "mtk_iso":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        return IsotropicMTKNPT(atoms, dt, temperature_K=temperature_K, pressure_au=p_au,
                               tdamp=tdamp, pdamp=pdamp)
    if ensemble == "mtk":
        from ase.md.nose_hoover_chain import MTKNPT

        return MTKNPT(atoms, dt, temperature_K=temperature_K, pressure_au=p_au, tdamp=tdamp, pdamp=pdamp)
    if ensemble == "nvt":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        dyn = NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tdamp)
        if atoms.constraints:
            _thermostat_dof(dyn._thermostat, atoms.get_number_of_degrees_of_freedom(), tdamp)
        return dyn
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "langevin":
        from ase.md.langevinbaoab import LangevinBAOAB

        return LangevinBAOAB(atoms, dt, temperature_K=temperature_K, externalstress=-p_au,
                             hydrostatic=hydrostatic, T_tau=tdamp, P_tau=pdamp,
                             rng=np.random.default_rng(seed))
    from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen, NPTBerendsen

    cls = NPTBerendsen if hydrostatic else Inhomogeneous_NPTBerendsen
    beta = check_positive("compressibility_per_GPa", compressibility_per_GPa) / units.GPa
    return cls(atoms, dt, temperature_K=temperature_K, pressure_au=p_au, taut=tdamp, taup=pdamp,
               compressibility_au=beta)


def _thermostat_dof(thermostat, n_dof: int, tdamp: float) -> None:
    """Couple a Nose-Hoover chain to ``n_dof`` degrees of freedom instead of 3N.

    ASE's chain counts 3N; with fixed atoms the free atoms would be thermostatted to
    3N/n_dof times the target.  The chain's "atom count" (it uses 3·count everywhere:
    target kinetic energy, first thermostat mass Q₁, conserved energy) becomes n_dof/3.
    """
    n_eff = n_dof / 3.0
    thermostat._num_atoms_global = n_eff
    thermostat._Q[0] = 3 * n_eff * thermostat._kT * tdamp ** 2


def set_target_temperature(dyn, temperature_K: float) -> None:
    """Move the thermostat target of ``dyn`` to ``temperature_K`` (masses Q, W unchanged)."""
    t = float(temperature_K)
    if hasattr(dyn, "_thermostat"):  # Nose-Hoover chain / MTK
        kT = units.kB * t
        dyn._thermostat._kT = kT
        if hasattr(dyn, "_barostat"):
            dyn._barostat._kT = kT
        if hasattr(dyn, "_kT"):
            dyn._kT = kT
        if hasattr(dyn, "_temperature_K"):
            dyn._temperature_K = t
    elif type(dyn).__name__ == "LangevinBAOAB":
        dyn.set_temperature(t)
    elif hasattr(dyn, "set_temperature"):  # Berendsen
        dyn.set_temperature(temperature_K=t)
    # VelocityVerlet (NVE) has no thermostat: nothing to move


def target_temperature(dyn) -> float | None:
    """The thermostat's current target [K] (None for NVE)."""
    if hasattr(dyn, "_thermostat"):
        return float(dyn._thermostat._kT / units.kB)
    if hasattr(dyn, "temperature_K") and dyn.temperature_K is not None:
        return float(dyn.temperature_K)
    if hasattr(dyn, "temperature"):
        return float(dyn.temperature / units.kB)
    return None


_CHAIN = ("_Q", "_eta", "_p_eta", "_kT")
_BARO = ("_W", "_R", "_xi", "_p_xi", "_kT")
_DYN = ("_q", "_p", "_eps", "_p_eps", "_volume0", "_cell0", "_h", "_p_g", "_kT", "_temperature_K",
        "p_eps", "gamma_mod", "force_eps", "accel", "temperature_K")


def _grab(obj, names):
    out = {}
    for n in names:
        if hasattr(obj, n):
            v = getattr(obj, n)
            if v is not None:
                out[n] = np.asarray(v).tolist() if isinstance(v, np.ndarray) else float(v)
    return out


def _put(obj, data):
    for n, v in data.items():
        cur = getattr(obj, n, None)
        setattr(obj, n, np.array(v, dtype=float) if isinstance(v, list) or isinstance(cur, np.ndarray)
                else float(v))


def integrator_state(dyn) -> dict:
    """Everything the next step of ``dyn`` depends on, as JSON-able data."""
    atoms = dyn.atoms
    state = {
        "class": type(dyn).__name__,
        "positions": atoms.get_positions().tolist(),
        "momenta": atoms.get_momenta().tolist(),
        "cell": np.asarray(atoms.get_cell()).tolist(),
        "dyn": _grab(dyn, _DYN),
    }
    if hasattr(dyn, "_thermostat"):
        state["thermostat"] = _grab(dyn._thermostat, _CHAIN)
    if hasattr(dyn, "_barostat"):
        state["barostat"] = _grab(dyn._barostat, _BARO)
    rng = getattr(dyn, "rng", None)
    if isinstance(rng, np.random.Generator):
        state["rng"] = rng.bit_generator.state
    return state


def restore_atoms(atoms, state: dict) -> None:
    """Put positions, momenta and cell of a saved state onto ``atoms`` exactly (the saved
    values already obey the constraints of ``atoms``, which are kept, not re-applied)."""
    atoms.set_cell(np.array(state["cell"], dtype=float), scale_atoms=False)
    atoms.set_positions(np.array(state["positions"], dtype=float), apply_constraint=False)
    atoms.set_momenta(np.array(state["momenta"], dtype=float), apply_constraint=False)


def restore_integrator_state(dyn, state: dict) -> None:
    """Inverse of :func:`integrator_state` on a freshly built integrator of the same class."""
    if state.get("class") != type(dyn).__name__:
        raise ConfigError(
            f"saved MD state belongs to integrator {state.get('class')!r}, not {type(dyn).__name__!r}; "
            "resume with the same --ensemble or use a new output folder"
        )
    restore_atoms(dyn.atoms, state)
    _put(dyn, state.get("dyn", {}))
    if "thermostat" in state:
        _put(dyn._thermostat, state["thermostat"])
    if "barostat" in state:
        _put(dyn._barostat, state["barostat"])
    if "rng" in state and isinstance(getattr(dyn, "rng", None), np.random.Generator):
        dyn.rng.bit_generator.state = state["rng"]
    if hasattr(dyn, "_update_atoms"):
        dyn._update_atoms()
