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

``label_frames`` runs the reference on the selected frames and appends each
to the label store once: the done steps are saved atomically after every label
(``md_selection.json``), and a structure whose ``label_hash`` is already in
the store is never labelled again, so a killed and rerun selection appends no
duplicates.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..fileio import load_json, save_json_atomic
from ..io import read_uncertainties

MEASURES = ("energy_std_per_atom", "energy_std", "energy_std_per_molecule", "forces_std_max",
            "force_uncertainty_relative")
METHODS = ("highest", "fps", "random", "window")


def frame_sigma(frames, measure: str) -> np.ndarray:
    """σ of ``measure`` for each frame, shape (n,), internal units (eV, eV/atom, eV/Å, 1); NaN -> inf."""
    if measure not in MEASURES:
        raise ConfigError(f"unknown uncertainty measure {measure!r}; use one of {MEASURES}")
    key = "committee_" + measure
    missing = [i for i, f in enumerate(frames) if key not in f.info]
    if missing:
        raise ConfigError(f"frames {missing[:5]} carry no {key!r}; record the trajectory with a "
                          "committee (and --molecules for per-molecule measures)")
    s = np.array([float(f.info[key]) for f in frames])
    return np.where(np.isfinite(s), s, np.inf)


def select_frames(frames, measure: str = "forces_std_max", method: str = "highest", n_max: int = 10,
                  lower: float | None = None, upper: float | None = None, seed: int = 0,
                  committee=None, descriptors=None) -> list:
    """Indices into ``frames`` chosen by ``method`` within the trust window (see module doc)."""
    from ..analysis import select as sel

    if method not in METHODS:
        raise ConfigError(f"unknown selection method {method!r}; use one of {METHODS}")
    if isinstance(n_max, bool) or int(n_max) < 1:
        raise ConfigError(f"n_max (frames per generation) must be >= 1, got {n_max!r}")
    n_max = int(n_max)
    if lower is not None and upper is not None and upper <= lower:
        raise ConfigError(f"upper trust level {upper} must be above the lower one {lower}")
    frames = list(frames)
    if not frames:
        return []
    s = frame_sigma(frames, measure)
    ok = np.array([f.info.get("gate_decision", "committee") != "reference" for f in frames])
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
        from ..descriptors import structure_descriptors

        descriptors = structure_descriptors(frames, committee=committee)
    X = np.asarray(descriptors, dtype=float)
    start = int(cand[np.argmax(s[cand])])
    return sel.farthest_point_sampling(X, n_max, start=start, candidates=cand)


def label_frames(frames, indices, reference, store, record_path, provenance=None) -> dict:
    """Label ``frames[i]`` for i in ``indices`` with ``reference``; append each to ``store`` once.

    Returns ``{step: label index}`` for every selected frame (including ones
    labelled by an earlier, interrupted call).  ``record_path``: JSON file that
    remembers which steps are done.
    """
    from ..structures import structure_hash
    from ..reference import as_reference

    record = load_json(record_path, default={}) or {}
    done = {int(k): v for k, v in (record.get("labelled") or {}).items()}
    known = {f.info.get("label_hash"): i for i, f in enumerate(store.read())}
    ref = as_reference(reference) if reference is not None else None
    for i in indices:
        frame = frames[i]
        step = int(frame.info.get("step", i))
        if step in done:
            continue
        atoms = frame.copy()
        atoms.calc = None
        h = structure_hash(atoms)
        if h in known:  # appended before a kill, not yet recorded
            done[step] = known[h]
        else:
            if ref is None:
                raise ConfigError("frames were selected for labelling but no reference calculator was given")
            props = ["energy", "forces"] + (["stress"] if np.all(atoms.pbc) and atoms.cell.rank == 3 else [])
            res = ref.compute(atoms, props)
            prov = dict(provenance or {})
            prov.update(step=step, time_fs=frame.info.get("time_fs"))
            done[step] = store.append(atoms, res, committee_results=read_uncertainties(frame),
                                      provenance=prov)
            known[h] = done[step]
        record["labelled"] = {str(k): int(v) for k, v in sorted(done.items())}
        save_json_atomic(record_path, record)
    return done
