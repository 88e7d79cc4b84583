"""Crash-safe file helpers shared by the drivers.

Every output a driver resumes from is written atomically (temporary file in
the same folder, fsync, rename), so a kill leaves the old or the new version,
never half of one.  Per-step CSV logs are appended a whole line at a time
and fsynced; ``CsvLog.rows()`` reads them back for resuming (a torn last line
from a kill is ignored and rewritten).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigError


def check_dir(path, what: str = "output folder") -> Path:
    """Check, without creating anything, that folder ``path`` exists and is writable or can
    be created: its nearest existing ancestor must be a folder in which a folder can be made
    (probed with a temporary folder that is removed at once, so read-only file systems,
    /proc and permissions are caught even for root).  Returns ``Path(path)``; raises
    :class:`~committee_calc.errors.ConfigError` naming the path and the reason."""
    out = Path(path).expanduser()
    probe_in = out
    while not probe_in.exists():
        if probe_in.is_symlink():  # a dangling link: mkdir would fail
            raise ConfigError(f"cannot create the {what} {str(out)!r}: {str(probe_in)!r} is a "
                              "broken symbolic link; choose another path")
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise ConfigError(f"cannot create the {what} {str(out)!r}: {str(probe_in)!r} is a file, "
                          "not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".committee_calc_probe_", dir=probe_in))
    except OSError as exc:
        raise ConfigError(f"cannot create the {what} {str(out)!r}: {str(probe_in)!r} is not "
                          f"writable ({exc.strerror or exc}); choose another path") from None
    return out


def write_all(fd, data: bytes) -> None:
    """One ``os.write`` of ``data`` to descriptor ``fd``; loops only on a short write."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(folder) -> None:
    """fsync a folder (a new file's directory entry survives a crash); errors are ignored."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600: give the file the mode a plain open() would (an existing file's,
        # else 0666 minus the umask), so collaborators can read results as usual
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_json_atomic(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default))


def load_json(path, default=None):
    """The JSON object stored in ``path`` (``default`` when the file does not exist).

    A resume-state file that cannot be read or decoded (truncated, edited, not JSON, not
    readable) is a :class:`~committee_calc.errors.ConfigError` naming it and the fix, never a
    ``JSONDecodeError`` traceback.
    """
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{str(path)!r} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                          "delete it to start that part again, or use a new --out folder") from None


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_structures_atomic(path, images, format="extxyz") -> None:
    """Write a list of Atoms to ``path`` atomically (whole file replaced)."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, list(images), format=format)
    atomic_write_text(path, buf.getvalue())


def append_frame(path, atoms, format="extxyz", sync=True) -> None:
    """Append one structure to a trajectory file in a single write, fsynced unless ``sync`` is
    False (a killed process still leaves the frame complete or absent; only an OS crash can lose
    unsynced frames: call :func:`fsync_file` where they must be on disk)."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format=format)
    with open(path, "a") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def fsync_file(path) -> None:
    """fsync an existing file (all its written data on disk); a missing file is ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_frames_repair(path) -> list:
    """All complete frames of an append-only extxyz file; a torn tail is cut off (atomically)."""
    from ase.io import read

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    data = path.read_bytes()
    frames, good_end = [], 0
    for start, end in _frame_spans(data):
        try:
            frames.append(read(io.StringIO(data[start:end].decode()), format="extxyz"))
        except Exception:  # noqa: BLE001 - an unparsable frame ends the good part
            break
        good_end = end
    if good_end < len(data):
        logging.getLogger("committee_calc").warning(
            "%s: cut a torn trailing frame (%d bytes) left by an interrupted run",
            path, len(data) - good_end)
        atomic_write_bytes(path, data[:good_end])
    return frames


def _frame_spans(data: bytes) -> list:
    """(start, end) byte spans of the whole frames of extxyz text (a torn tail is left out)."""
    spans, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        try:
            n = int(data[pos:nl].strip())
        except ValueError:
            break
        end = nl
        for _ in range(n + 1):
            end = data.find(b"\n", end + 1)
            if end < 0:
                break
        if end < 0:
            break
        spans.append((pos, end + 1))
        pos = end + 1
    return spans


def read_last_frame(path):
    """The last complete frame of an append-only extxyz file (None if it has none), parsing only
    that frame; the file is not changed (:func:`read_frames_repair` repairs a torn tail)."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    for start, end in reversed(_frame_spans(data)):
        try:
            return read(io.StringIO(data[start:end].decode()), format="extxyz")
        except Exception:  # noqa: BLE001 - an unparsable frame: try the one before
            continue
    return None


class CsvLog:
    """Append-only CSV with a fixed header; one fsynced write per row."""

    def __init__(self, path, columns):
        self.path = Path(path)
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            self._repair()
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), None)
            if header != self.columns:
                raise ConfigError(
                    f"{self.path} has columns {header}, expected {self.columns}; it belongs "
                    "to a different run or version; use a new output folder"
                )
        else:
            self._write_line(self.columns, mode="w")

    def _repair(self):
        """Drop a torn last line (no trailing newline) left by a kill."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            atomic_write_bytes(self.path, data[:cut])

    def _write_line(self, values, mode="a"):
        buf = io.StringIO()
        csv.writer(buf).writerow(values)
        with open(self.path, mode) as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, row: dict) -> None:
        self._write_line([_fmt(row.get(c, "")) for c in self.columns])

    def rows(self) -> list:
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def __len__(self):
        return len(self.rows())


def _fmt(v):
    """Floats (numpy scalars too) as their shortest round-trip text, never ``np.float64(…)``."""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v
