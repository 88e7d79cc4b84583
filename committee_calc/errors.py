"""One exception hierarchy for committee_calc, rooted in ASE's ``CalculatorError``.

Every error names the problem and what to do about it.  Catch
:class:`CommitteeError` to handle all of them; the extra built-in bases
(``ValueError``, ``FileNotFoundError``, ``ImportError``...) let existing code
that catches those keep working.
"""
from ase.calculators.calculator import CalculatorError, PropertyNotImplementedError


class CommitteeError(CalculatorError):
    """Base class of every committee_calc error."""


class ConfigError(CommitteeError, ValueError):
    """An invalid setting: committee/reference YAML, threshold, option value."""


class UnitError(ConfigError):
    """An unknown or inconsistent unit."""


class ModelFileError(CommitteeError, OSError):
    """A model file or folder is missing, unreadable or corrupt."""


class BackendUnavailableError(CommitteeError, ImportError):
    """The framework a member needs is not installed (or lacks a feature)."""


class UnknownSpeciesError(CommitteeError, ValueError):
    """A structure contains an element a member model was not trained on."""


class CutoffMismatchError(CommitteeError, ValueError):
    """Members that must share work (one graph, one batch) have different cutoffs."""


class MemberPropertyError(CommitteeError, PropertyNotImplementedError):
    """A property was requested that not every committee member provides."""


class NonFiniteOutputError(CommitteeError, FloatingPointError):
    """No committee member returned a finite value: nothing can be averaged."""


class CalibrationError(CommitteeError, ValueError):
    """Calibration could not be fitted (too few members or samples, zero spread)."""


class StructureReadError(CommitteeError, OSError):
    """An input structure file cannot be read or holds no structures."""


class CellError(CommitteeError, ValueError):
    """A periodic structure without a usable cell (missing or degenerate lattice vectors)."""


class ReferenceCalculationError(CommitteeError):
    """The reference (e.g. DFT) calculation failed, crashed or timed out."""


class CommitteeCalculationError(CommitteeError):
    """A committee member raised on one structure (e.g. a crashing or failing calculator): the
    structure's relaxation ends ``committee_failed``, the others go on."""


class LabelStoreError(CommitteeError, OSError):
    """The label store cannot be opened or appended to safely."""


class GateStop(CommitteeError):
    """Raised by a gate when a hard uncertainty cap is exceeded: stop, do not label."""


class MoleculeError(CommitteeError, ValueError):
    """Molecules cannot be identified (periodic bond network, bad or disconnected labels)."""


class TrainingError(CommitteeError, RuntimeError):
    """A member's training run failed (framework trainer error, bad training set)."""


class LostSchedulerError(CommitteeError):
    """The Dask scheduler went away while tasks were pending (outputs written so far are kept;
    a rerun resumes)."""


__all__ = [name for name, obj in list(globals().items())
           if isinstance(obj, type) and obj.__module__ == __name__]


class CommitteeWarning(RuntimeWarning):
    """A committee_calc warning (label store repaired, retraining skipped, calibration coverage,
    an isolated atom...): drivers print it as one ``warning:`` line.  A RuntimeWarning, so
    filters and tests written for those still match."""
