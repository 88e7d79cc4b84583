"""Append-only, crash-safe, multi-writer label store (extended XYZ).

::

    store = LabelStore("labels.extxyz")
    i = store.append(atoms, {"energy": e, "forces": f, "stress": s},
                     committee_results=committee.results, provenance={"driver": "md", "step": 7})
    len(store)                  # number of complete labels
    frames = store.read()       # list[Atoms]; info["REF_energy"] (eV), arrays["REF_forces"] (eV/Å),
                                # info["REF_stress"] (6 Voigt, eV/Å³, ASE sign convention)

Frame layout (one extxyz frame per label)
    * reference values under ``energy_key``/``forces_key``/``stress_key`` (defaults ``REF_energy``,
      ``REF_forces``, ``REF_stress``: what the MACE, NequIP and SchNetPack trainers of
      :mod:`committee_calc.train` read); optional baseline values (Δ-learning) under ``BASE_energy`` ...;
    * the committee prediction and uncertainty that triggered the label under the ``committee_``
      prefix (:func:`committee_calc.io.attach_uncertainties`);
    * provenance under ``prov_*`` (driver, step, reference hash, ISO time, host, pid, plus whatever
      the caller passes) and ``label_id`` (uuid4 hex), ``label_hash`` (hash of numbers, positions,
      cell, pbc rounded to 1e-6 Å).

Guarantees and how they are met
    * **Atomic append**: the whole frame (or batch, for :meth:`extend`) is formatted in memory and
      written with one ``os.write`` on an ``O_APPEND`` descriptor, then ``fsync``-ed.  A process
      killed during the write can leave at most a *torn trailing frame*.
    * **Torn frames are quarantined, never dropped or merged**: every open, append and read first
      scans the new part of the file (frame structure: count line, comment line, N atom lines, each
      newline-terminated) and parses the last new frame with ASE.  An incomplete or unparsable
      trailing frame is copied to ``<path>.quarantine`` (with a header line saying when and from
      which offset), fsync-ed, and only then cut from the store (``truncate``); a warning names
      both files.  Corruption in the *middle* of the file is not repaired silently:
      :class:`LabelStoreError`.
    * **Concurrent writers lose nothing and interleave no bytes**: scan, repair and write happen
      under an exclusive ``fcntl.flock`` on ``<path>.lock`` (see :mod:`committee_calc._lock`).
    * **Created lazily**: opening or reading a missing store creates nothing (no folder, file or
      lock file); the first append does.  An existing store without ``<path>.lock`` is scanned
      read-only without the lock (a torn tail stays, with a warning, until the next append
      quarantines it), and again under the lock if a writer (which always creates the lock file
      first) appeared meanwhile.
    * **Optional de-duplication** (``deduplicate=True``): a label whose ``label_hash`` is already in
      the store is not written again; ``append`` returns the index of the existing copy and sets
      ``last_was_duplicate``.

An ASE-db backend is not provided: the extxyz store meets every requirement above and is what the
trainers read directly.
"""
from __future__ import annotations

import io as _io
import json
import os
import re
import socket
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from ._lock import file_lock
from .errors import CommitteeWarning, LabelStoreError
from .fileio import fsync_dir as _fsync_dir
from .fileio import write_all as _write_all  # module global: tests replace it to emulate a kill
from .io import attach_uncertainties
from .structures import structure_hash

_HASH_RE = re.compile(rb"label_hash=([0-9a-f]{16,64})")


def _scalar(v):
    for kind, cast in (((bool, np.bool_), bool), ((int, np.integer), int), ((float, np.floating), float),
                       (str, str)):
        if isinstance(v, kind):
            return cast(v)
    return json.dumps(v, default=str)


