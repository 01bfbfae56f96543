"""Block ranges for `eth_getLogs` that adapt to what the provider accepts.

Providers cap a log query by blocks, results or response size, and word the refusal differently.
A range halves on such a refusal (and never grows past just under the refused size again), and
doubles after each success, so a long backfill converges on the largest range the provider serves.
The account indexer and `perp-keeper history` walk the chain with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from keeper.errors import RpcError, RpcUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

# how providers word "ask for less" (Alchemy, Infura, QuickNode, op-geth, Ankr, anvil)
TOO_MUCH = re.compile(
    r"too many|too large|exceed|limit|range|more than|response size|max results|timeout|10000", re.IGNORECASE
)


class AdaptiveRange:
    def __init__(self, initial: int = 2_000, maximum: int = 100_000) -> None:
        self.size = initial
        self.maximum = maximum  # lowered to just under the smallest range the provider refused

    async def walk(
        self,
        first: int,
        last: int,
        fetch: Callable[[int, int], Awaitable[T]],
        done: Callable[[int, int, T], None],
    ) -> None:
        """`fetch(start, end)` over first..last in adaptive chunks, `done(start, end, answer)` after
        each, in order; a refusal that says "ask for less" shrinks the chunk, anything else raises."""
        start = first
        while start <= last:
            end = min(last, start + self.size - 1)
            try:
                answer = await fetch(start, end)
            except (RpcError, RpcUnavailableError) as exc:
                if end > start and TOO_MUCH.search(str(exc)):
                    self.maximum = min(self.maximum, end - start)
                    self.size = max(1, (end - start + 1) // 2)
                    log.info("eth_getLogs refused %d blocks (%s); trying %d", end - start + 1, exc, self.size)
                    continue
                raise
            done(start, end, answer)
            start = end + 1
            self.size = min(self.maximum, self.size * 2)
