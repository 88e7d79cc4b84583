"""n2p2 symmetry-function definitions, their sort order, and the scalar kernels.

Supported (``symfunction_short`` lines, parameters in the model's length unit):

=====  ==============================================================  ==========================
type   line                                                            G_i
=====  ==============================================================  ==========================
2      ``ec 2 e1 eta rs rc``                                           Σ_j e^{-η(r_ij-rs)²} f_c(r_ij)
3      ``ec 3 e1 e2 eta lambda zeta rc [rs]``                          2^{1-ζ} Σ_{j<k} (1+λcosθ)^ζ e^{-η Σ(r-rs)²} f_c³ (ij,ik,jk)
9      ``ec 9 e1 e2 eta lambda zeta rc [rs]``                          as 3 without the jk terms
20     ``ec 20 e1 rl rc subtype``                                      Σ_j p(r_ij), rl < r_ij < rc
22     ``ec 22 e1 e2 rl rc angle_left angle_right subtype``            Σ_{j<k} p(r_ij) p(r_ik) p_θ(θ_ijk)
=====  ==============================================================  ==========================

The kernels below take torch tensors so autograd gives exact derivatives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import ModelFileError

SUPPORTED_TYPES = (2, 3, 9, 20, 22)
ANGULAR_TYPES = (3, 9, 22)
_TANH_PRE = ((math.e + 1 / math.e) / (math.e - 1 / math.e)) ** 3


@dataclass(frozen=True)
class SymFunc:
    """One symmetry function, in the model's physical length unit (angles in degrees)."""

    element: str          # central element
    type: int
    e1: str
    i1: int               # element index (Z order) of e1; for angular SFs i1 <= i2
    e2: str | None = None
    i2: int = -1
    eta: float = 0.0
    rs: float = 0.0
    rc: float = 0.0
    lam: float = 0.0
    zeta: float = 1.0
    rl: float = 0.0
    subtype: str = ""
    angle_left: float = 0.0
    angle_right: float = 0.0
    cutoff_type: int = 1
    cutoff_alpha: float = 0.0
    lineno: int = 0

    def definition(self) -> tuple:
        """Everything that determines the raw SF value (used to share work)."""
        return (self.element, self.type, self.e1, self.e2, self.eta, self.rs, self.rc, self.lam,
                self.zeta, self.rl, self.subtype, self.angle_left, self.angle_right,
                self.cutoff_type, self.cutoff_alpha)


def _check_subtype(sub, where):
    ok = (len(sub) in (2, 3) and sub[0] == "p" and sub[1] in "1234"
          and (len(sub) == 2 or sub[2] == "a"))
    if not ok:
        raise ModelFileError(f"{where}: unsupported compact-function subtype {sub!r}; "
                             "use p1..p4 with optional trailing 'a'")


def parse_symfunction(args, index: dict, where: str, cutoff_type: int, alpha: float,
                      lineno: int = 0) -> SymFunc:
    """Parse the arguments of one ``symfunction_short`` line."""
    try:
        el, sftype = args[0], int(args[1])
    except (IndexError, ValueError):
        raise ModelFileError(f"{where}: cannot read symmetry function {' '.join(args)!r}") from None
    if sftype not in SUPPORTED_TYPES:
        raise ModelFileError(
            f"{where}: symmetry function type {sftype} is not supported by the native n2p2 "
            f"evaluator (supported: {SUPPORTED_TYPES}); use the LAMMPS hdnnp route"
        )
    names = args[2:4] if sftype in ANGULAR_TYPES else args[2:3]
    for e in [el] + names:
        if e not in index:
            raise ModelFileError(f"{where}: element {e!r} is not in the 'elements' line")
    common = dict(element=el, type=sftype, cutoff_type=cutoff_type, cutoff_alpha=alpha, lineno=lineno)
    try:
        if sftype == 2:
            return SymFunc(e1=args[2], i1=index[args[2]], eta=float(args[3]), rs=float(args[4]),
                           rc=float(args[5]), **common)
        if sftype in ANGULAR_TYPES:
            e1, e2 = sorted(args[2:4], key=lambda s: index[s])
            pair = dict(e1=e1, i1=index[e1], e2=e2, i2=index[e2])
        if sftype in (3, 9):
            rs = float(args[8]) if len(args) > 8 else 0.0
            zeta = float(args[6])
            if zeta < 1:
                raise ModelFileError(f"{where}: zeta must be >= 1, got {zeta}")
            return SymFunc(eta=float(args[4]), lam=float(args[5]), zeta=zeta, rc=float(args[7]),
                           rs=rs, **pair, **common)
        if sftype == 20:
            _check_subtype(args[5], where)
            rl, rc = float(args[3]), float(args[4])
            if rl >= rc:
                raise ModelFileError(f"{where}: rl must be < rc")
            return SymFunc(e1=args[2], i1=index[args[2]], rl=rl, rc=rc, subtype=args[5], **common)
        _check_subtype(args[8], where)
        rl, rc, al, ar = (float(a) for a in args[4:8])
        centre = 0.5 * (al + ar)
        if rl >= rc or al >= ar or (al < 0 and centre != 0) or (ar > 180 and centre != 180):
            raise ModelFileError(f"{where}: invalid radial or angular boundaries")
        return SymFunc(rl=rl, rc=rc, angle_left=al, angle_right=ar, subtype=args[8], **pair, **common)
    except (IndexError, ValueError):
        raise ModelFileError(f"{where}: wrong number or format of parameters for type {sftype}: "
                             f"{' '.join(args)!r}") from None


