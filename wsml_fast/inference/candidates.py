"""The best (image, class) candidates for a budget of answers, kept while a split's scores stream in a batch at a
time: memory follows the budget and the number of classes, never images x classes.

Candidates are ordered by a key (lower is worth more), ties by row and then class, so that a selection does not
depend on the batch size. A per-class cap keeps any class from taking more than its share:

- `spread` (the default of `wsml suggest`): the cap is the water level L, the smallest L with
  sum over classes of min(candidates of the class, L) >= budget. When every class has enough candidates that is
  ceil(budget / classes with candidates); a class with fewer leaves its unused share to the others.
- a fixed cap K (`--per-class-cap`): at most K a class.
- no cap (`random` without `--per-class-cap`: a uniform sample).

The selection is then the `budget` best keys among the candidates that rank below the cap within their class.

What is kept between batches, and why it is enough:
- a candidate whose rank within its class reaches the cap is dropped: later candidates can only push it further
  down its class, and the cap can only fall (the water level falls as the counts grow). So each class keeps at
  most L, and the pool at most budget + classes candidates.
- with a fixed cap or none, a candidate worse than the budget-th best of the capped pool is dropped too: each
  class's capped best only improve, so that budget-th key only falls. The pool then holds `budget` candidates.
A batch's candidates are first compared with per-class limits drawn from the pool (`limits`), so only those that
can enter are sorted with it; rows arrive in increasing order, so a new candidate loses every tie of keys.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Chosen candidates, best first: split row, class, key and probability of each."""

    rows: np.ndarray
    cols: np.ndarray
    keys: np.ndarray
    probabilities: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, order: np.ndarray) -> Selection:
        return Selection(self.rows[order], self.cols[order], self.keys[order], self.probabilities[order])

    @classmethod
    def empty(cls) -> Selection:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32))

    @classmethod
    def joined(cls, parts: list[Selection]) -> Selection:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def water_level(counts: np.ndarray, budget: int) -> int:
    """The smallest cap L with sum(min(counts, L)) >= budget (the largest count when all of them fall short)."""
    if counts.sum() <= budget:
        return max(int(counts.max(initial=0)), 1)
    low, high = 1, budget  # sum(min(counts, budget)) >= budget here
    while low < high:
        middle = (low + high) // 2
        if np.minimum(counts, middle).sum() >= budget:
            high = middle
        else:
            low = middle + 1
    return low


def _within_class_rank(pool: Selection) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts `pool` by (class, key, row), and each candidate's rank within its class in it."""
    order = np.lexsort((pool.rows, pool.keys, pool.cols))
    cols = pool.cols[order]
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    rank = np.arange(len(cols)) - np.repeat(starts, np.diff(np.r_[starts, len(cols)]))
    return order, rank


def _best(pool: Selection, budget: int) -> Selection:
    """The `budget` best candidates by (key, row, class), best first."""
    order = np.lexsort((pool.cols, pool.rows, pool.keys))[:budget]
    return pool.take(order)


class CandidatePool:
    """Feed it each batch's keys (`add`), then ask for the `selection`; see the module's docstring."""

    def __init__(self, n_classes: int, budget: int, cap: int | None = None, spread: bool = True) -> None:
        if budget < 1 or (cap is not None and cap < 1):
            raise ValueError("budget and cap must be at least 1")
        self.n_classes, self.budget, self.fixed_cap, self.spread = n_classes, budget, cap, spread and cap is None
        self.counts = np.zeros(n_classes, np.int64)  # candidates seen per class
        self.pool = Selection.empty()
        self.next_row = 0

    def cap(self) -> int | None:
        return water_level(self.counts, self.budget) if self.spread else self.fixed_cap

    def limits(self) -> np.ndarray:
        """Per class, the key from which a new candidate cannot enter the pool (inf: any can)."""
        limits = np.full(self.n_classes, np.inf)
        cap = self.cap()
        if cap is not None and len(self.pool):
            order, rank = _within_class_rank(self.pool)
            last = rank == cap - 1  # the worst candidate a full class keeps
            limits[self.pool.cols[order][last]] = self.pool.keys[order][last]
        if not self.spread and len(self.pool) >= self.budget:
            limits = np.minimum(limits, self.pool.keys.max())
        return limits

    def add(self, rows: np.ndarray, keys: np.ndarray, probabilities: np.ndarray, candidate: np.ndarray) -> None:
        """One batch: its split rows (increasing, after every earlier batch's), B x C keys and probabilities, and
        the B x C mask of the entries that may be chosen (the unobserved ones)."""
        if len(rows) and rows[0] < self.next_row:
            raise ValueError("batches must come in increasing row order")
        self.next_row = int(rows[-1]) + 1 if len(rows) else self.next_row
        self.counts += candidate.sum(axis=0)
        at, cols = np.nonzero(candidate & (keys < self.limits()[None, :]))
        rows = np.asarray(rows, np.int64)[at]
        batch = Selection(rows, cols.astype(np.int64), keys[at, cols], probabilities[at, cols])
        self.pool = self._pruned(Selection.joined([self.pool, batch]))

    def _pruned(self, pool: Selection) -> Selection:
        cap = self.cap()
        if cap is not None:
            order, rank = _within_class_rank(pool)
            pool = pool.take(order[rank < cap])
        return pool if self.spread else _best(pool, self.budget)

    def selection(self) -> Selection:
        """The chosen candidates, best first (fewer than the budget when there are fewer candidates)."""
        return _best(self._pruned(self.pool), self.budget)
