"""Keeps an exact picture of every Perp v2 account, cheaply, block after block.

A cold `full_scan` reads every indexed account at one pinned block. After that, `update` reads per
block only the accounts that may have changed in a way that matters:

* dirty: named by a log in the new blocks (they traded, deposited, were liquidated, ...);
* hot: the prices they are exposed to moved by more than their tolerance since their last exact read
  (`risk.tolerance`), or they are makers / already liquidatable (always read);
* the sweep: a rotating slice of N / sweep_blocks accounts, so every account is read exactly at least
  once every `sweep_blocks` blocks whatever the estimate says (funding and fees drift slowly).

So the per-block cost follows the number of accounts near liquidation, not the number of accounts.
A reorg or a protocol parameter change falls back to a full scan / a parameter re-read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from keeper.errors import CallFailedError
from keeper.indexer import Indexer
from keeper.multicall import Call, Reader, Result
from keeper.rpc import BlockHeader
from strategies.perp_v2 import risk
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.views import Core, Shape, Views

log = logging.getLogger(__name__)

DEFAULT_SWEEP_BLOCKS = 300


@dataclass
class UpdateStats:
    block: int
    full: bool
    accounts: int = 0
    dirty: int = 0
    hot: int = 0
    swept: int = 0
    read: int = 0
    seconds: float = 0.0
    newly_liquidatable: set[str] = field(default_factory=set)


class Scanner:
    def __init__(
        self,
        deployment: Deployment,
        indexer: Indexer,
        read: Reader,
        *,
        sweep_blocks: int = DEFAULT_SWEEP_BLOCKS,
    ) -> None:
        self.deployment = deployment
        self.indexer = indexer
        self.read = read
        self.views = Views(deployment)
        self.sweep_blocks = max(1, sweep_blocks)
        self.params: risk.Params | None = None
        self.snapshot: risk.Snapshot | None = None
        self.shapes: dict[str, Shape] = {}
        self.tolerances: dict[str, risk.Tolerance] = {}
        self._sweep_cursor = 0
        self._head_hash: str | None = None  # of the block the snapshot was read at
        self._updating = asyncio.Lock()  # strategies (and shards' engines) share one scanner

    # --- public -------------------------------------------------------------------------------------
    async def full_scan(self, head: BlockHeader | None = None) -> UpdateStats:
        """Index up to `head`, then read every account exactly at that block."""
        started = time.monotonic()
        sync = await self.indexer.sync(head)
        block = sync.head.number
        await self._refresh_params(block)
        accounts = sorted(self.indexer.known)
        self.shapes = {a: self.shapes.get(a, Shape()) for a in accounts}
        marks, prices, read = await self._read(block, accounts, with_prices=True)
        self.snapshot = None
        self._publish(sync.head, marks, prices, read, replace=True)
        stats = UpdateStats(block, True, len(accounts), read=len(read), seconds=time.monotonic() - started)
        stats.newly_liquidatable = {
            a for a, acc in read.items() if acc.liquidatable or acc.vault_liquidatable
        }
        return stats

    async def update(self, head: BlockHeader | None = None) -> UpdateStats:
        """Bring the picture to `head` reading only what may have changed (see the module doc). Callers
        at once are served one at a time: the second one at the same head reads nothing."""
        async with self._updating:
            return await self._update(head)

    async def _update(self, head: BlockHeader | None) -> UpdateStats:
        if self.snapshot is None:
            return await self.full_scan(head)
        started = time.monotonic()
        head = head or await self.indexer.rpc.header("latest")
        if head.hash == self._head_hash:
            # already at this block (strategies sharing one scanner): nothing to read
            return UpdateStats(head.number, False, len(self.shapes), seconds=time.monotonic() - started)
        sync = await self.indexer.sync(head)
        if sync.rolled_back_to is not None:
            log.warning("reorg healed at block %d: reading every account again", sync.rolled_back_to)
            return await self.full_scan(sync.head)
        block = sync.head.number
        if sync.watched_changed:
            await self._refresh_params(block)
        for account in sync.new_accounts:
            self.shapes.setdefault(account, Shape())
        known = sorted(self.shapes)
        dirty = set(sync.touched) | set(sync.new_accounts)
        always = {a for a, t in self.tolerances.items() if t.always}
        swept = set(self._sweep_slice(known))
        first = sorted(dirty | always | swept)
        marks, prices, read = await self._read(block, first, with_prices=True)
        hot = sorted(a for a, t in self.tolerances.items() if a not in read and risk.moved(t, marks, prices))
        if hot:
            _, _, more = await self._read(block, hot, with_prices=False)
            read.update(more)
        before = self.snapshot.accounts
        self._publish(sync.head, marks, prices, read, replace=False)
        stats = UpdateStats(
            block,
            False,
            len(known),
            dirty=len(dirty),
            hot=len(hot) + len(always),
            swept=len(swept),
            read=len(read),
            seconds=time.monotonic() - started,
        )
        stats.newly_liquidatable = {
            a
            for a, acc in read.items()
            if (acc.liquidatable or acc.vault_liquidatable)
            and not (a in before and (before[a].liquidatable or before[a].vault_liquidatable))
        }
        return stats

    def opportunities(self) -> list[risk.Opportunity]:
        if self.snapshot is None or self.params is None:
            return []
        return risk.opportunities(self.snapshot, self.params)

    # --- reading ------------------------------------------------------------------------------------
    async def _refresh_params(self, block: int) -> None:
        tokens = sorted(
            {c.address.lower() for c in self.deployment.collaterals}
            | {t for shape in self.shapes.values() for t in shape.tokens}
        )
        self.params = self.views.decode_params(
            tokens, await self.read(self.views.params_calls(tokens), block)
        )

    def _bases(self) -> list[str]:
        return sorted(
            {m.base_token.lower() for m in self.deployment.markets}
            | {b for shape in self.shapes.values() for b in shape.bases}
        )

    async def _read(
        self, block: int, accounts: Sequence[str], *, with_prices: bool
    ) -> tuple[dict[str, int], dict[str, int], dict[str, risk.Account]]:
        """Core views + the extras of each account's known shape; then the extras of any new shape."""
        assert self.params is not None
        mm = self.params.mm_ratio
        bases, tokens = self._bases(), sorted(self.params.collaterals)
        calls: list[Call] = self.views.price_calls(bases, tokens) if with_prices else []
        plan: list[tuple[str, int, int]] = []  # (account, calls of core, calls of extras)
        for account in accounts:
            shape = self.shapes.get(account, Shape())
            core_calls = self.views.core_calls(account, len(shape.bases))
            extra_calls = self.views.extra_calls(account, shape, mm)
            plan.append((account, len(core_calls), len(extra_calls)))
            calls += core_calls + extra_calls
        results = await self.read(calls, block) if calls else []
        marks: dict[str, int] = {}
        prices: dict[str, int] = {}
        at = 0
        if with_prices:
            for key in [*bases, *tokens]:
                result = results[at]
                at += 1
                if result.ok:
                    (marks if key in bases else prices)[key] = int(result.one())
        cores: dict[str, Core] = {}
        extras_of: dict[str, Sequence[Result]] = {}
        for account, n_core, n_extra in plan:
            try:
                cores[account] = self.views.decode_core(results[at : at + n_core])
                extras_of[account] = results[at + n_core : at + n_core + n_extra]
            except CallFailedError as exc:  # keep the last good picture of this account
                log.warning("account %s unreadable at block %d: %s", account, block, exc)
            at += n_core + n_extra
        shapes = {a: self.views.shape_of(core) for a, core in cores.items()}
        reshaped = {a: shape for a, shape in shapes.items() if shape != self.shapes.get(a)}
        if reshaped:
            self.shapes.update(reshaped)
            second = {a: self.views.extra_calls(a, shape, mm) for a, shape in reshaped.items()}
            answers = await self.read([c for calls in second.values() for c in calls], block)
            at = 0
            for account, calls in second.items():
                extras_of[account] = answers[at : at + len(calls)]
                at += len(calls)
        accounts_read = {}
        for account, core in cores.items():
            try:
                accounts_read[account] = self.views.account(
                    account, block, core, self.shapes[account], extras_of[account]
                )
            except CallFailedError as exc:
                log.warning("account %s unreadable at block %d: %s", account, block, exc)
        if self.snapshot is not None:  # a mark that failed to read keeps its last value
            marks = {**self.snapshot.marks, **marks}
            prices = {**self.snapshot.collateral_prices, **prices}
        return marks, prices, accounts_read

    def _publish(
        self,
        head: BlockHeader,
        marks: dict[str, int],
        prices: dict[str, int],
        read: dict[str, risk.Account],
        *,
        replace: bool,
    ) -> None:
        assert self.params is not None
        accounts = {} if replace or self.snapshot is None else dict(self.snapshot.accounts)
        accounts.update(read)
        self.snapshot = risk.Snapshot(head.number, head.timestamp, marks, prices, accounts)
        self._head_hash = head.hash
        for address, account in read.items():
            self.tolerances[address] = risk.tolerance(account, self.snapshot, self.params)

    def _sweep_slice(self, known: Sequence[str]) -> Iterable[str]:
        if not known:
            return []
        size = math.ceil(len(known) / self.sweep_blocks)
        start = self._sweep_cursor % len(known)
        self._sweep_cursor = start + size
        return [known[(start + i) % len(known)] for i in range(min(size, len(known)))]
