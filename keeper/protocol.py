"""What a protocol offers the engine: one object per protocol, registered as a plugin.

A protocol is a package under `strategies/` whose plugin object loads its metadata, names the events
that reveal its accounts and the contracts whose logs change its parameters, wires its strategies for
a run, lists its operator checks and (optionally) writes the `scan` report and offers a `History`
(`perp-keeper history` and `compensation`). The engine finds plugins through the `perp_keeper.protocols`
entry-point group (`keeper/registry.py`) and never imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from keeper.config import RunSettings
from keeper.events import HistoryEvent, Log, LogQuery, Subject
from keeper.indexer import AccountSource, Indexer
from keeper.multicall import Reader
from keeper.rpc import Rpc
from keeper.store import Store
from keeper.strategy import Strategy


@dataclass(frozen=True)
class Check:
    """One row of `perp-keeper check`."""

    name: str
    ok: bool
    detail: str


class Deployment(Protocol):
    """What the engine needs of any protocol's metadata."""

    @property
    def chain_id(self) -> int: ...

    @property
    def multicall3(self) -> str: ...

    @property
    def start_block(self) -> int: ...

    @property
    def anchor(self) -> tuple[str, str]:
        """(name, address) of the contract that proves the RPC serves this deployment."""
        ...


@dataclass
class Session:
    """A connection checked against the metadata: RPC, state database, account index, view reader."""

    rpc: Rpc
    deployment: Any
    store: Store
    indexer: Indexer
    read: Reader
    metadata_path: Path
    # what a protocol's wirings of one run share (keys of its own): with shards, one wiring per shard
    # key reads the chain through one scanner and one index sync per head, not one each
    shared: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        self.store.close()
        await self.rpc.close()


@dataclass
class Wiring:
    """What one protocol contributes to a run: its strategies and how to watch the keeper's funds."""

    strategies: Sequence[Strategy[Any]]
    symbols: Mapping[str, str]  # market / token address (lower case) -> symbol, for the summary
    accounts: Callable[[], int]  # accounts tracked, for the gauge
    funds: Callable[[str], Awaitable[None]]  # warn when the keeper runs low (a side job)
    close: Callable[[], Awaitable[None]]  # release what the wiring opened (HTTP clients)


class History(Protocol):
    """What `perp-keeper history` and `compensation` need of a protocol, over one `Session`.

    `queries`: the logs of its liquidation events. `decode`: those logs, oldest first, as
    `HistoryEvent`s with every argument and the derived fields (it may read receipts or views).
    `liquidatable`: the contracts' own verdict for each (account, market contract) at a past block
    (`--lateness`, needs an archive node); `subjects`: every (account, market contract) it knows.
    `values`: each account's value at a block, X18 USD (collateral at its oracle price, no haircut,
    + realised and unsettled PnL + pending funding + unrealised PnL at `price`: "index" or "mark");
    raises `SettingError` for a price the protocol does not have.
    """

    def queries(self) -> list[LogQuery]: ...

    async def decode(self, logs: Sequence[Log]) -> list[HistoryEvent]: ...

    async def liquidatable(self, subjects: Sequence[Subject], block: int) -> list[bool]: ...

    async def subjects(self) -> list[Subject]: ...

    async def values(self, accounts: Sequence[str], block: int, price: str) -> list[int]: ...


class ProtocolPlugin(Protocol):
    name: str  # "perp-v2": --protocol, KEEPER_PROTOCOL and the metadata's "protocol"
    title: str  # "Perp v2", for messages

    def recognises(self, metadata: Any) -> bool:
        """Whether a metadata file without a "protocol" field is in this protocol's format."""
        ...

    def load_metadata(self, path: Path) -> Any: ...

    def account_sources(self, deployment: Any) -> list[AccountSource]: ...

    def watched(self, deployment: Any) -> list[str]:
        """Contracts whose logs change the protocol's parameters (a re-read follows)."""
        ...

    def wire(
        self, session: Session, settings: RunSettings, env: Mapping[str, str], liquidator: str
    ) -> Wiring:
        """The strategies of a run for `liquidator` (whose holdings the inventory strategies read)."""
        ...

    async def checks(
        self, rpc: Rpc, deployment: Any, keeper: str | None, env: Mapping[str, str]
    ) -> list[Check]: ...

    def can_scan(self) -> bool: ...

    async def report(self, session: Session, as_json: bool, out: TextIO) -> int:
        """`perp-keeper scan`: one full exact scan, written out; returns how many are liquidatable."""
        ...

    def history(self, session: Session) -> History | None:
        """Its liquidation history over `session` (None: the protocol offers none)."""
        ...