def _synced(path, data: bytes | None = None) -> None:
    """fsync ``path`` after appending ``data`` with one write (the file is created), or as it is."""
    fd = os.open(path, os.O_RDONLY if data is None else os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if data is not None:
            _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class LabelStore:
    """Append-only extxyz training set (see module docstring for guarantees).

    Parameters
    ----------
    path: the ``.extxyz`` file.  Nothing is created until the first label is written (then
        the folder, the file and ``<path>.lock``); reading a missing store gives no labels.
    energy_key, forces_key, stress_key, baseline_prefix, committee_prefix: names of the reference
        values and prefixes of the baseline (Δ-learning, ``BASE_energy``) and committee values.
    deduplicate: skip structures already stored (same ``label_hash``).
    lock_timeout_s: give up (LabelStoreError) after waiting this long for the lock; None = wait.
    """

    def __init__(self, path, energy_key="REF_energy", forces_key="REF_forces",
                 stress_key="REF_stress", baseline_prefix="BASE_", committee_prefix="committee_",
                 deduplicate=False, lock_timeout_s=None):
        self.path = Path(path).expanduser().absolute()
        for name, key in (("energy_key", energy_key), ("forces_key", forces_key),
                          ("stress_key", stress_key)):
            if not isinstance(key, str) or not key or key in ("energy", "forces", "stress"):
                raise LabelStoreError(
                    f"{name} must be a non-empty name other than {key!r} (ASE would turn "
                    "plain energy/forces/stress into a calculator); use e.g. 'REF_energy'")
        self.energy_key, self.forces_key, self.stress_key = energy_key, forces_key, stress_key
        self.baseline_prefix, self.committee_prefix = baseline_prefix, committee_prefix
        self.deduplicate, self.lock_timeout_s = bool(deduplicate), lock_timeout_s
        self.lock_path, self.quarantine_path = (Path(f"{self.path}{x}") for x in (".lock", ".quarantine"))
        self.last_was_duplicate, self.n_quarantined = False, 0
        # byte offset of each complete frame, byte offset after the last one, label_hash -> index
        self._offsets, self._end, self._hashes = [], 0, {}
        self._torn_seen = None     # (offset, size) of a torn tail read without the lock
        with self._scanned():  # an existing store is checked (torn tail, corruption) now
            pass

    # ------------------------------------------------------------------ locking/scan
    def _lock(self):
        return file_lock(self.lock_path, exclusive=True, timeout_s=self.lock_timeout_s)

    @contextmanager
    def _scanned(self):
        """The index up to date for the ``with`` block: under the lock when ``<path>.lock``
        exists, else read-only without creating it (:meth:`_scan_unlocked`); empty, with
        nothing locked or created, while the store file does not exist (created lazily)."""
        if not self.path.exists():
            self._offsets, self._end, self._hashes = [], 0, {}
            yield
        elif not self.lock_path.exists() and self._scan_unlocked():
            yield
        else:
            with self._lock():
                self._refresh()
                yield

    def _scan_unlocked(self) -> bool:
        """Read-only scan of a store no writer has locked yet; False (index as before) when a
        writer created the lock file meanwhile, so the caller scans again under the lock."""
        saved = (list(self._offsets), self._end, dict(self._hashes))
        torn = self._refresh(repair=False)
        if self.lock_path.exists():
            self._offsets, self._end, self._hashes = saved
            return False
        if torn is not None and torn != self._torn_seen:  # warn once per torn tail
            self._torn_seen = torn
            warnings.warn(f"label store {self.path} ends with an incomplete frame ({torn[1]} bytes at offset "
                          f"{torn[0]}): not read; the next append moves it to {self.quarantine_path}",
                          CommitteeWarning, stacklevel=5)
        return True

    def _create_folder(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            why = f"{str(blocker)!r} is a file, not a folder" if blocker is not None else str(exc)
            raise LabelStoreError(f"cannot create the folder of the label store {str(self.path)!r}: "
                                  f"{why}; choose another --labels path") from exc

    def _refresh(self, repair: bool = True):
        """Index frames appended since the last look; quarantine a torn tail (lock held).
        ``repair=False`` (no lock held) leaves a torn tail in place and returns
        ``(offset, size)`` of it (None when there is none)."""
        size = os.path.getsize(self.path) if self.path.exists() else 0
        if size < self._end:  # replaced/shortened behind our back: index from scratch
            self._offsets, self._end, self._hashes = [], 0, {}
        if size == self._end:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(self._end)
            buf = fh.read(size - self._end)
        base = self._end
        pos, new, torn_at = 0, [], None
        while pos < len(buf):
            nl = buf.find(b"\n", pos)
            if nl < 0:
                torn_at = pos
                break
            try:
                natoms = int(buf[pos:nl].strip())
            except ValueError:
                raise LabelStoreError(
                    f"{self.path} is corrupt at byte {base + pos}: expected an atom count line, "
                    f"found {buf[pos:nl][:60]!r}. It was not written by LabelStore; move it "
                    "aside or repair it by hand") from None
            end = nl
            for _ in range(natoms + 1):
                end = buf.find(b"\n", end + 1)
                if end < 0:
                    break
            if end < 0:
                torn_at = pos
                break
            new.append((pos, end + 1))
            pos = end + 1
        if new and torn_at is None and not self._parses(buf[new[-1][0]:new[-1][1]]):
            torn_at = new.pop()[0]
        for start, _end in new:
            idx = len(self._offsets)
            self._offsets.append(base + start)
            m = _HASH_RE.search(buf, start, buf.find(b"\n", buf.find(b"\n", start) + 1))
            if m:
                self._hashes.setdefault(m.group(1).decode(), idx)
        self._end = base + (new[-1][1] if new else 0)
        if torn_at is not None and repair:
            self._quarantine(buf[torn_at:], base + torn_at)
        return None if torn_at is None or repair else (base + torn_at, len(buf) - torn_at)

    @staticmethod
    def _parses(frame: bytes) -> bool:
        try:
            ase.io.read(_io.StringIO(frame.decode()), format="extxyz")
            return True
        except Exception:  # noqa: BLE001 - any failure means "not a valid frame"
            return False

    def _quarantine(self, data: bytes, offset: int) -> None:
        header = (f"# quarantined {time.strftime('%Y-%m-%dT%H:%M:%S%z')} from {self.path} "
                  f"offset {offset}: {len(data)} bytes of a torn trailing frame\n").encode()
        _synced(self.quarantine_path, header + data + (b"" if data.endswith(b"\n") else b"\n"))
        os.truncate(self.path, offset)
        _synced(self.path)
        self.n_quarantined += 1
        warnings.warn(f"label store {self.path}: a torn trailing frame ({len(data)} bytes, from "
                      f"an interrupted write) was moved to {self.quarantine_path}",
                      CommitteeWarning, stacklevel=3)

    # ------------------------------------------------------------------ formatting
    def format_frame(self, atoms, reference_results: dict, committee_results=None,
                     provenance=None, baseline_results=None) -> tuple:
        """Return ``(extxyz text of one frame, label_hash)``; validates the values."""
        if not isinstance(reference_results, dict) or "energy" not in reference_results:
            raise LabelStoreError("reference_results must be a dict with at least 'energy' (eV)")
        n = len(atoms)
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=atoms.pbc)
        e = float(reference_results["energy"])
        vals = [("energy", e)]
        frame.info[self.energy_key] = e
        if reference_results.get("forces") is not None:
            f = np.asarray(reference_results["forces"], float).reshape(n, 3)
            frame.arrays[self.forces_key] = f.copy()
            vals.append(("forces", f))
        if reference_results.get("stress") is not None:
            s = _voigt(reference_results["stress"])
            frame.info[self.stress_key] = s
            vals.append(("stress", s))
        bad = [k for k, v in vals if not np.all(np.isfinite(v))]
        if bad:
            raise LabelStoreError(f"refusing to store a label with non-finite reference {bad}")
        if baseline_results:
            p = self.baseline_prefix
            frame.info[p + "energy"] = float(baseline_results["energy"])
            if baseline_results.get("forces") is not None:
                frame.arrays[p + "forces"] = np.asarray(baseline_results["forces"], float).reshape(n, 3)
            if baseline_results.get("stress") is not None:
                frame.info[p + "stress"] = _voigt(baseline_results["stress"])
        if committee_results:
            attach_uncertainties(frame, committee_results, prefix=self.committee_prefix)
        prov = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                "pid": os.getpid()}
        prov.update({k: v for k, v in (provenance or {}).items() if v is not None})
        for k, v in prov.items():
            frame.info[f"prov_{k}"] = _scalar(v)
        h = structure_hash(frame)
        frame.info["label_hash"] = h
        frame.info["label_id"] = uuid.uuid4().hex
        buf = _io.StringIO()
        ase.io.write(buf, frame, format="extxyz")
        text = buf.getvalue()
        if not text.endswith("\n"):
            text += "\n"
        return text, h

    # ------------------------------------------------------------------ public API
    def append(self, atoms, reference_results: dict, committee_results=None, provenance=None,
               baseline_results=None) -> int:
        """Append one label atomically; return its index (0-based) in the store."""
        return self._write([self.format_frame(atoms, reference_results, committee_results,
                                              provenance, baseline_results)])[0]

    def extend(self, items, provenance=None) -> list:
        """Append several labels in one atomic write (all or none); return their indices.

        ``items``: Atoms carrying a calculator with results (e.g. a
        SinglePointCalculator), or tuples ``(atoms, reference_results[,
        committee_results[, provenance]])``.
        """
        frames = []
        for item in items:
            if isinstance(item, Atoms):
                if item.calc is None or not getattr(item.calc, "results", None):
                    raise LabelStoreError("extend() needs Atoms with a calculator holding results "
                                          "(energy, forces...) or (atoms, results) tuples")
                ref, com, prov = dict(item.calc.results), None, provenance
            else:
                item = tuple(item)
                ref = item[1]
                com = item[2] if len(item) > 2 else None
                prov = item[3] if len(item) > 3 else provenance
                item = item[0]
            frames.append(self.format_frame(item, ref, com, prov))
        return self._write(frames) if frames else []

    def _write(self, frames: list) -> list:
        self._create_folder()
        with self._lock():
            self._refresh()
            out, data, seen = [], [], {}
            self.last_was_duplicate = False
            for text, h in frames:
                if self.deduplicate and (h in self._hashes or h in seen):
                    out.append(self._hashes.get(h, seen.get(h)))
                    self.last_was_duplicate = True
                    continue
                idx = len(self._offsets) + len(data)
                seen[h] = idx
                out.append(idx)
                data.append((text.encode(), h))
            if not data:
                return out
            blob = b"".join(c for c, _ in data)
            created = not self.path.exists()
            _synced(self.path, blob)
            if created:
                _fsync_dir(self.path.parent)
            pos = self._end
            for chunk, h in data:
                self._hashes.setdefault(h, len(self._offsets))
                self._offsets.append(pos)
                pos += len(chunk)
            self._end = pos
            return out

    def __len__(self) -> int:
        with self._scanned():
            return len(self._offsets)

    def read(self, index=":") -> list:
        """All complete labels (or ``index``: int or slice string) as a list of Atoms."""
        with self._scanned():
            if not self._offsets:
                return []
            start, end = 0, self._end
            if isinstance(index, int):  # one frame: parse its bytes only, not the whole store
                k = range(len(self._offsets))[index]  # IndexError as for a list
                start, end = self._offsets[k], (self._offsets + [self._end])[k + 1]
            with open(self.path, "rb") as fh:
                fh.seek(start)
                text = fh.read(end - start).decode()
        frames = ase.io.read(_io.StringIO(text), index=":", format="extxyz")
        if isinstance(index, int) or index == ":":
            return frames
        return frames[slice(*[int(x) if x else None for x in index.split(":")])]

    def find(self, atoms) -> int | None:
        """Index of the label of the same geometry (:func:`structure_hash`), or None."""
        with self._scanned():
            return self._hashes.get(structure_hash(atoms))

    def reference_results(self, index: int, reference_hash: str | None = None) -> dict | None:
        """The stored reference values of label ``index``: energy [eV], forces (N,3) [eV/Å],
        stress (6,) [eV/Å³] (those present); None when ``reference_hash`` is given and the
        label was computed by another reference."""
        frame = self.read(int(index))[0]
        if reference_hash is not None and frame.info.get("prov_reference_hash") != reference_hash:
            return None
        out = {"energy": float(frame.info[self.energy_key]), "free_energy": float(frame.info[self.energy_key])}
        if self.forces_key in frame.arrays:
            out["forces"] = np.array(frame.arrays[self.forces_key], float)
        if self.stress_key in frame.info:
            out["stress"] = np.array(frame.info[self.stress_key], float)
        return out

    def __iter__(self):
        return iter(self.read())

    def __repr__(self):
        return f"LabelStore({str(self.path)!r}, n={len(self._offsets)})"


def _voigt(stress) -> np.ndarray:
    s = np.asarray(stress, float)
    if s.shape == (3, 3):
        s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return s.reshape(6).copy()
