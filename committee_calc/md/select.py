"""Query-by-committee selection of MD frames after a ``record`` run, and their labelling.

``select_frames`` picks frame indices of a recorded trajectory (frames carrying
``committee_<measure>`` in ``info``, as written by :class:`committee_calc.md.dynamics.CommitteeMD`):

* trust window: only frames with ``lower < σ <= upper`` are candidates (below
  ``lower`` the committee is trusted; above ``upper`` the frame is discarded
  as unphysical); frames the gate already labelled online are skipped;
* ``method``: ``"highest"`` (top-k σ), ``"fps"`` (farthest-point diversity in
  descriptor space, seeded by the most uncertain), ``"random"`` (seeded), or
  ``"window"`` (all candidates, thinned evenly in time to ``n_max``);
* at most ``n_max`` frames per generation.

:class:`Selection` holds and checks these settings up front.  ``label_frames``
labels the selected frames through the one labeller
(:meth:`committee_calc.labeller.Labeller.label`), which de-duplicates: a
frame already labelled by the same reference is not recomputed nor appended
again, so a killed and rerun selection appends each frame once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import keys as K
from ..analysis import select as sel
from ..descriptors import structure_descriptors
from ..errors import ConfigError
from ..io import read_uncertainties
from ..measures import MEASURES as MEASURE_TABLE
from ..measures import compute_measures, parse_limits

#: measures a frame can be selected by: every measure of the table, internal units
MEASURES = tuple(MEASURE_TABLE)
METHODS = ("highest", "fps", "random", "window")
PREFIX = "committee_"


def frame_sigma(frames, measure: str) -> np.ndarray:
    """σ of ``measure`` for each frame, shape (n,), internal units (eV, eV/atom, eV/Å, 1); NaN -> inf."""
    if measure not in MEASURES:
        raise ConfigError(f"unknown uncertainty measure {measure!r}; use one of {MEASURES}")
    values, missing = [], []
    for i, f in enumerate(frames):
        u = read_uncertainties(f, prefix=PREFIX)
        v = compute_measures(u, len(f), u.get(K.N_MOLECULES)).get(measure) if u else None
        if v is None:
            missing.append(i)
        values.append(np.nan if v is None else v)
    if missing:
        raise ConfigError(f"frames {missing[:5]} carry no committee uncertainty for {measure!r}; "
                          "record the trajectory with a committee (and --molecules for "
                          "per-molecule measures)")
    s = np.array(values, float)
    return np.where(np.isfinite(s), s, np.inf)


def trust_from_option(measure: str, value):
    """A ``--lower-trust``/``--upper-trust`` value, given in the unit of the measure's
    ``--threshold-…`` option (eV/Å for forces_std_max, meV/atom for energy_std_per_atom, kJ/mol
    per molecule, eV for energy_std), in internal units; None stays None.  UnitError/ConfigError
    (through :func:`~committee_calc.measures.parse_limits`) for a bad value."""
    if value is None:
        return None
    name = MEASURE_TABLE[measure].option("threshold")[len("threshold_"):]
    return parse_limits({name: value}, what="--lower-trust/--upper-trust")[measure]


def check_selection(measure, method, n_max, lower=None, upper=None) -> int:
    """Validate selection settings (ConfigError); returns ``n_max`` as int."""
    if measure not in MEASURES:
        raise ConfigError(f"unknown uncertainty measure {measure!r}; use one of {MEASURES}")
    if method not in METHODS:
        raise ConfigError(f"unknown selection method {method!r}; use one of {METHODS}")
    if isinstance(n_max, bool) or int(n_max) != n_max or int(n_max) < 1:
        raise ConfigError(f"n_max (frames per generation) must be an integer >= 1, got {n_max!r}")
    if lower is not None and upper is not None and upper <= lower:
        raise ConfigError(f"upper trust level {upper} must be above the lower one {lower}")
    return int(n_max)


def select_frames(frames, measure: str = K.FORCES_STD_MAX, method: str = "highest", n_max: int = 10,
                  lower: float | None = None, upper: float | None = None, seed: int = 0,
                  committee=None, descriptors=None) -> list:
    """Indices into ``frames`` chosen by ``method`` within the trust window (see module doc).

    ``lower``/``upper`` are in the internal unit of ``measure``; ``descriptors``
    (n, d) for ``fps`` default to :func:`committee_calc.descriptors.structure_descriptors`
    (with ``committee``'s features when its members offer them).
    """
    n_max = check_selection(measure, method, n_max, lower, upper)
    frames = list(frames)
    if not frames:
        return []
    s = frame_sigma(frames, measure)
    ok = np.array([f.info.get(K.GATE_DECISION, K.COMMITTEE) != K.REFERENCE for f in frames])
    if lower is not None:
        ok &= s > float(lower)
    if upper is not None:
        ok &= s <= float(upper)
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        return []
    if method == "highest":
        return [int(cand[j]) for j in sel.highest_uncertainty(s[cand], n_max)]
    if method == "random":
        return [int(cand[j]) for j in sel.random_selection(cand.size, min(n_max, cand.size), seed)]
    if method == "window":
        if cand.size <= n_max:
            return cand.tolist()
        pick = np.unique(np.round(np.linspace(0, cand.size - 1, n_max)).astype(int))
        return cand[pick].tolist()
    if descriptors is None:
        descriptors = structure_descriptors(frames, committee=committee)
    X = np.asarray(descriptors, dtype=float)
    start = int(cand[np.argmax(s[cand])])
    return sel.farthest_point_sampling(X, n_max, start=start, candidates=cand)


@dataclass(frozen=True)
class Selection:
    """Settings of a record-then-select generation, checked on construction (ConfigError).

    method: one of :data:`METHODS`; measure: one of :data:`MEASURES`; n_max: frames
    per generation; lower/upper: trust window in the measure's internal unit; seed: for
    ``random``.
    """

    method: str = "highest"
    measure: str = K.FORCES_STD_MAX
    n_max: int = 10
    lower: float | None = None
    upper: float | None = None
    seed: int = 0

    def __post_init__(self):
        check_selection(self.measure, self.method, self.n_max, self.lower, self.upper)

    def params(self, n_frames: int) -> dict:
        """What a stored selection must match to be reused (``md_selection.json`` ``params``)."""
        return {"method": self.method, "measure": self.measure, "n_max": self.n_max,
                "lower": self.lower, "upper": self.upper, "seed": self.seed, "n_frames": int(n_frames)}

    def select(self, frames, committee=None) -> list:
        """Indices into ``frames`` (:func:`select_frames`)."""
        return select_frames(frames, self.measure, self.method, self.n_max, self.lower, self.upper,
                             seed=self.seed, committee=committee)


def label_frames(frames, indices, labeller, provenance=None) -> dict:
    """Label ``frames[i]`` for i in ``indices`` through ``labeller`` (a
    :class:`~committee_calc.labeller.Labeller` with a store).

    Each label carries the frame's committee uncertainties and provenance
    ``step``, ``time_fs`` [fs] plus ``provenance``.  A frame already labelled by
    the same reference (an earlier, interrupted call) is not recomputed nor
    appended again.  Returns ``{step: label index}`` for every selected frame.
    Raises ReferenceCalculationError when the reference fails.
    """
    done = {}
    for i in indices:
        frame = frames[i]
        step = int(frame.info.get("step", i))
        atoms = frame.copy()
        atoms.calc = None
        prov = dict(provenance or {}, step=step, time_fs=frame.info.get("time_fs"))
        label = labeller.label(atoms, committee_results=read_uncertainties(frame, PREFIX),
                               provenance=prov)
        done[step] = label.index
    return done


__all__ = ["MEASURES", "METHODS", "Selection", "check_selection", "frame_sigma", "label_frames",
           "select_frames"]
