"""How many atoms one batched committee call of the batched relaxation takes.

::

    budget = AtomBudget()                  # grown from timings
    budget = AtomBudget(fixed=2048)        # fixed
    budget.atoms                           # the current budget [atoms]
    budget.record(n_atoms, seconds)        # after each batched call

Grown from timings, not from memory probing, so it works on CPU and GPU alike: the budget
starts at ``max(start, largest candidate)`` and is multiplied by ``factor`` while the time per
atom of the batched committee call keeps falling by more than ``tol`` (relative) from one
budget to the next; at the first budget that does not pay, it goes back to the best one and
stays there.  Each budget is judged by the median time per atom of ``rounds`` calls that were
at least 3/4 full (a call with fewer atoms, e.g. at the end of a pool, says nothing about
it); the very first call (start-up, compilation) is not counted.  ``limit`` caps the growth.
"""
from __future__ import annotations

import statistics

from ..errors import ConfigError
from .policy import count_setting


class AtomBudget:
    """Atoms per batched call (module docstring); ``history``: ``[(budget, s per atom)]``."""

    def __init__(self, fixed=None, start=64, largest=1, factor=2.0, limit=16384, tol=0.05,
                 rounds=3):
        if fixed is not None:
            fixed = count_setting("atom budget", fixed)
            if fixed < largest:
                raise ConfigError(f"the atom budget {fixed} is smaller than the largest "
                                  f"candidate ({largest} atoms); give at least {largest}")
        if factor <= 1 or rounds < 1:
            raise ConfigError("the atom budget grows by a factor > 1 over >= 1 rounds")
        self.fixed = fixed
        self.atoms = int(fixed if fixed is not None else max(start, largest))
        self.growing = fixed is None
        self.factor, self.limit, self.tol, self.rounds = float(factor), int(limit), tol, rounds
        self.history: list = []
        self._times: list = []
        self._best = None  # (s per atom, budget)
        self._calls = 0

    def record(self, n_atoms: int, seconds: float) -> None:
        """One batched call of ``n_atoms`` atoms took ``seconds``; may change :attr:`atoms`."""
        self._calls += 1
        if not self.growing or self._calls == 1 or n_atoms < 0.75 * self.atoms or seconds <= 0:
            return
        self._times.append(seconds / n_atoms)
        if len(self._times) < self.rounds:
            return
        per = statistics.median(self._times)
        self._times = []
        self.history.append((self.atoms, per))
        if self._best is None or per < self._best[0] * (1 - self.tol):
            self._best = (per, self.atoms)
            bigger = int(self.atoms * self.factor)
            if bigger <= self.limit:
                self.atoms = bigger
                return
        self.atoms = self._best[1]
        self.growing = False

    def describe(self) -> str:
        how = "fixed" if self.fixed is not None else ("growing" if self.growing else "from timings")
        steps = ", ".join(f"{b}: {1e6 * t:.3g} µs/atom" for b, t in self.history)
        return f"atom budget {self.atoms} ({how}{'; ' + steps if steps else ''})"


def pool_budget(ids, images, atom_budget=None) -> AtomBudget:
    """The :class:`AtomBudget` of a pool (``atom_budget`` atoms, None: grown from timings); a
    fixed one smaller than the largest candidate is refused (ConfigError naming it)."""
    images = list(images)
    if not images:
        return AtomBudget(atom_budget or None)
    big = max(range(len(images)), key=lambda k: len(images[k]))
    try:
        return AtomBudget(atom_budget, largest=len(images[big]))
    except ConfigError as exc:
        raise ConfigError(f"candidate {ids[big]} ({len(images[big])} atoms): {exc}") from None


__all__ = ["AtomBudget", "pool_budget"]
