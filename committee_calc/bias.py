"""Uncertainty-biased sampling: HAL and UDD biases on any committee, with exact derivatives.

The biased surface is ``E_b = E + B(σ²)`` with σ the calibrated committee energy spread of
:mod:`committee_calc.uncertainty`, ``σ² = α²/(M−1) Σ_m δ_m²``, ``δ_m = E_m − Ē`` over the M
members (α = ``energy_std`` / ``std(energy_members, ddof=1)``, the committee's own factor).  Its
forces and stress follow from the members' forces F_m and stresses S_m::

    ∂σ²/∂r = (2α²/(M−1)) Σ_m δ_m ∂E_m/∂r = −(2α²/(M−1)) Σ_m δ_m F_m
    F_b = F − B'(σ²) ∂σ²/∂r,        S_b = S + B'(σ²) (2α²/(M−1)) Σ_m δ_m S_m

(ASE stress = (1/V) ∂E/∂ε), exact derivatives of E_b when the members' are.  With a map
calibration of the energy spread (``isotonic``: σ = f(s), s the raw spread) the factor 2α² becomes
2σ f'(s)/s (:func:`energy_calibrator`, :func:`apply_bias`).  Result keys: :mod:`committee_calc.keys`.
Biases:

* :class:`HAL` (hyperactive learning; van der Oord, Sachs, Kovács, Ortner & Csányi, npj Comput.
  Mater. 9, 168 (2023)): ``B = −τ σ``, τ ≥ 0 dimensionless (``--bias hal --hal-tau``).
* :class:`UDD` (uncertainty-driven dynamics; Kulichenko et al., Nat. Comput. Sci. 3, 230 (2023),
  bounded Gaussian form as in apax): ``B = A (exp(−σ²/(N b²)) − 1)`` ∈ (−A, 0], A ≥ 0 [eV],
  b > 0 [eV per √atom] the per-atom spread at which it saturates, N atoms (``--bias udd
  --udd-a-eV --udd-b-eV``).

:func:`apply_bias` turns a committee/gate result dict into the biased one (``energy``,
``free_energy``, ``forces``, ``stress`` biased; the unbiased values under :data:`ENERGY_UNBIASED`,
:data:`FORCES_UNBIASED`, :data:`STRESS_UNBIASED`, the bias under :data:`BIAS_ENERGY`).
:class:`BiasCalculator` wraps any calculator returning members (a ``CommitteeCalculator`` or a
``Gate``: then labels and measures stay unbiased).  Results whose members are missing or not
finite pass unbiased (``bias_energy`` 0).  Errors: ConfigError/UnitError for a negative strength
or an unknown bias, MemberPropertyError when stress is asked without member stresses.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from . import keys as K
from .errors import ConfigError, MemberPropertyError
from .keys import BIAS_ENERGY, BIAS_KEYS, ENERGY_UNBIASED, FORCES_UNBIASED, STRESS_UNBIASED
from .units import check_positive

KINDS = ("none", "hal", "udd")


@dataclass(frozen=True)
class HAL:
    """``B(σ²) = −τ σ`` (van der Oord et al. 2023); ``tau`` ≥ 0, dimensionless."""

    tau: float

    def __post_init__(self):
        object.__setattr__(self, "tau", check_positive("--hal-tau (HAL bias strength τ)", self.tau,
                                                       allow_zero=True))

    def __call__(self, s2: float, natoms: int) -> tuple:
        """(B [eV], dB/dσ² [1/eV]) at σ² [eV²]; dB/dσ² is 0 at σ = 0 (σ has no gradient there)."""
        s = math.sqrt(max(s2, 0.0))
        return -self.tau * s, (-0.5 * self.tau / s if s > 0 else 0.0)

    def to_dict(self) -> dict:
        return {"kind": "hal", **asdict(self)}

    def describe(self) -> str:
        return f"HAL bias B = −τ σ_E, τ = {self.tau:g}"


@dataclass(frozen=True)
class UDD:
    """``B(σ²) = A (exp(−σ²/(N b²)) − 1)`` (Kulichenko et al. 2023); ``a_eV`` ≥ 0 [eV] the depth,
    ``b_eV`` > 0 [eV per √atom] the width."""

    a_eV: float
    b_eV: float

    def __post_init__(self):
        object.__setattr__(self, "a_eV", check_positive("--udd-a-eV (UDD bias height A)", self.a_eV,
                                                        allow_zero=True))
        object.__setattr__(self, "b_eV", check_positive("--udd-b-eV (UDD bias width b)", self.b_eV))

    def __call__(self, s2: float, natoms: int) -> tuple:
        width2 = max(int(natoms), 1) * self.b_eV ** 2
        g = math.exp(-max(s2, 0.0) / width2)
        return self.a_eV * (g - 1.0), -self.a_eV * g / width2

    def to_dict(self) -> dict:
        return {"kind": "udd", **asdict(self)}

    def describe(self) -> str:
        return f"UDD bias B = A (exp(−σ_E²/(N b²)) − 1), A = {self.a_eV:g} eV, b = {self.b_eV:g} eV"


def bias_from_dict(spec) -> HAL | UDD | None:
    """A bias from ``{"kind": "hal", "tau": …}`` / ``{"kind": "udd", "a_eV": …, "b_eV": …}``, a
    bias object, or None/``{"kind": "none"}`` (no bias).  ConfigError/UnitError otherwise."""
    if spec is None or isinstance(spec, (HAL, UDD)):
        return spec
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ConfigError(f"a bias is {{kind: one of {KINDS}, …}}, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "kind"}
    cls = {"none": None, "hal": HAL, "udd": UDD}[spec["kind"]]
    if cls is None:
        return None
    try:
        return cls(**params)
    except TypeError:
        raise ConfigError(f"{spec['kind']} bias parameters are {list(cls.__dataclass_fields__)}, "
                          f"got {sorted(params)}") from None


def energy_calibrator(calc):
    """The energy :class:`~committee_calc.calibration_maps.Calibrator` of a CommitteeCalculator,
    or of the committee of a Gate (None when there is none: σ is then read from the results)."""
    for obj in (calc, getattr(calc, "committee", None)):
        cals = getattr(obj, "calibrators", None)
        if isinstance(cals, dict) and K.ENERGY in cals:
            return cals[K.ENERGY]
    return None


def _slope(cal, sigma: float, natoms: int) -> float:
    """dσ'/dσ of a map calibrator σ' = f(σ) at raw σ [eV] (piecewise linear: the slope of the
    segment holding σ, right-hand at a knot; 0 below the first knot, σ'_last/σ_last above)."""
    n = max(int(natoms), 1) if cal.per_atom else 1
    x, y, u = np.asarray(cal.sigma, float), np.asarray(cal.calibrated, float), sigma / n
    i = int(np.searchsorted(x, u, side="right")) - 1
    if i >= len(x) - 1:
        return float(y[-1] / x[-1]) if x[-1] > 0 else 0.0
    if i < 0 or x[i + 1] <= x[i]:
        return 0.0
    return float((y[i + 1] - y[i]) / (x[i + 1] - x[i]))


def apply_bias(results: dict, bias, natoms: int | None = None, calibrator=None) -> dict:
    """The biased copy of a committee/gate ``results`` dict (module docstring).

    natoms: N for UDD (default: from ``forces``).  calibrator: the committee's energy calibrator
    (:func:`energy_calibrator`); None or a scale (``alpha``, ``conformal``): σ = α·spread, α read
    from the results (``energy_std`` / spread); a map (``isotonic``): σ = f(spread), whose
    derivative f' enters the forces and stress (∂σ/∂r = f'(spread) ∂spread/∂r).  Needs
    ``energy_members`` and ``energy_std``; with ``forces`` also ``forces_members``, with
    ``stress`` also ``stress_members`` (MemberPropertyError otherwise).  Results without members,
    or with non-finite members, are returned with ``bias_energy`` 0 and the unbiased keys.
    """
    res = dict(results)
    res[ENERGY_UNBIASED], res[BIAS_ENERGY] = float(res[K.ENERGY]), 0.0
    for key, unb in ((K.FORCES, FORCES_UNBIASED), (K.STRESS, STRESS_UNBIASED)):
        if key in res:
            res[unb] = np.array(res[key], float)
    em = np.asarray(res.get(K.ENERGY_MEMBERS, []), float).reshape(-1)
    if bias is None or len(em) < 2 or res.get(K.N_NONFINITE, 0) or not np.all(np.isfinite(em)):
        return res
    natoms = natoms if natoms is not None else len(np.atleast_2d(res.get(K.FORCES, [[0, 0, 0]])))
    delta = em - em.mean()
    var = float(delta @ delta) / (len(em) - 1)
    if calibrator is None or calibrator.is_scale:
        sigma = float(res.get(K.ENERGY_STD, math.sqrt(var)))
        a2 = sigma * sigma / var if var > 0 else 0.0  # α² of the committee's calibration
        b, db = bias(a2 * var, natoms)
        c = db * 2.0 * a2 / (len(em) - 1)  # dB/dσ² · dσ²/dE_m per unit δ_m
    else:  # σ = f(raw): dσ²/dE_m = 2σ f'(raw) δ_m / ((M−1) raw)
        raw = math.sqrt(var)
        sigma = float(calibrator(raw, natoms))
        b, db = bias(sigma * sigma, natoms)
        c = db * 2.0 * sigma * _slope(calibrator, raw, natoms) / ((len(em) - 1) * raw) if raw > 0 else 0.0
    res[K.ENERGY] = float(res[K.ENERGY]) + b
    if K.FREE_ENERGY in res:
        res[K.FREE_ENERGY] = float(res[K.FREE_ENERGY]) + b
    res[BIAS_ENERGY] = b
    for key, members in ((K.FORCES, K.FORCES_MEMBERS), (K.STRESS, K.STRESS_MEMBERS)):
        if key not in res:
            continue
        if members not in res:
            raise MemberPropertyError(f"the bias needs per-member {key} ({members}) to give exact "
                                      f"biased {key}; this result has none")
        stack = np.asarray(res[members], float)
        term = np.tensordot(delta, stack, axes=(0, 0))  # Σ_m δ_m X_m
        res[key] = np.asarray(res[key], float) + c * term  # F_b = F − B'∂σ²/∂r, S_b likewise
    return res


class BiasCalculator(Calculator):
    """ASE calculator of the biased surface of ``calc`` (a CommitteeCalculator, a Gate, or any
    calculator whose results carry the members).  Results: those of ``calc`` with energy,
    free_energy, forces, stress biased, plus :data:`BIAS_KEYS`."""

    def __init__(self, calc, bias, **kwargs):
        super().__init__(**kwargs)
        self.calc, self.bias = calc, bias_from_dict(bias)
        self.implemented_properties = tuple(calc.implemented_properties) + BIAS_KEYS

    def calculate(self, atoms=None, properties=(K.ENERGY,), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        props = list(dict.fromkeys([*properties, K.ENERGY, K.FORCES]))
        self.calc.calculate(self.atoms.copy(), props, all_changes)
        self.results = apply_bias(self.calc.results, self.bias, len(self.atoms), energy_calibrator(self.calc))

    def __repr__(self):
        return f"BiasCalculator({self.calc!r}, {self.bias!r})"


# ------------------------------------------------------------------ command-line options
def add_bias_arguments(parser) -> None:
    """``--bias {none,hal,udd}``, ``--hal-tau``, ``--udd-a-eV``, ``--udd-b-eV`` on ``parser``."""
    g = parser.add_argument_group("uncertainty bias (biased sampling; unbiased values are logged beside)")
    g.add_argument("--bias", choices=KINDS, default="none",
                   help="hal: E - tau*sigma_E; udd: E + A(exp(-sigma_E^2/(N b^2)) - 1)")
    g.add_argument("--hal-tau", type=float, default=None, help="HAL strength tau (dimensionless, >= 0)")
    g.add_argument("--udd-a-eV", dest="udd_a_eV", type=float, default=None, help="UDD height A [eV], >= 0")
    g.add_argument("--udd-b-eV", dest="udd_b_eV", type=float, default=None,
                   help="UDD width b [eV per sqrt(atom)], > 0")


def bias_from_args(args) -> HAL | UDD | None:
    """The bias of the :func:`add_bias_arguments` options (None for ``--bias none``); ConfigError
    for missing or stray strength options, UnitError for a negative one."""
    kind = getattr(args, "bias", "none") or "none"
    given = {name: getattr(args, dest, None) for name, dest in
             (("--hal-tau", "hal_tau"), ("--udd-a-eV", "udd_a_eV"), ("--udd-b-eV", "udd_b_eV"))}
    need = {"none": (), "hal": ("--hal-tau",), "udd": ("--udd-a-eV", "--udd-b-eV")}[kind]
    stray = [n for n, v in given.items() if v is not None and n not in need]
    missing = [n for n in need if given[n] is None]
    if stray or missing:
        raise ConfigError(f"--bias {kind} " + (f"needs {', '.join(missing)}" if missing else "")
                          + ("; " if stray and missing else "")
                          + (f"does not use {', '.join(stray)}" if stray else ""))
    if kind == "hal":
        return HAL(given["--hal-tau"])
    return UDD(given["--udd-a-eV"], given["--udd-b-eV"]) if kind == "udd" else None


__all__ = ["BIAS_ENERGY", "BIAS_KEYS", "ENERGY_UNBIASED", "FORCES_UNBIASED", "HAL", "KINDS",
           "STRESS_UNBIASED", "UDD", "BiasCalculator", "add_bias_arguments", "apply_bias",
           "bias_from_args", "bias_from_dict", "energy_calibrator"]
