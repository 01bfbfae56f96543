"""How late each position liquidation came, and the windows nobody liquidated (`history --lateness`).

Both ask the protocol's own views at past blocks (an archive node; anvil is one), each block's
questions in one Multicall3 batch, several blocks concurrently.

* First liquidatable block of a liquidation at block L: the first block at whose end the account was
  liquidatable, continuously up to L - 1: galloping back from L - 1 (1, 2, 4, ... blocks) until a block
  where it was not, then bisecting. `blocks_late` = L - first - 1: 0 is the very next block, the
  earliest any keeper could land. An account not liquidatable at the end of L - 1 (it became so within
  L itself) has first = L and 0 blocks late. The search may go back before the range (to the
  deployment's first block).
* Missed windows: every known account is probed every `step` blocks of the range (and at its last
  block); each run of liquidatable probes has its edges found exactly by bisection, clipped to the
  range. A run [a, b] is missed when nobody acted on that account (a position liquidation, a flag, its
  orders cancelled) in blocks a + 1 .. b + 1. With step 1 every block is probed; with a larger step a
  window shorter than the step can fall between two probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from keeper.events import FLAG, MISSED, ORDERS_CANCELLED, POSITION, HistoryEvent, Subject
from keeper.logcache import Progress
from keeper.protocol import History

CONCURRENT_BLOCKS = 4
ACTED = (POSITION, FLAG, ORDERS_CANCELLED)
Probe = tuple[Subject, int]


class Oracle:
    """`liquidatable` at many (subject, block) pairs: grouped by block, several blocks at a time."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.asked = 0  # blocks asked (one Multicall3 batch each)
        self.limit = asyncio.Semaphore(CONCURRENT_BLOCKS)

    async def ask(self, probes: Sequence[Probe]) -> dict[Probe, bool]:
        by_block: dict[int, list[Subject]] = {}
        for subject, block in probes:
            by_block.setdefault(block, [])
            if subject not in by_block[block]:
                by_block[block].append(subject)

        async def one(block: int, subjects: list[Subject]) -> dict[Probe, bool]:
            async with self.limit:
                answers = await self.history.liquidatable(subjects, block)
            self.asked += 1
            return {(s, block): a for s, a in zip(subjects, answers, strict=True)}

        out: dict[Probe, bool] = {}
        for part in await asyncio.gather(*(one(b, s) for b, s in sorted(by_block.items()))):
            out.update(part)
        return out


async def first_liquidatable(oracle: Oracle, events: Sequence[HistoryEvent], floor: int) -> None:
    """Set `first_liquidatable_block` and `blocks_late` on every position liquidation."""
    searches: dict[Probe, tuple[int, int | None]] = {}  # (subject, L) -> (liquidatable block, not-block)
    for e in events:
        if e.kind == POSITION:
            searches.setdefault(((e.trader, e.subject), e.block), (e.block, None))
    # gallop back: hi is known liquidatable (L itself stands for "found nothing yet")
    step = {key: 1 for key in searches}
    open_ = set(searches)
    while open_:
        probes = {key: max(floor, key[1] - step[key]) for key in open_}
        answers = await oracle.ask([(key[0], block) for key, block in probes.items()])
        for key, block in probes.items():
            hi, _ = searches[key]
            if answers[(key[0], block)]:
                searches[key] = (block, None)
                step[key] *= 2
                if block == floor:
                    open_.discard(key)  # liquidatable since the deployment's first block
            else:
                searches[key] = (hi, block)
                open_.discard(key)
    await _bisect(oracle, searches)
    for e in events:
        if e.kind == POSITION:
            first, _ = searches[((e.trader, e.subject), e.block)]
            e.first_liquidatable_block = first
            e.blocks_late = max(0, e.block - first - 1)


