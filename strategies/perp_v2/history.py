"""Perp v2's liquidation history: its events, decoded, with the reward each liquidator earned.

* `ClearingHouse.PositionLiquidated` (kind `position`): `liquidation_fee` is the whole penalty; the
  liquidator's share (`liquidator_reward`) is what the contract credited it, read from the receipt:
  the trader's and the liquidator's `PositionChanged.exchangedPositionNotional` of that liquidation
  sum to exactly `liquidationFeeToLiquidator` (ClearingHouse.sol 640-679).
* `Vault.CollateralLiquidated` (`collateral`): the liquidator paid repaid + insurance-fund fee for
  collateral priced at (1 - discount) of the Vault's price, so its value at that price is
  paid / (1 - discount) and the liquidator's discount is the difference.
* `Vault.BadDebtSettled` (`bad-debt`): the insurance fund absorbed `amount` (USDC, 6 decimals).
* `ClearingHouse.LiquidityChanged` with liquidity removed in a transaction its maker did not send
  (`orders-cancelled`): `cancelAllExcessOrders` by a liquidator, who is the transaction's sender.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_utils.address import to_checksum_address

import abi
from keeper.errors import RpcError
from keeper.events import (
    BAD_DEBT,
    COLLATERAL,
    ORDERS_CANCELLED,
    POSITION,
    UNREADABLE,
    EventSpec,
    HistoryEvent,
    Log,
    LogQuery,
    Subject,
)
from keeper.multicall import Reader
from keeper.protocol import Session
from keeper.rpc import Rpc
from strategies.perp_v2 import report, valuation
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.views import Views

X18 = 10**18
RATIO = 10**6
USDC_TO_X18 = 10**12
PROTOCOL = "perp-v2"

POSITION_LIQUIDATED = EventSpec.from_abi(
    abi.load("ClearingHouse"), "PositionLiquidated(address,address,uint256,uint256,uint256,address)"
)
LIQUIDITY_CHANGED = EventSpec.from_abi(
    abi.load("ClearingHouse"),
    "LiquidityChanged(address,address,address,int24,int24,int256,int256,int128,uint256)",
)
POSITION_CHANGED = EventSpec.from_abi(
    abi.load("ClearingHouse"),
    "PositionChanged(address,address,int256,int256,uint256,int256,int256,uint256)",
)
COLLATERAL_LIQUIDATED = EventSpec.from_abi(
    abi.load("Vault"), "CollateralLiquidated(address,address,address,uint256,uint256,uint256,uint24)"
)
BAD_DEBT_SETTLED = EventSpec.from_abi(abi.load("Vault"), "BadDebtSettled(address,uint256)")


def collateral_value(paid_usdc: int, discount_ratio: int) -> int:
    """X18 USD value, at the Vault's price, of collateral bought for `paid_usdc` (6 dp) at a discount."""
    return paid_usdc * USDC_TO_X18 * RATIO // (RATIO - discount_ratio)


def liquidator_share(
    receipt_logs: Sequence[Log], clearing_house: str, index: int, args: dict[str, Any]
) -> int:
    """The liquidator's share of the penalty in the PositionLiquidated at log `index` of a receipt:
    the trader's and the liquidator's exchanged notionals of that liquidation (the last
    PositionChanged of each, in that market, before it) sum to it."""
    base = args["base_token"].lower()
    last: dict[str, int] = {}
    for entry in receipt_logs:
        if int(entry["logIndex"], 16) >= index:
            break
        topics = entry["topics"]
        if (
            str(entry["address"]).lower() != clearing_house
            or str(topics[0]).lower() != POSITION_CHANGED.topic0
        ):
            continue
        changed = POSITION_CHANGED.decode(entry)
        if changed["base_token"].lower() == base:
            last[changed["trader"].lower()] = changed["exchanged_position_notional"]
    trader, liquidator = args["trader"].lower(), args["liquidator"].lower()
    if trader not in last or liquidator not in last:
        raise RpcError("eth_getTransactionReceipt", -32000, f"no PositionChanged pair before log {index}")
    return last[trader] + last[liquidator]


