"""Account discovery from logs: adaptive `eth_getLogs` backfill, then follow, healing reorgs.

Every account that can ever be liquidated has emitted (or been named in) one of a few events, so the
chain itself is the account list: no subgraph. The backfill starts at the deployment's first block and
checkpoints after every chunk, so a restart resumes where it stopped. Block ranges adapt to what the
provider accepts: halve on a "too many results" / range / size refusal, double on success.

Reorgs: the hashes of the last `reorg_window` indexed blocks are kept. When the checkpoint's hash no
longer matches the chain, the index rolls back to the newest block whose hash still matches and reads
again from there (an account is forgotten only if it was first seen after that block).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address

from keeper.errors import ReorgDuringSyncError, RpcError
from keeper.logrange import AdaptiveRange
from keeper.rpc import BlockHeader, Rpc
from keeper.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountSource:
    """An event that names an account: `topic_index` is the indexed topic holding its address."""

    name: str
    contract: str
    topic0: str
    topic_index: int
    per_contract: bool = False  # record "contract:account" (an account of one market, not of the protocol)


@dataclass(frozen=True)
class Progress:
    from_block: int
    done_to: int
    to_block: int
    accounts: int

    @property
    def fraction(self) -> float:
        span = self.to_block - self.from_block + 1
        return 1.0 if span <= 0 else (self.done_to - self.from_block + 1) / span


@dataclass
class SyncResult:
    head: BlockHeader
    new_accounts: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)  # accounts named by a log in the blocks just read
    watched_changed: bool = False  # a watched contract (protocol parameters) logged something
    rolled_back_to: int | None = None


class Indexer:
    def __init__(
        self,
        rpc: Rpc,
        store: Store,
        sources: Sequence[AccountSource],
        start_block: int,
        *,
        watched: Sequence[str] = (),
        reorg_window: int = 64,
        initial_range: int = 2_000,
        max_range: int = 100_000,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.rpc, self.store, self.sources = rpc, store, list(sources)
        self.start_block = start_block
        self.watched = [a.lower() for a in watched]
        self.reorg_window = reorg_window
        self.ranges = AdaptiveRange(initial_range, max_range)
        self.progress = progress
        self._by_topic = {(s.contract.lower(), s.topic0.lower()): s for s in self.sources}
        self._known: set[str] | None = None

    @property
    def range(self) -> int:
        """The next `eth_getLogs` range, in blocks (adapts to what the provider accepts)."""
        return self.ranges.size

    @property
    def max_range(self) -> int:
        return self.ranges.maximum

    @property
    def known(self) -> set[str]:
        """Every account indexed so far (loaded from the store once)."""
        if self._known is None:
            self._known = set(self.store.accounts())
        return self._known

    async def sync(self, head: BlockHeader | None = None) -> SyncResult:
        """Bring the index up to `head` (default: the latest block)."""
        head = head or await self.rpc.header("latest")
        result = SyncResult(head)
        checkpoint = self.store.checkpoint()
        if checkpoint is not None:
            healed = await self._heal(checkpoint, head)
            if healed is not None:
                result.rolled_back_to = checkpoint = healed
        first = self.start_block if checkpoint is None else checkpoint + 1
        await self._read(first, head, result)
        self.store.forget_hashes_below(head.number - self.reorg_window)
        return result

    # --- reorgs ---------------------------------------------------------------------------------
    async def _heal(self, checkpoint: int, head: BlockHeader) -> int | None:
        """None if the checkpoint is still on the chain; else the block rolled back to."""
        stored = self.store.block_hashes()
        if checkpoint in stored:
            if head.number == checkpoint + 1 and head.parent_hash == stored[checkpoint]:
                return None
            if head.number == checkpoint and head.hash == stored[checkpoint]:
                return None
        numbers = sorted((n for n in stored if n <= min(checkpoint, head.number)), reverse=True)
        if not numbers:
            return None  # nothing recent to compare: the checkpoint is older than the reorg window
        if numbers[0] == checkpoint:
            (current,) = await self.rpc.headers([checkpoint])
            if current is not None and current.hash == stored[checkpoint]:
                return None
        found = await self.rpc.headers(numbers)
        keep = next(
            (n for n, h in zip(numbers, found, strict=True) if h is not None and h.hash == stored[n]),
            max(self.start_block - 1, numbers[-1] - 1),
        )
        forgotten = self.store.rollback(keep)
        self._known = None
        log.warning(
            "reorg: block %d no longer matches; rolled back to %d and reading again (%d accounts forgotten)",
            checkpoint,
            keep,
            forgotten,
        )
        return keep

    # --- reading --------------------------------------------------------------------------------
    async def _read(self, first: int, head: BlockHeader, result: SyncResult) -> None:
        def done(start: int, end: int, logs: list[dict[str, Any]]) -> None:
            self._record(start, end, head, logs, result)
            if self.progress:
                self.progress(Progress(first, end, head.number, len(result.new_accounts)))

        await self.ranges.walk(first, head.number, self._logs, done)

    async def _logs(self, start: int, end: int) -> list[dict[str, Any]]:
        account_query = _query(start, end, sorted({s.contract for s in self.sources}), [self._topics()])
        requests: list[tuple[str, Sequence[Any]]] = [("eth_getLogs", [account_query])]
        if self.watched:
            requests.append(("eth_getLogs", [_query(start, end, self.watched, [])]))
        answers = await self.rpc.batch(requests)
        logs: list[dict[str, Any]] = []
        for answer in answers:
            if isinstance(answer, RpcError):
                raise answer
            logs += answer
        return logs

    def _topics(self) -> list[str]:
        return sorted({s.topic0.lower() for s in self.sources})

    def _record(
        self, start: int, end: int, head: BlockHeader, logs: list[dict[str, Any]], result: SyncResult
    ) -> None:
        recent = head.number - self.reorg_window
        hashes: dict[int, str] = {}
        accounts: list[tuple[str, int]] = []
        for entry in logs:
            number, block_hash = int(entry["blockNumber"], 16), str(entry["blockHash"])
            if number == head.number and block_hash != head.hash:
                raise ReorgDuringSyncError(
                    f"log in block {number} has hash {block_hash}, head is {head.hash}"
                )
            if number > recent:
                hashes[number] = block_hash
            address, topics = str(entry["address"]).lower(), entry["topics"]
            if address in self.watched:
                result.watched_changed = True
            source = self._by_topic.get((address, str(topics[0]).lower())) if topics else None
            if source is None or source.topic_index >= len(topics):
                continue
            account = str(to_checksum_address("0x" + str(topics[source.topic_index])[-40:]))
            if source.per_contract:
                account = f"{to_checksum_address(address)}:{account}"
            accounts.append((account, number))
            result.touched.add(account)
        if end == head.number:
            hashes[end] = head.hash
        known = self.known  # loaded before the store holds this chunk's accounts
        self.store.advance(end, accounts, hashes)
        for account, _ in accounts:
            if account not in known:
                known.add(account)
                result.new_accounts.add(account)


def _query(start: int, end: int, addresses: Sequence[str], topics: list[Any]) -> dict[str, Any]:
    query: dict[str, Any] = {"fromBlock": hex(start), "toBlock": hex(end), "address": list(addresses)}
    if topics:
        query["topics"] = topics
    return query
