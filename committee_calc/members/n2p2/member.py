"""The n2p2 committee member and a standalone ASE calculator.

``N2P2Member`` evaluates an n2p2 model folder natively (no n2p2 build):
energy, per-atom energies, forces and stress in eV, eV/Å, eV/Å³.  Members
whose ``input.nn`` symmetry functions are identical share one
:class:`~.descriptors.SFEngine` computation per structure
(:meth:`N2P2Member.predict_group`).
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ...errors import ConfigError, MemberPropertyError
from ...structures import is_bulk
from ...units import energy_factor, length_factor
from .. import expand_paths
from ..base import Member
from .descriptors import SFEngine
from .network import ElementNet
from .reader import N2P2Model, load_model


def neighbour_pairs(positions, cell, pbc, cutoff):
    """All pairs (i, j, D = r_j + shift - r_i) with |D| < cutoff, periodic images included.

    Uses matscipy's linked-cell list when available (3-D periodic cells) and
    ASE's ``primitive_neighbor_list`` otherwise.  Both include images of an
    atom itself when the cell is smaller than the cutoff.
    """
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=float)
    if pbc.all():
        try:
            from matscipy.neighbours import neighbour_list
        except ImportError:
            neighbour_list = None
        if neighbour_list is not None:
            i, j, D = neighbour_list("ijD", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
            return i.astype(np.int64), j.astype(np.int64), D
    from ase.neighborlist import primitive_neighbor_list
    if not pbc.any() and np.abs(cell).sum() == 0:
        cell = np.zeros((3, 3))
    i, j, D = primitive_neighbor_list("ijD", pbc, cell, positions, cutoff, self_interaction=False,
                                      use_scaled_positions=False)
    return i.astype(np.int64), j.astype(np.int64), D


class N2P2Member(Member):
    """One n2p2 (2G-HDNNP) model folder as a committee member.

    Parameters
    ----------
    model:
        path of the model folder (``input.nn``, ``scaling.data``,
        ``weights.ZZZ.data``) or an already loaded :class:`N2P2Model`.
    length_unit, energy_unit:
        the units of the model's training data (n2p2 does not record them),
        e.g. ``"Bohr"`` / ``"Hartree"``; see :mod:`committee_calc.units`.
    """

    backend = "n2p2"
    implemented_properties = ("energy", "forces", "stress", "energies")

    def __init__(self, model, length_unit: str = "Angstrom", energy_unit: str = "eV",
                 name: str | None = None):
        self.model = model if isinstance(model, N2P2Model) else load_model(model)
        super().__init__(name or f"n2p2:{self.model.folder}")
        self.length_unit, self.energy_unit = length_unit, energy_unit
        self.lf = length_factor(length_unit)     # Å per model length unit
        self.ef = energy_factor(energy_unit)     # eV per model energy unit
        self.species = frozenset(self.model.elements)
        self.cutoff = self.model.cutoff * self.lf
        m = self.model
        self.nets = [ElementNet(m.networks[e], m.scaling[e], m.scaling_mode, m.scale_min, m.scale_max)
                     for e in m.elements]
        self.offsets = np.array([m.mean_energy + m.atom_energy.get(e, 0.0) for e in m.elements])
        self._engine = None

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> N2P2Member:
        unknown = set(spec) - {"backend", "path", "name", "length_unit", "energy_unit"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} for an n2p2 member; allowed: "
                              "path, name, length_unit, energy_unit")
        if "path" not in spec:
            raise ConfigError("an 'n2p2' member needs 'path: <n2p2 model folder>'")
        (path,) = expand_paths(spec["path"], base_dir)[:1]
        return cls(path, length_unit=spec.get("length_unit", "Angstrom"),
                   energy_unit=spec.get("energy_unit", "eV"), name=spec.get("name"))

    # ------------------------------------------------------------------
    @property
    def engine(self) -> SFEngine:
        if self._engine is None:
            self._engine = SFEngine(self.model)
        return self._engine

    def group_key(self):
        """Equal for members whose symmetry functions (and length unit) are identical."""
        sfs = tuple((e, tuple(sf.definition() for sf in self.model.symfuncs[e]))
                    for e in self.model.elements)
        return ("n2p2", self.lf, sfs)

    def describe(self) -> dict:
        return {"backend": "n2p2", "name": self.name, "path": self.model.folder,
                "length_unit": self.length_unit, "energy_unit": self.energy_unit}

    def as_calculator(self) -> N2P2Calculator:
        """A standalone ASE calculator over this member."""
        return N2P2Calculator(self)

    def predict(self, atoms, properties=("energy", "forces")) -> dict:
        return self.predict_group([self], atoms, properties)[0]

    @classmethod
    def predict_group(cls, members, atoms, properties) -> list:
        """Evaluate members that share symmetry functions, computing them once."""
        for m in members:
            m.check_atoms(atoms)
        lead = members[0]
        engine, model = lead.engine, lead.model
        props = set(properties)
        want_grad = bool(props & {"forces", "stress"})
        periodic = is_bulk(atoms)
        if "stress" in props and not periodic:
            raise MemberPropertyError("stress needs a 3-D periodic cell; this structure is not")
        n = len(atoms)
        index = {e: k for k, e in enumerate(model.elements)}
        species = np.array([index[s] for s in atoms.get_chemical_symbols()], dtype=np.int64)
        pos = atoms.positions / lead.lf
        cell = atoms.cell.array / lead.lf
        i, j, D = neighbour_pairs(pos, cell, atoms.pbc, engine.cutoff)
        geo = engine.prepare(species, i, j, D)
        G = engine.values(geo)
        members_out, dEdG = [], []
        for m in members:
            e_atom = np.zeros(n)
            grads = []
            for c, net in enumerate(m.nets):
                out, g = net.energy_and_grad(G[c], want_grad)
                e_atom[species == c] = out.numpy() / m.model.conv_energy
                if want_grad:
                    grads.append(g / m.model.conv_energy if g is not None else G[c].clone())
            energies = e_atom + m.offsets[species]
            members_out.append(energies)
            dEdG.append(grads)
        gD = engine.gradients(geo, dEdG) if want_grad else [None] * len(members)
        results = []
        for m, energies, g in zip(members, members_out, gD):
            res = {"energy": float(energies.sum()) * m.ef, "energies": energies * m.ef}
            if g is not None:
                # D = r_j - r_i + shift  ->  dE/dr_j += g, dE/dr_i -= g
                dEdr = np.stack([np.bincount(geo["j"], g[:, k], minlength=n)
                                 - np.bincount(geo["i"], g[:, k], minlength=n) for k in range(3)], 1)
                res["forces"] = -dEdr * (m.ef / m.lf)
                if "stress" in props:
                    vir = geo["D"].T @ g                       # Σ_p D_p ⊗ dE/dD_p
                    vol = abs(np.linalg.det(cell))
                    s = 0.5 * (vir + vir.T) / vol * (m.ef / m.lf ** 3)
                    res["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            results.append(res)
        return results

    def __repr__(self):
        return f"N2P2Member({self.model.folder!r}, {self.length_unit}/{self.energy_unit})"


class N2P2Calculator(Calculator):
    """ASE calculator for one n2p2 model folder (eV, Å).

    ``N2P2Calculator("model_dir", length_unit="Bohr", energy_unit="Hartree")``
    or ``N2P2Calculator(member)``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model, length_unit: str = "Angstrom", energy_unit: str = "eV", **kwargs):
        super().__init__(**kwargs)
        self.member = model if isinstance(model, N2P2Member) else N2P2Member(
            model, length_unit=length_unit, energy_unit=energy_unit)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        props = {"energy", "energies", "forces"}
        periodic = is_bulk(self.atoms)
        if periodic or "stress" in properties:
            props.add("stress")  # non-periodic + stress raises MemberPropertyError
        res = self.member.predict(self.atoms, sorted(props))
        res["free_energy"] = res["energy"]
        self.results.update(res)

