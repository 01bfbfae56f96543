"""Which (market, account) pairs to read at a head: per-block work follows the open positions, not
every pair ever seen.

* open: every position with a size is read every block (exact where it matters: `canLiquidate`
  moves with the price, margin and funding of every open position);
* dirty: a pair named by a `PositionModified` log in the blocks just indexed (opened, modified,
  closed, liquidated) is read in that block;
* the sweep: a rotating slice of the closed pairs, so every pair is read again at least every
  `sweep_blocks` blocks whatever the logs said.

A closed pair (size 0) is otherwise not read: a position can only reopen through a trade, which logs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Pair = tuple[str, str]  # (market proxy, account)
DEFAULT_SWEEP_BLOCKS = 300


def pair_of(key: str) -> Pair:
    """The indexer's "proxy:account" key as a pair."""
    market, account = key.split(":", 1)
    return market, account


class Tiers:
    def __init__(self, sweep_blocks: int = DEFAULT_SWEEP_BLOCKS) -> None:
        self.sweep_blocks = max(1, sweep_blocks)
        self.open: set[Pair] = set()
        self.closed: set[Pair] = set()
        self._cursor = 0
        self.read_last = 0  # pairs read at the last head (a gauge for tests and metrics)

    @property
    def known(self) -> set[Pair]:
        return self.open | self.closed

    def to_read(self, known: Iterable[Pair], dirty: Iterable[Pair]) -> list[Pair]:
        """Open, dirty and the sweep's slice; a pair never read before is read (it is new)."""
        every = set(known)
        new = every - self.known
        closed = sorted(self.closed & every)
        size = math.ceil(len(closed) / self.sweep_blocks) if closed else 0
        start = self._cursor % len(closed) if closed else 0
        self._cursor = start + size
        swept = {closed[(start + i) % len(closed)] for i in range(min(size, len(closed)))}
        chosen = sorted((self.open & every) | (set(dirty) & every) | new | swept)
        self.read_last = len(chosen)
        return chosen

    def update(self, read: Iterable[Pair], still_open: Iterable[Pair]) -> None:
        """What the read found: pairs with a size stay open, the others are closed."""
        opened = set(still_open)
        for pair in read:
            if pair in opened:
                self.open.add(pair)
                self.closed.discard(pair)
            else:
                self.closed.add(pair)
                self.open.discard(pair)
