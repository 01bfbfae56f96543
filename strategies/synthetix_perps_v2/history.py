"""Synthetix Perps V2's liquidation history: flags and liquidations, emitted by the market proxies.

* `PositionFlagged(id, account, flagger, price, timestamp)` (kind `flag`): the flagger is the
  `liquidator`; its reward, the flag fee, is paid at the liquidation (`flaggerFee` of the position's
  next `PositionLiquidated`), so `liquidator_reward` is that fee when the liquidation is in the range.
  The event's `timestamp` argument is `block.timestamp` (PerpsV2MarketLiquidate.sol 118): it is the
  record's own `timestamp`.
* `PositionLiquidated(id, account, liquidator, size, price, flaggerFee, liquidatorFee, stakersFee)`
  (`position`): `liquidator_reward` is `liquidatorFee` (sUSD, 18 decimals).

`notional_usd` is |size| x the oracle price of the event (a flag's size is the liquidated one: a
flagged position is frozen; without its liquidation in the range, the position read at the flag's
block). Values for compensation: each market's `remainingMargin` (margin + PnL + accrued funding at
the oracle price), summed over the account's markets; Synthetix has no mark price.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils.address import to_checksum_address

import abi
from keeper.errors import SettingError
from keeper.events import FLAG, POSITION, UNREADABLE, EventSpec, HistoryEvent, Log, LogQuery, Subject
from keeper.multicall import Call, Reader
from keeper.protocol import Session
from strategies.synthetix_perps_v2.metadata import SynthetixDeployment
from strategies.synthetix_perps_v2.views import POSITION_STRUCT

UNIT = 10**18
PROTOCOL = "synthetix-perps-v2"
POSITION_FLAGGED = EventSpec.from_abi(
    abi.load("PerpsV2MarketLiquidate"), "PositionFlagged(uint256,address,address,uint256,uint256)"
)
POSITION_LIQUIDATED = EventSpec.from_abi(
    abi.load("PerpsV2MarketLiquidate"),
    "PositionLiquidated(uint256,address,address,int256,uint256,uint256,uint256,uint256)",
)


class SynthetixHistory:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.d: SynthetixDeployment = session.deployment
        self.read: Reader = session.read
        self.keys = {m.proxy.lower(): m.key for m in self.d.markets}
        self.specs = {
            POSITION_FLAGGED.topic0: POSITION_FLAGGED,
            POSITION_LIQUIDATED.topic0: POSITION_LIQUIDATED,
        }

    def queries(self) -> list[LogQuery]:
        return [LogQuery(tuple(m.proxy for m in self.d.markets), tuple(sorted(self.specs)))]

    async def decode(self, logs: Sequence[Log]) -> list[HistoryEvent]:
        events = []
        for entry in logs:
            proxy = str(entry["address"]).lower()
            spec = self.specs.get(str(entry["topics"][0]).lower())
            if spec is None or proxy not in self.keys:
                continue
            args = spec.decode(entry)
            flag = spec is POSITION_FLAGGED
            event = HistoryEvent(
                int(entry["blockNumber"], 16),
                str(entry["transactionHash"]),
                int(entry["logIndex"], 16),
                PROTOCOL,
                FLAG if flag else POSITION,
                args["account"],
                args["flagger"] if flag else args["liquidator"],
                args,
                market=self.keys[proxy],
                subject=str(to_checksum_address(str(entry["address"]))),
            )
            if not flag:
                event.notional_usd = abs(args["size"]) * args["price"] // UNIT
                event.liquidator_reward = args["liquidator_fee"]
            events.append(event)
        events.sort(key=HistoryEvent.order)
        await self._complete_flags(events)
        return events

    async def _complete_flags(self, events: Sequence[HistoryEvent]) -> None:
        """A flag's fee and size come with its position's next liquidation; without one in the range,
        its size is read at the flag's block (left null when the node no longer has that state)."""
        unmatched = []
        for i, flag in enumerate(events):
            if flag.kind != FLAG:
                continue
            later = (
                e
                for e in events[i + 1 :]
                if e.kind == POSITION and (e.subject, e.trader) == (flag.subject, flag.trader)
            )
            liquidation = next(later, None)
            if liquidation is not None:
                flag.liquidator_reward = liquidation.args["flagger_fee"]
                flag.notional_usd = abs(liquidation.args["size"]) * flag.args["price"] // UNIT
            else:
                unmatched.append(flag)
        for flag in unmatched:
            assert flag.subject is not None
            try:
                (position,) = await self.read(
                    [Call(flag.subject, "positions(address)", (flag.trader,), (POSITION_STRUCT,))], flag.block
                )
            except UNREADABLE:
                continue
            if position.ok:
                flag.notional_usd = abs(int(position.one()[4])) * flag.args["price"] // UNIT

    # --- lateness and compensation -----------------------------------------------------------------
    async def liquidatable(self, subjects: Sequence[Subject], block: int) -> list[bool]:
        """The market's own `canLiquidate`, or already flagged (frozen until liquidated)."""
        calls = []
        for account, market in subjects:
            assert market is not None
            calls += [
                Call(market, "canLiquidate(address)", (account,), ("bool",)),
                Call(market, "isFlagged(address)", (account,), ("bool",)),
            ]
        results = await self.read(calls, block)
        return [
            any(r.ok and bool(r.value[0]) for r in results[2 * i : 2 * i + 2]) for i in range(len(subjects))
        ]

    async def subjects(self) -> list[Subject]:
        await self.session.indexer.sync()
        pairs = (key.split(":", 1) for key in sorted(self.session.indexer.known) if ":" in key)
        return [(account, market) for market, account in pairs]

    async def values(self, accounts: Sequence[str], block: int, price: str) -> list[int]:
        if price != "index":
            raise SettingError(f"--price: {PROTOCOL} values positions at its oracle price only (index)")
        calls = [
            Call(m.proxy, "remainingMargin(address)", (a,), ("uint256", "bool"))
            for a in accounts
            for m in self.d.markets
        ]
        results = await self.read(calls, block)
        n = len(self.d.markets)
        return [
            sum(int(r.value[0]) for r in results[i * n : (i + 1) * n] if r.ok) for i in range(len(accounts))
        ]
