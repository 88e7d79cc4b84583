"""Inter-process file locks (``fcntl.flock`` on a side lock file).

``flock`` locks belong to an open file description, so two handles opened in
the same process exclude each other too (threads are covered).  The lock file
is never deleted: deleting it would let two processes lock different inodes.
On Linux NFS (v4, or v3 with NLM) ``flock`` is emulated with POSIX locks and
still excludes writers on other hosts.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager

from .errors import LabelStoreError


@contextmanager
def file_lock(path, exclusive: bool = True, timeout_s: float | None = None, poll_s: float = 0.01):
    """Hold an flock on ``path`` (created if missing) for the ``with`` block.

    ``timeout_s=None`` waits forever; otherwise :class:`LabelStoreError` is
    raised when the lock is not obtained within ``timeout_s`` seconds.
    """
    try:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LabelStoreError(f"cannot open lock file {str(path)!r}: {exc}; check the folder "
                              "exists and is writable") from exc
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        if timeout_s is None:
            fcntl.flock(fd, mode)
        else:
            deadline = time.monotonic() + float(timeout_s)
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LabelStoreError(
                            f"could not lock {str(path)!r} within {timeout_s} s; another "
                            "process holds it (a hung writer?)"
                        ) from None
                    time.sleep(poll_s)
        yield fd
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
