"""What the engine needs of its edges, as small interfaces: the transaction manager (`keeper/tx.py`),
the RPC client (`keeper/rpc.py`), and observers (the alerts) that see what it plans and what lands."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from keeper.flights import Result
from keeper.receipts import Pending, Prepared, TxOutcome, TxRequest
from keeper.rpc import BlockHeader, BlockId
from keeper.strategy import Plan

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the engine needs of the transaction manager (`keeper/tx.py`)."""

    async def prepare_batch(
        self, plans: Sequence[Sequence[TxRequest]], *, block: BlockId
    ) -> list[list[Prepared] | TxOutcome]: ...

    async def dispatch_all(self, prepared: Sequence[Prepared]) -> list[Pending | TxOutcome]: ...

    async def submit(self, request: TxRequest, *, block: BlockId = "latest") -> Pending | TxOutcome: ...

    async def poll(self) -> list[TxOutcome]: ...

    def in_flight(self) -> set[str]:
        """The accounts (exclusives) of every transaction in flight, the journal's included."""
        ...


class Caller(Protocol):
    """What the engine needs of the RPC client: heads, and `eth_call` for dry-run simulations."""

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any: ...

    async def header(self, block: BlockId = "latest") -> BlockHeader: ...


class Hooks:
    """Observers of the engine (alerts); one that raises is logged, never felt by the tick."""

    def __init__(self) -> None:
        self.planned: Callable[[Plan[Any]], None] | None = None
        self.landed: Callable[[Plan[Any], str, TxOutcome, str], None] | None = None
        self.ticked: Callable[[int, list[Result]], None] | None = None

    @staticmethod
    def call(hook: Callable[..., None] | None, *args: Any) -> None:
        try:
            if hook is not None:
                hook(*args)
        except Exception:
            log.exception("an engine hook failed")