async def _bisect(oracle: Oracle, searches: dict[Probe, tuple[int, int | None]]) -> None:
    """Narrow each (liquidatable hi, not-liquidatable lo) pair until they are adjacent."""
    while pending := {k: v for k, v in searches.items() if v[1] is not None and v[0] - v[1] > 1}:
        middle = {k: (lo + hi) // 2 for k, (hi, lo) in pending.items() if lo is not None}
        answers = await oracle.ask([(k[0], m) for k, m in middle.items()])
        for k, m in middle.items():
            hi, lo = searches[k]
            searches[k] = (m, lo) if answers[(k[0], m)] else (hi, m)


async def missed_windows(
    oracle: Oracle,
    protocol: str,
    subjects: Sequence[Subject],
    events: Sequence[HistoryEvent],
    first: int,
    last: int,
    step: int,
) -> list[HistoryEvent]:
    probes = sorted({*range(first, last + 1, max(1, step)), last})
    progress = Progress(f"probing {len(subjects)} accounts at {len(probes)} blocks", len(probes))
    states: dict[Subject, list[bool]] = {s: [] for s in subjects}
    for i in range(0, len(probes), 16):
        chunk = probes[i : i + 16]
        answers = await oracle.ask([(s, b) for b in chunk for s in subjects])
        for s in subjects:
            states[s] += [answers[(s, b)] for b in chunk]
        progress.advance(len(chunk), sum(answers.values()))
    runs = [(s, a, b) for s in subjects for a, b in _runs(probes, states[s])]
    runs = await _refine(oracle, probes, runs, first, last)
    acted = {(e.trader.lower(), e.block) for e in events if e.kind in ACTED}
    acted_in = {(e.trader.lower(), e.subject, e.block) for e in events if e.kind in ACTED}
    windows = []
    for (account, market), a, b in runs:
        blocks = range(a + 1, b + 2)
        if market is None and any((account.lower(), x) in acted for x in blocks):
            continue
        if market is not None and any((account.lower(), market, x) in acted_in for x in blocks):
            continue
        windows.append(
            HistoryEvent(
                a,
                None,
                None,
                protocol,
                MISSED,
                account,
                None,
                {"from_block": a, "to_block": b, "blocks": b - a + 1},
                subject=market,
            )
        )
    return windows


def _runs(probes: Sequence[int], states: Sequence[bool]) -> list[tuple[int, int]]:
    """(index of first, index of last) of each run of True probes."""
    runs, start = [], None
    for i, state in enumerate(states):
        if state and start is None:
            start = i
        if not state and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(states) - 1))
    return runs


async def _refine(
    oracle: Oracle, probes: Sequence[int], runs: Sequence[tuple[Subject, int, int]], first: int, last: int
) -> list[tuple[Subject, int, int]]:
    """Exact edges: bisect between the last probe outside a run and its first (last) probe inside."""
    starts: dict[Probe, tuple[int, int | None]] = {}
    ends: dict[Probe, tuple[int, int | None]] = {}
    for s, i, j in runs:
        if i > 0:
            starts[(s, probes[i])] = (probes[i], probes[i - 1])  # (liquidatable, not)
        if j < len(probes) - 1:
            ends[(s, probes[j])] = (probes[j], probes[j + 1])
    await _bisect(oracle, starts)
    # an end: the liquidatable side is below; mirror the blocks so that hi > lo holds
    mirrored = {k: (-hi, None if lo is None else -lo) for k, (hi, lo) in ends.items()}
    await _bisect(_Mirror(oracle), mirrored)
    out = []
    for s, i, j in runs:
        a = starts[(s, probes[i])][0] if i > 0 else first
        b = -mirrored[(s, probes[j])][0] if j < len(probes) - 1 else last
        out.append((s, a, b))
    return out


class _Mirror(Oracle):
    """The same oracle over negated block numbers (to bisect a window's end like its start)."""

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner

    async def ask(self, probes: Sequence[Probe]) -> dict[Probe, bool]:
        answers = await self.inner.ask([(s, -b) for s, b in probes])
        return {(s, -b): a for (s, b), a in answers.items()}