def sort_key(sf: SymFunc, conv_length: float = 1.0) -> tuple:
    """n2p2's ``SymFnc*::operator<`` (parameters in internal length units)."""
    cl = conv_length
    if sf.type == 2:
        rest = (sf.cutoff_type, sf.cutoff_alpha, sf.rc * cl, sf.eta / cl ** 2, sf.rs * cl, sf.i1)
    elif sf.type in (3, 9):
        rest = (sf.cutoff_type, sf.cutoff_alpha, sf.rc * cl, sf.eta / cl ** 2, sf.rs * cl,
                sf.zeta, sf.lam, sf.i1, sf.i2)
    elif sf.type == 20:
        rest = (sf.subtype, sf.i1, sf.rc * cl, sf.rl * cl)
    else:
        rest = (sf.subtype, sf.i1, sf.i2, sf.rc * cl, sf.rl * cl, sf.angle_left, sf.angle_right)
    return (sf.type, rest)


# ---------------------------------------------------------------- kernels
def core(x, order: int):
    """n2p2 core polynomial of ``order`` 1..4 on x in [0, 1]."""
    if order == 1:
        return (2.0 * x - 3.0) * x * x + 1.0
    if order == 2:
        return ((15.0 - 6.0 * x) * x - 10.0) * x * x * x + 1.0
    x2 = x * x
    if order == 3:
        return (x * (x * (20.0 * x - 70.0) + 84.0) - 35.0) * x2 * x2 + 1.0
    return (x * (x * ((315.0 - 70.0 * x) * x - 540.0) + 420.0) - 126.0) * x2 * x2 * x + 1.0


def cutoff_fn(r, rc: float, ctype: int, alpha: float = 0.0):
    """Cutoff function f_c(r) for r < rc (callers mask r >= rc)."""
    if ctype == 0:
        return torch.ones_like(r)
    if ctype in (2, 3):
        t = torch.tanh(1.0 - r * (1.0 / rc))
        return t * t * t * (_TANH_PRE if ctype == 3 else 1.0)
    rci = rc * alpha
    x = ((r - rci) * (1.0 / (rc - rci))).clamp(min=0.0)
    if ctype == 1:
        f = 0.5 * (torch.cos(math.pi * x) + 1.0)
    elif ctype == 4:
        xx = x.clamp(max=1.0 - 1e-12)
        f = math.e * torch.exp(1.0 / (xx * xx - 1.0))
    else:
        f = core(x, ctype - 4)
    return f if alpha == 0.0 else torch.where(r < rci, torch.ones_like(f), f)


def compact_fn(a, left: float, right: float, subtype: str, asymmetric_allowed: bool = True):
    """Compact polynomial p(|a - centre| / halfwidth); caller masks a outside (left, right)."""
    centre, width = 0.5 * (left + right), 0.5 * (right - left)
    x = ((a - centre) * (1.0 / width)).abs().clamp(max=1.0)
    if asymmetric_allowed and subtype.endswith("a"):
        x = (2.0 - x) * x
    return core(x, int(subtype[1]))
