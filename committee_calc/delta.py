"""Δ-learning: baseline calculator + committee of correction models.

Plain Δ (``damping_sigma_eV=None``)::

    V = V_base + V̄_corr,   F = F_base + F̄_corr,   S = S_base + S̄_corr

Damped Δ (``damping_sigma_eV = s``): the correction is switched off where the
correction committee disagrees,

    V = V_base + w·V̄_corr,   w = s² / (s² + σ²),   σ² = α_E² · var_{ddof=1}(V_corr,m)

with forces and stress the exact derivatives.  With δ_m = V_m − V̄ and
``c = 2 α_E² / (M − 1)``:  ∂σ²/∂x = c Σ_m δ_m ∂V_m/∂x (Σ δ_m = 0 removes
∂V̄/∂x), ∂w/∂x = −w²/s² · ∂σ²/∂x, hence

    F = F_base + w F̄ − V̄ · (w²/s²) · c Σ_m δ_m F_m
    S = S_base + w S̄ − V̄ · (w²/s²) · c Σ_m δ_m S_m        (S = (1/V) ∂E/∂ε, ASE convention)

Limits: σ ≪ s → plain Δ; σ ≫ s → baseline only.  A member with non-finite
output sets w = 0 (baseline only) for that structure.

Results follow the committee schema (:mod:`committee_calc.uncertainty`):
``energy``/``forces``/``stress`` are the Δ model above; the uncertainty keys
(``energy_std``, ``forces_std``...) are those of the correction committee
(uncertainty of the undamped correction); ``*_members`` are baseline +
member correction (undamped); ``force_uncertainty_relative`` uses the total
forces.  Extra keys: ``baseline_energy`` [eV], ``baseline_forces`` (N,3)
[eV/Å], ``baseline_stress`` (6,) [eV/Å³], ``correction_energy`` [eV, Ē],
``delta_weight`` [1, w] — the gate stores the baseline values with each label
(``BASE_*`` keys) so Δ targets can be formed by :func:`delta_targets`.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from . import keys as K
from .errors import ConfigError, MemberPropertyError
from .members import build_members
from .members.ase_member import ASEMember
from .members.base import Member
from .structures import is_bulk
from .uncertainty import force_uncertainty_relative
from .units import check_positive

DELTA_OPTIONS = {"damping_sigma_eV"}


def _as_member(baseline) -> Member:
    if isinstance(baseline, Member):
        return baseline
    if hasattr(baseline, "get_property"):
        return ASEMember(baseline, name="baseline")
    raise ConfigError(f"baseline {baseline!r} is neither an ASE calculator nor a Member")


class DeltaCalculator(Calculator):
    """``baseline`` (ASE calculator or Member) + correction ``committee`` (module docstring)."""

    default_parameters: dict = {}

    def __init__(self, baseline, committee, damping_sigma_eV=None, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(committee, "members") or not hasattr(committee, "calculate"):
            raise ConfigError("committee must be a CommitteeCalculator of correction models")
        self.baseline = _as_member(baseline)
        self.committee = committee
        if damping_sigma_eV is not None:
            damping_sigma_eV = check_positive("damping_sigma_eV", damping_sigma_eV)
        self.damping_sigma_eV = damping_sigma_eV
        props = list(committee.implemented_properties)
        if "stress" not in self.baseline.implemented_properties:
            props = [p for p in props if not p.startswith("stress")]
        props += ["baseline_energy", "baseline_forces", "correction_energy", "delta_weight"]
        if "stress" in props:
            props.append("baseline_stress")
        self.implemented_properties = tuple(props)
        self.molecules = getattr(committee, "molecules", None)
        self.n_calls = 0

    # committee-like attributes so a Gate / driver can treat this as a committee
    @property
    def members(self):
        return self.committee.members

    @property
    def n_members(self) -> int:
        return len(self.committee.members)

    @property
    def calibration(self) -> dict:
        return self.committee.calibration

    def _want_stress(self, atoms, properties) -> bool:
        asked = any(p.startswith("stress") or p == "baseline_stress" for p in properties)
        if asked and "stress" not in self.implemented_properties:
            raise MemberPropertyError("stress requested but the baseline or a correction "
                                      "member cannot compute it")
        periodic = is_bulk(atoms)
        return asked or (periodic and "stress" in self.implemented_properties
                         and self.committee.stress_mode is not False)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        copy = self.atoms.copy()
        copy.calc = None
        stress = self._want_stress(copy, properties)
        props = ["energy", "forces"] + (["stress"] if stress else [])
        self.baseline.check_atoms(copy)
        base = self.baseline.predict(copy, props)
        self.committee.calculate(copy, props, all_changes)
        self.n_calls += 1
        self.results = self.combine(base, dict(self.committee.results), stress)

    def predict(self, structures, batch_size: int | None = None, properties=None,
                progress: bool = False) -> list:
        """Δ results (schema dicts, see the module docstring) for many structures: the correction
        committee's batched :meth:`~committee_calc.committee.CommitteeCalculator.predict` plus
        the baseline per structure.  Does not touch ``self.results``."""
        structures = [a.copy() for a in structures]
        for a in structures:
            a.calc = None
            self.baseline.check_atoms(a)
        corr = self.committee.predict(structures, batch_size=batch_size, properties=properties,
                                      progress=progress)
        out = []
        for atoms, c in zip(structures, corr):
            if c.get(K.N_NONFINITE):
                out.append(c)
                continue
            stress = K.STRESS in c
            base = self.baseline.predict(atoms, ["energy", "forces"] + (["stress"] if stress else []))
            self.n_calls += 1
            out.append(self.combine(base, dict(c), stress))
        return out

    def combine(self, base: dict, corr: dict, stress: bool) -> dict:
        """Δ results from baseline predictions and correction-committee results."""
        res = dict(corr)
        eb, fb = float(base[K.ENERGY]), np.asarray(base[K.FORCES], float)
        w, dF, dS = 1.0, 0.0, 0.0
        s = self.damping_sigma_eV
        if s is not None:
            if corr.get(K.N_NONFINITE, 0):
                w = 0.0
            else:
                em = np.asarray(corr[K.ENERGY_MEMBERS], float)
                m = len(em)
                alpha = float(self.committee.calibration.get("energy", 1.0))
                delta = em - em.mean()
                var = alpha ** 2 * float(delta @ delta) / (m - 1)
                w = s * s / (s * s + var)
                c = 2.0 * alpha ** 2 / (m - 1)
                g = corr[K.ENERGY] * (w * w / (s * s)) * c
                dF = -g * np.einsum("m,mij->ij", delta, np.asarray(corr[K.FORCES_MEMBERS], float))
                if stress:
                    dS = -g * delta @ np.asarray(corr[K.STRESS_MEMBERS], float)
        res[K.ENERGY] = res[K.FREE_ENERGY] = eb + w * corr[K.ENERGY]
        res[K.FORCES] = fb + w * corr[K.FORCES] + dF
        res[K.ENERGY_MEMBERS] = eb + np.asarray(corr[K.ENERGY_MEMBERS], float)
        res[K.FORCES_MEMBERS] = fb[None] + np.asarray(corr[K.FORCES_MEMBERS], float)
        if K.ENERGIES in res and K.ENERGIES in base:
            res[K.ENERGIES] = np.asarray(base[K.ENERGIES]) + w * res[K.ENERGIES]
        else:
            for k in (K.ENERGIES, K.ENERGIES_MEMBERS, K.ENERGIES_STD):
                res.pop(k, None)
        if stress:
            sb = np.asarray(base[K.STRESS], float)
            res[K.STRESS] = sb + w * corr[K.STRESS] + dS
            res[K.STRESS_MEMBERS] = sb[None] + np.asarray(corr[K.STRESS_MEMBERS], float)
            res[K.BASELINE_STRESS] = sb
        res[K.FORCE_UNCERTAINTY_RELATIVE] = (
            corr[K.FORCE_UNCERTAINTY_RELATIVE] if corr.get(K.N_NONFINITE, 0)
            else force_uncertainty_relative(res[K.FORCES], corr[K.FORCES_STD_ATOM]))
        res.update({K.BASELINE_ENERGY: eb, K.BASELINE_FORCES: fb, K.CORRECTION_ENERGY: float(corr[K.ENERGY]),
                    K.DELTA_WEIGHT: float(w)})
        return res

    def __repr__(self):
        return (f"DeltaCalculator(baseline={self.baseline!r}, committee={self.committee!r}, "
                f"damping_sigma_eV={self.damping_sigma_eV})")


def build_baseline(baseline_spec, base_dir=None) -> Member:
    """The baseline model of a committee YAML's ``baseline:`` entry, as a Member.

    ``baseline_spec``: ``{calculator: <import path>, parameters: {...}}`` (any ASE
    calculator) or a member entry with ``backend:`` (e.g. ``{backend: chgnet, version: 0.3.0}``,
    a LAMMPS pair style); relative paths against ``base_dir``.
    Raises ConfigError for a spec that is not a mapping or describes several models.
    """
    if not isinstance(baseline_spec, dict):
        raise ConfigError(f"'baseline' must be a mapping like {{calculator: ..., parameters: {{}}}} "
                          f"or {{backend: chgnet, version: 0.3.0}}, got {baseline_spec!r}")
    if "backend" in baseline_spec:
        built = build_members(baseline_spec, base_dir)
        if len(built) != 1:
            raise ConfigError(f"'baseline' must describe one model, its path matched {len(built)}")
        return built[0]
    return ASEMember.from_spec(dict(baseline_spec, name=baseline_spec.get("name", "baseline")), base_dir)


def build_delta(committee, baseline_spec, delta_options, base_dir=None) -> DeltaCalculator:
    """Δ calculator from a committee YAML's ``baseline:`` and ``delta:`` entries.

    ``baseline_spec``: see :func:`build_baseline`.
    ``delta_options``: ``{damping_sigma_eV: s}`` for the damped variant, or empty.
    """
    baseline = build_baseline(baseline_spec, base_dir)
    opts = dict(delta_options or {})
    unknown = set(opts) - DELTA_OPTIONS
    if unknown:
        raise ConfigError(f"unknown 'delta' options {sorted(unknown)}; known: {sorted(DELTA_OPTIONS)}")
    return DeltaCalculator(baseline, committee, damping_sigma_eV=opts.get("damping_sigma_eV"))


# ---------------------------------------------------------------------- training labels
def baseline_results(baseline, atoms, stress=None) -> dict:
    """Baseline energy [eV], forces (N,3) [eV/Å] and, for 3-D periodic cells, stress [eV/Å³]."""
    member = _as_member(baseline)
    copy = atoms.copy()
    copy.calc = None
    if stress is None:
        stress = (is_bulk(copy)
                  and "stress" in member.implemented_properties)
    return member.predict(copy, ["energy", "forces"] + (["stress"] if stress else []))


def add_baseline(frames, baseline, prefix="BASE_") -> list:
    """Compute the baseline on each frame (in place) under ``<prefix>energy/forces/stress``."""
    for a in frames:
        r = baseline_results(baseline, a)
        a.info[prefix + "energy"] = float(r["energy"])
        a.arrays[prefix + "forces"] = np.asarray(r["forces"], float)
        if "stress" in r:
            a.info[prefix + "stress"] = np.asarray(r["stress"], float)
    return frames


def delta_targets(frames, ref_prefix="REF_", base_prefix="BASE_", out_prefix="DELTA_") -> list:
    """Add Δ targets ``DELTA_x = REF_x − BASE_x`` (energy, forces, stress; in place)."""
    keys = {q: (ref_prefix + q, base_prefix + q, out_prefix + q) for q in ("energy", "forces", "stress")}
    return delta_labels(frames, keys)


def delta_labels(frames, keys) -> list:
    """Δ targets in place: ``keys = {quantity: (reference key, baseline key, output key)}`` for
    quantity in energy [eV, info], forces [eV/Å, (N,3) arrays], stress [eV/Å³, (6,) info]; a
    quantity is skipped where either input is missing (energy must be present: ConfigError)."""
    e_ref, e_base, e_out = keys["energy"]
    for i, a in enumerate(frames):
        if e_ref not in a.info or e_base not in a.info:
            raise ConfigError(f"frame {i} lacks {e_ref} or {e_base}; "
                              "store labels through a Δ gate or call add_baseline first")
        a.info[e_out] = float(a.info[e_ref]) - float(a.info[e_base])
        f_ref, f_base, f_out = keys.get("forces", (None, None, None))
        if f_ref in a.arrays and f_base in a.arrays:
            a.arrays[f_out] = a.arrays[f_ref] - a.arrays[f_base]
        s_ref, s_base, s_out = keys.get("stress", (None, None, None))
        if s_ref in a.info and s_base in a.info:
            a.info[s_out] = np.asarray(a.info[s_ref], float) - np.asarray(a.info[s_base], float)
    return frames
