"""How late each position liquidation came, and the windows nobody liquidated (`history --lateness`).

Both ask the protocol's own views at past blocks (an archive node; anvil is one), each block's
questions in one Multicall3 batch, several blocks concurrently.

* Runs: every known account is probed every `step` blocks of the range (and at its last block); each
  run of liquidatable probes has its edges found exactly by bisection, clipped to the range. With step
  1 every block is probed and the runs are exact; with a larger step a run (or a gap between two runs)
  shorter than the step can fall between two probes.
* First liquidatable block of a liquidation at block L: the first block of the run that holds L - 1 (the
  account liquidatable at the end of every block from it up to L - 1). A run that reaches back to the
  range's first block is followed before the range by galloping back (1, 2, 4, ... blocks) to a block
  where it was not, then bisecting (which assumes one contiguous run out there). `blocks_late` =
  L - first - 1: 0 is the very next block, the earliest any keeper could land. An account not
  liquidatable at the end of L - 1 (it became so within L itself) has first = L and is 0 blocks late.
* Missed windows: the runs [a, b] in which nobody acted on the account (a position liquidation, a
  flag, its orders cancelled) in blocks a + 1 .. b + 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eth_abi.exceptions import DecodingError

from keeper.events import FLAG, MISSED, ORDERS_CANCELLED, POSITION, HistoryEvent, Subject
from keeper.logcache import Progress
from keeper.protocol import History

CONCURRENT_BLOCKS = 4
ACTED = (POSITION, FLAG, ORDERS_CANCELLED)
Probe = tuple[Subject, int]
Run = tuple[Subject, int, int]  # (subject, first block, last block)


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
                try:
                    answers = await self.history.liquidatable(subjects, block)
                except DecodingError:  # no Multicall3 at that block yet: nothing was deployed to ask
                    answers = [False] * len(subjects)
            self.asked += 1
            return {(s, block): a for s, a in zip(subjects, answers, strict=True)}

        out: dict[Probe, bool] = {}
        for part in await asyncio.gather(*(one(b, s) for b, s in sorted(by_block.items()))):
            out.update(part)
        return out


async def first_liquidatable(
    oracle: Oracle, events: Sequence[HistoryEvent], runs: Sequence[Run], first: int, floor: int
) -> None:
    """Set `first_liquidatable_block` and `blocks_late` on every position liquidation, from the runs of
    liquidatable blocks the probes found in the range; a run that reaches back to the range's first
    block is followed further back by galloping and bisection."""
    containing = {}
    for subject, a, b in runs:
        for e in events:
            if e.kind == POSITION and (e.trader, e.subject) == subject and a <= e.block - 1 <= b:
                containing[id(e)] = a
    before: dict[Probe, tuple[int, int | None]] = {}
    for e in events:
        if e.kind != POSITION:
            continue
        start = containing.get(id(e))
        if start is None and e.block - 1 >= first:
            start = e.block  # not liquidatable at the end of the block before: it became so within it
        if start is None or start == first:
            before.setdefault(((e.trader, e.subject), e.block), (min(first, e.block), None))
        e.first_liquidatable_block = start
    await _gallop(oracle, before, floor)
    await _bisect(oracle, before)
    for e in events:
        if e.kind == POSITION:
            if ((e.trader, e.subject), e.block) in before:
                e.first_liquidatable_block = before[((e.trader, e.subject), e.block)][0]
            assert e.first_liquidatable_block is not None
            e.blocks_late = max(0, e.block - e.first_liquidatable_block - 1)


async def _gallop(oracle: Oracle, searches: dict[Probe, tuple[int, int | None]], floor: int) -> None:
    """Back from each (liquidatable hi, _) by 1, 2, 4, ... blocks until a block where the account was
    not liquidatable (then bisected) or the deployment's first block; assumes one contiguous run."""
    step = dict.fromkeys(searches, 1)
    open_ = {k for k, (hi, _) in searches.items() if hi > floor}
    while open_:
        probes = {key: max(floor, searches[key][0] - step[key]) for key in open_}
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


async def _bisect(oracle: Oracle, searches: dict[Probe, tuple[int, int | None]]) -> None:
    """Narrow each (liquidatable hi, not-liquidatable lo) pair until they are adjacent."""
    while pending := {k: v for k, v in searches.items() if v[1] is not None and v[0] - v[1] > 1}:
        middle = {k: (lo + hi) // 2 for k, (hi, lo) in pending.items() if lo is not None}
        answers = await oracle.ask([(k[0], m) for k, m in middle.items()])
        for k, m in middle.items():
            hi, lo = searches[k]
            searches[k] = (m, lo) if answers[(k[0], m)] else (hi, m)


async def liquidatable_runs(
    oracle: Oracle, subjects: Sequence[Subject], first: int, last: int, step: int
) -> list[Run]:
    """Every run of blocks in first..last at whose end a subject was liquidatable, edges exact."""
    probes = sorted({*range(first, last + 1, max(1, step)), last})
    progress = Progress(f"probing {len(subjects)} accounts at {len(probes)} blocks", len(probes))
    states: dict[Subject, list[bool]] = {s: [] for s in subjects}
    for i in range(0, len(probes), 16):
        chunk = probes[i : i + 16]
        answers = await oracle.ask([(s, b) for b in chunk for s in subjects])
        for s in subjects:
            states[s] += [answers[(s, b)] for b in chunk]
        progress.advance(len(chunk), sum(answers.values()))
    found = [(s, a, b) for s in subjects for a, b in _runs(probes, states[s])]
    return await _refine(oracle, probes, found, first, last)


def missed_windows(protocol: str, runs: Sequence[Run], events: Sequence[HistoryEvent]) -> list[HistoryEvent]:
    """The runs in which nobody acted on the account (in blocks a + 1 .. b + 1)."""
    acted = {(e.trader.lower(), e.block) for e in events if e.kind in ACTED}
    acted_in = {(e.trader.lower(), e.subject, e.block) for e in events if e.kind in ACTED}
    windows = []
    for (account, market), a, b in runs:
        blocks = range(a + 1, b + 2)
        if market is None and any((account.lower(), x) in acted for x in blocks):
            continue
        if market is not None and any((account.lower(), market, x) in acted_in for x in blocks):
            continue
        window = {"from_block": a, "to_block": b, "blocks": b - a + 1}
        windows.append(HistoryEvent(a, None, None, protocol, MISSED, account, None, window, subject=market))
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
    oracle: Oracle, probes: Sequence[int], runs: Sequence[Run], first: int, last: int
) -> list[Run]:
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
