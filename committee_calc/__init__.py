"""committee_calc: committee (ensemble) ASE calculators for MLIPs.

Quick use::

    from committee_calc import CommitteeCalculator
    atoms.calc = CommitteeCalculator([calc_a, calc_b, calc_c])
    atoms.get_forces()                       # committee mean
    atoms.calc.get_property("energy_std")    # spread (eV, ddof=1)
"""
__version__ = "0.1.0"

from .committee import CommitteeCalculator  # noqa: E402
from .config import build_committee, load_committee  # noqa: E402
from .errors import CommitteeError  # noqa: E402
from .io import attach_uncertainties, read_uncertainties  # noqa: E402

__all__ = ["CommitteeCalculator", "load_committee", "build_committee", "CommitteeError",
           "attach_uncertainties", "read_uncertainties", "__version__"]
