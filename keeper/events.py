"""Liquidation history records, and protocol events decoded from logs by their real ABI entries.

A protocol describes its liquidation events (`keeper.protocol.History`); the engine reads their logs,
and each becomes a `HistoryEvent`: where it happened, who was liquidated and by whom, every argument
of the event under its own name in snake_case (integers in the event's own units), and a few derived
fields (market symbol, notional in USD, the liquidator's reward) that need the protocol's knowledge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address

from keeper.codec import topic
from keeper.errors import RpcError

POSITION, COLLATERAL, BAD_DEBT, ORDERS_CANCELLED, FLAG = (
    "position",
    "collateral",
    "bad-debt",
    "orders-cancelled",
    "flag",
)
KINDS = (POSITION, COLLATERAL, BAD_DEBT, ORDERS_CANCELLED, FLAG)
MISSED = "missed"  # a window in which an account was liquidatable and nobody liquidated it (--lateness)
Log = Mapping[str, Any]
Subject = tuple[str, str | None]  # (account, the market contract it is liquidatable in; None: the protocol)
COMMON = ("block", "timestamp", "tx", "log_index", "protocol", "kind", "trader", "liquidator")
DERIVED = ("market", "notional_usd", "liquidator_reward")
LATENESS = ("first_liquidatable_block", "blocks_late")
# a view at a past block the node cannot answer: state pruned (not an archive node), or no Multicall3
# there yet (an empty answer)
UNREADABLE = (RpcError, DecodingError)


def snake_case(name: str) -> str:
    """`insuranceFundFeeX10_S` -> `insurance_fund_fee_x10_s`: the ABI name in snake_case."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class LogQuery:
    """One `eth_getLogs` filter: any of these contracts, any of these topic0s."""

    addresses: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class EventSpec:
    """An event as its contract's ABI declares it: canonical signature, argument names, indexed flags."""

    signature: str
    names: tuple[str, ...]  # snake_case, in ABI order
    types: tuple[str, ...]
    indexed: tuple[bool, ...]

    @property
    def topic0(self) -> str:
        return topic(self.signature)

    @classmethod
    def from_abi(cls, entries: Iterable[Mapping[str, Any]], signature: str) -> EventSpec:
        for entry in entries:
            inputs = entry.get("inputs", [])
            # compared with the checked literal `signature`: the ABI's own name and input types
            canonical = "".join((str(entry.get("name")), "(", ",".join(i["type"] for i in inputs), ")"))
            if entry.get("type") == "event" and canonical == signature:
                return cls(
                    signature,
                    tuple(snake_case(i["name"]) for i in inputs),
                    tuple(i["type"] for i in inputs),
                    tuple(bool(i.get("indexed")) for i in inputs),
                )
        raise KeyError(f"no event {signature} in the ABI")

    def decode(self, log: Log) -> dict[str, Any]:
        """Every argument by its snake_case name: integers as int, addresses checksummed, bytes as hex."""
        topics = list(log["topics"])[1:]
        data = bytes.fromhex(str(log["data"]).removeprefix("0x"))
        plain = [t for t, indexed in zip(self.types, self.indexed, strict=True) if not indexed]
        values = iter(decode(plain, data))
        words = iter(topics)
        out: dict[str, Any] = {}
        for name, kind, indexed in zip(self.names, self.types, self.indexed, strict=True):
            if indexed:
                word = bytes.fromhex(str(next(words)).removeprefix("0x"))
                out[name] = _plain(kind, decode([kind], word)[0])
            else:
                out[name] = _plain(kind, next(values))
        return out


def _plain(kind: str, value: Any) -> Any:
    if kind == "address":
        return str(to_checksum_address(value))
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


@dataclass
class HistoryEvent:
    """One liquidation-related event (or, with --lateness, one missed window)."""

    block: int
    tx: str | None
    log_index: int | None
    protocol: str
    kind: str
    trader: str
    liquidator: str | None
    args: dict[str, Any] = field(default_factory=dict)
    market: str | None = None  # the market's (or collateral's) symbol
    notional_usd: int | None = None  # X18 USD
    liquidator_reward: int | None = None  # X18 (USD for Perp, sUSD for Synthetix)
    subject: str | None = None  # the contract the account is liquidatable in (internal)
    timestamp: int = 0
    first_liquidatable_block: int | None = None
    blocks_late: int | None = None

    def row(self, lateness: bool = False) -> dict[str, Any]:
        """The JSON object: common fields, the event's arguments, derived fields (and lateness)."""
        out: dict[str, Any] = {
            "block": self.block,
            "timestamp": self.timestamp,
            "tx": self.tx,
            "log_index": self.log_index,
            "protocol": self.protocol,
            "kind": self.kind,
            "trader": self.trader,
            "liquidator": self.liquidator,
        }
        out.update({k: v for k, v in self.args.items() if k not in out})
        out.update(
            market=self.market, notional_usd=self.notional_usd, liquidator_reward=self.liquidator_reward
        )
        if lateness and self.kind == POSITION:
            out.update(first_liquidatable_block=self.first_liquidatable_block, blocks_late=self.blocks_late)
        return out

    def order(self) -> tuple[int, int, str]:
        return (self.block, -1 if self.log_index is None else self.log_index, self.trader.lower())


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """CSV columns: the common fields, every argument seen (first-seen order), derived, lateness."""
    args: list[str] = []
    fixed = set(COMMON) | set(DERIVED) | set(LATENESS)
    for row in rows:
        args += [k for k in row if k not in fixed and k not in args]
    tail = [k for k in LATENESS if any(k in row for row in rows)]
    return [*COMMON, *args, *DERIVED, *tail]