class PerpHistory:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.d: Deployment = session.deployment
        self.rpc: Rpc = session.rpc
        self.read: Reader = session.read
        self.views = Views(self.d)
        self.symbols = report.symbols(self.d)
        self.ch, self.vault = self.d.clearing_house.lower(), self.d.vault.lower()
        self.specs = {
            (self.ch, POSITION_LIQUIDATED.topic0): POSITION_LIQUIDATED,
            (self.ch, LIQUIDITY_CHANGED.topic0): LIQUIDITY_CHANGED,
            (self.vault, COLLATERAL_LIQUIDATED.topic0): COLLATERAL_LIQUIDATED,
            (self.vault, BAD_DEBT_SETTLED.topic0): BAD_DEBT_SETTLED,
        }

    def queries(self) -> list[LogQuery]:
        return [LogQuery((self.d.clearing_house, self.d.vault), tuple(sorted({t for _, t in self.specs})))]

    async def decode(self, logs: Sequence[Log]) -> list[HistoryEvent]:
        decoded = []
        for entry in logs:
            spec = self.specs.get((str(entry["address"]).lower(), str(entry["topics"][0]).lower()))
            if spec is None:
                continue
            args = spec.decode(entry)
            if spec is LIQUIDITY_CHANGED and args["liquidity"] >= 0:
                continue  # orders added, not removed
            decoded.append((entry, spec, args))
        wanted = sorted(
            {
                str(e["transactionHash"])
                for e, s, _ in decoded
                if s in (POSITION_LIQUIDATED, LIQUIDITY_CHANGED)
            }
        )
        receipts = await self._receipts(wanted)
        events = [self._event(e, s, a, receipts) for e, s, a in decoded]
        found = [ev for ev in events if ev is not None]
        await self._price_cancelled(found)
        return found

    def _event(
        self, entry: Log, spec: EventSpec, args: dict[str, Any], receipts: dict[str, dict[str, Any]]
    ) -> HistoryEvent | None:
        tx = str(entry["transactionHash"])
        event = HistoryEvent(
            int(entry["blockNumber"], 16), tx, int(entry["logIndex"], 16), PROTOCOL, "", "", None, args
        )
        if spec is POSITION_LIQUIDATED:
            event.kind, event.trader, event.liquidator = POSITION, args["trader"], args["liquidator"]
            event.market = self.symbols.get(args["base_token"].lower())
            event.notional_usd = args["position_notional"]
            event.liquidator_reward = liquidator_share(
                receipts[tx]["logs"], self.ch, event.log_index or 0, args
            )
        elif spec is COLLATERAL_LIQUIDATED:
            paid = (
                args["repaid_settlement_without_insurance_fund_fee_x10_s"] + args["insurance_fund_fee_x10_s"]
            )
            event.kind, event.trader, event.liquidator = COLLATERAL, args["trader"], args["liquidator"]
            event.market = self.symbols.get(args["collateral_token"].lower())
            event.notional_usd = collateral_value(paid, args["discount_ratio"])
            event.liquidator_reward = event.notional_usd - paid * USDC_TO_X18
        elif spec is BAD_DEBT_SETTLED:
            event.kind, event.trader = BAD_DEBT, args["trader"]
            event.notional_usd = args["amount"] * USDC_TO_X18
        else:
            sender = str(receipts[tx]["from"])
            if sender.lower() == args["maker"].lower():
                return None  # the maker removed its own liquidity
            event.kind, event.trader, event.liquidator = ORDERS_CANCELLED, args["maker"], _checksum(sender)
            event.market = self.symbols.get(args["base_token"].lower())
        return event

    async def _receipts(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        answers = await self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        out = {}
        for h, answer in zip(hashes, answers, strict=True):
            if isinstance(answer, RpcError):
                raise answer
            if not isinstance(answer, dict):
                raise RpcError("eth_getTransactionReceipt", -32000, f"no receipt for {h}")
            out[h] = answer
        return out

    async def _price_cancelled(self, events: Sequence[HistoryEvent]) -> None:
        """Orders' notional: |quote| + |base| x the market's mark price at the end of that block (a view
        at a past block: left null when the node no longer has that state)."""
        cancelled = [e for e in events if e.kind == ORDERS_CANCELLED]
        by_block: dict[int, list[HistoryEvent]] = {}
        for e in cancelled:
            by_block.setdefault(e.block, []).append(e)
        for block, group in by_block.items():
            calls = [self.views.mark_price(e.args["base_token"]) for e in group]
            try:
                results = await self.read(calls, block)
            except UNREADABLE:
                continue
            for e, result in zip(group, results, strict=True):
                if result.ok:
                    mark = int(result.one())
                    e.notional_usd = abs(e.args["quote"]) + abs(e.args["base"]) * mark // X18

    # --- lateness and compensation -----------------------------------------------------------------
    async def liquidatable(self, subjects: Sequence[Subject], block: int) -> list[bool]:
        """ClearingHouse's own test (account value < maintenance requirement, with a position)."""
        calls = []
        for account, _ in subjects:
            calls += [self.views.account_value(account), self.views.requirement(account)]
        results = await self.read(calls, block)
        out = []
        for i in range(len(subjects)):
            value, requirement = results[2 * i], results[2 * i + 1]
            if not (value.ok and requirement.ok):
                out.append(False)  # before the deployment, or an unreadable account
                continue
            out.append(int(requirement.one()) > 0 and int(value.one()) < int(requirement.one()))
        return out

    async def subjects(self) -> list[Subject]:
        await self.session.indexer.sync()
        return [(a, None) for a in sorted(self.session.indexer.known)]

    async def values(self, accounts: Sequence[str], block: int, price: str) -> list[int]:
        return await valuation.values(self.read, self.d, accounts, block, price)


def _checksum(address: str) -> str:
    return str(to_checksum_address(address))
