"""The drivers' edge, entered by :func:`committee_calc.cli.run_cli` around every driver run.

* SIGTERM (what SLURM sends at the walltime or on ``scancel``, and ``kill``'s default) is handled
  like Ctrl-C: :func:`sigterm_as_interrupt` turns it into :class:`Terminated`, a
  ``KeyboardInterrupt``, raised in the main thread, so the driver unwinds as on Ctrl-C (outputs
  written so far are kept, executors and worker processes are closed, a rerun resumes) and
  :func:`exit_code` gives 143 (128 + 15, the shell's code for SIGTERM; Ctrl-C: 130).  A second
  SIGTERM while unwinding ends the process at once (the default action).
* committee_calc's own warnings (categories defined in the package: ``DomainWarning``,
  ``OffsetWarning``, ``PhononWarning``, ``QHAWarning``, … :func:`is_ours`) print as one line
  ``warning: <message>`` on stderr, without the source file, line and code Python adds
  (:func:`clean_warnings`).  Other warnings, and every warning with ``--verbose``, print as
  Python prints them.  Nothing is changed while warnings are being recorded
  (``warnings.catch_warnings(record=True)``, as pytest does for every test): tests see the real
  warnings.

::

    with driver_edge(verbose=False):
        main(argv)          # SIGTERM -> Terminated; warnings.warn(..., DomainWarning) -> one line
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings

#: exit codes of a run interrupted by Ctrl-C (SIGINT) and by SIGTERM (128 + signal number)
INTERRUPT_EXIT, SIGTERM_EXIT = 128 + signal.SIGINT, 128 + signal.SIGTERM
#: the line an interrupted run prints on stderr
INTERRUPTED = "interrupted: outputs written so far are kept; rerun to resume"


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (:func:`sigterm_as_interrupt`); unwinds like Ctrl-C."""


def exit_code(exc: BaseException) -> int:
    """143 for :class:`Terminated` (SIGTERM), 130 for any other KeyboardInterrupt (Ctrl-C)."""
    return SIGTERM_EXIT if isinstance(exc, Terminated) else INTERRUPT_EXIT


def interrupted_line(exc: BaseException) -> str:
    """The ``interrupted: …`` line of :data:`INTERRUPTED`, naming SIGTERM when it was that."""
    return INTERRUPTED.replace("interrupted", "interrupted (SIGTERM)", 1) if isinstance(exc, Terminated) \
        else INTERRUPTED


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (once; the previous
    handler is restored on exit).  Outside the main thread (where Python cannot set signal
    handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while unwinding ends it
        raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def is_ours(category) -> bool:
    """True for a warning category defined in committee_calc (e.g. ``DomainWarning``)."""
    return str(getattr(category, "__module__", "")).split(".")[0] == "committee_calc"


def _recording() -> bool:
    """True while ``warnings.catch_warnings(record=True)`` collects warnings (pytest, a caller)."""
    impl = getattr(warnings, "_showwarnmsg_impl", None)
    return impl is not None and getattr(impl, "__name__", "") != "_showwarnmsg_impl"


@contextlib.contextmanager
def clean_warnings(enabled: bool = True):
    """While inside, a warning of one of our categories (:func:`is_ours`) prints as
    ``warning: <message>`` (one line, on stderr or the stream it was meant for); others go to
    the ``warnings.showwarning`` in force before.  Does nothing when not ``enabled`` or while
    warnings are recorded (:func:`_recording`)."""
    if not enabled or _recording():
        yield
        return
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not is_ours(category):
            return shown(message, category, filename, lineno, file, line)
        stream = sys.stderr if file is None else file
        if stream is None:  # pythonw: no stderr
            return None
        try:
            stream.write(f"warning: {' '.join(str(message).split())}\n")
        except OSError:  # the stream is gone (a closed pipe): as Python's own showwarning
            pass
        return None

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


@contextlib.contextmanager
def driver_edge(verbose: bool = False):
    """:func:`sigterm_as_interrupt` and :func:`clean_warnings` (off with ``verbose``) together."""
    with sigterm_as_interrupt(), clean_warnings(enabled=not verbose):
        yield


__all__ = ["INTERRUPTED", "INTERRUPT_EXIT", "SIGTERM_EXIT", "Terminated", "clean_warnings", "driver_edge",
           "exit_code", "interrupted_line", "is_ours", "sigterm_as_interrupt"]
