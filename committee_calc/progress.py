"""Progress reporting for every driver: a tqdm bar in a terminal, plain log lines elsewhere.

* :func:`progress_iter` — wrap an iterable in a tqdm bar when stderr is a terminal, else in plain
  :class:`Progress` lines (when its length is known).
* :class:`Progress` — ``total`` units of work (steps, volumes, candidates).  On a terminal it is a
  tqdm bar on stderr (``postfix`` shows e.g. the MD thermo values); when stderr is not a terminal
  (``nohup``, a batch scheduler, a file) it logs one plain line (logger ``committee_calc.progress``,
  INFO) each time the work crosses another ``every`` fraction (default 5 %) or ``min_interval_s``
  seconds have passed, with done/total, percentage, rate, elapsed time and ETA.  ``enabled=False``
  makes it silent.  :data:`LINE_TAG` starts every plain line (``progress:``), so a log can be grepped.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("committee_calc.progress")

#: every plain progress line starts with this
LINE_TAG = "progress:"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_iter(iterable, enabled=True, desc=None, total=None):
    """``iterable`` in a tqdm bar when ``enabled`` and stderr is a terminal; when stderr is not a
    terminal and the length is known (``total`` or ``len``), plain :class:`Progress` lines as the
    items are consumed; else unchanged."""
    if not enabled:
        return iterable
    if not _isatty(sys.stderr):
        n = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        return _plain_iter(iterable, n, desc or "work") if n else iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def _plain_iter(iterable, total, desc):
    bar = Progress(total, desc, terminal=False)
    for item in iterable:
        yield item
        bar.update(1)


def _interval(seconds: float) -> str:
    from tqdm import tqdm

    return tqdm.format_interval(max(0.0, seconds))


def _count(x: float) -> str:
    """Units done for a line: integers as they are, fractions to two decimals (0.17, not 0.166667)."""
    return f"{x:g}" if float(x).is_integer() else f"{x:.2f}".rstrip("0")


class Progress:
    """Progress of ``total`` units of work called ``unit`` (see the module docstring).

    desc: what runs (``"md"``, ``"qha"``); initial: units already done (a resumed run);
    every: fraction of ``total`` between plain lines; min_interval_s: at most this long between
    plain lines while work advances; terminal: force bar (True) or plain lines (False); default:
    whether stderr is a terminal.  Use as a context manager or call :meth:`close`.
    """

    def __init__(self, total, desc: str, unit: str = "it", initial: float = 0, enabled: bool = True,
                 every: float = 0.05, min_interval_s: float = 60.0, terminal: bool | None = None):
        self.total, self.desc, self.unit = max(float(total), 0.0), desc, unit
        self.n = self.start_n = float(initial)
        self.enabled, self.every, self.min_interval_s = enabled, float(every), float(min_interval_s)
        self.t0 = self.t_last = time.monotonic()
        self._next = self._next_mark(self.n)
        self.bar = None
        if enabled and (_isatty(sys.stderr) if terminal is None else terminal):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                            file=sys.stderr, dynamic_ncols=True)

    def _next_mark(self, n: float) -> float:
        step = max(self.total * self.every, 1e-12)
        return (int(n / step + 1e-9) + 1) * step

    def line(self, postfix: str = "") -> str:
        """The plain progress line for the current state."""
        elapsed = time.monotonic() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = _interval((self.total - self.n) / rate) if rate > 0 else "?"
        n = f"{_count(self.n)}/{_count(self.total)}"
        text = (f"{LINE_TAG} {self.desc} {n} {self.unit} ({pct:.0f}%) {rate:.3g} {self.unit}/s "
                f"elapsed {_interval(elapsed)} ETA {eta}")
        return f"{text} | {postfix}" if postfix else text

    def update(self, n: float = 1, postfix: str = "", force: bool = False) -> None:
        """Advance by ``n`` units; ``postfix``: state to show (bar postfix or end of the line);
        ``force``: log a plain line now."""
        if not self.enabled:
            return
        self.n = min(self.n + n, self.total) if self.total else self.n + n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.monotonic()
        if force or self.n >= self._next - 1e-9 or now - self.t_last >= self.min_interval_s:
            log.info(self.line(postfix))
            self.t_last = now
            self._next = self._next_mark(self.n)

    def write(self, text: str) -> None:
        """A message that does not break the bar (``tqdm.write`` on a terminal, else the log)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.enabled:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
