"""Synthetix Perps V2 accounts on the devnet, opened through the real market proxies.

Traders deposit sUSD margin (`transferMargin`) and trade atomically (`modifyPosition`) at the oracle
price; then the oracle moves and some become liquidatable, each in one of the ways a keeper meets:
flag and liquidate (fee under and over `maxKeeperFee`), liquidate what someone else flagged, and
too large for `liquidatePosition` (|size|/skewScale >= maxLiquidationDelta: endorsed keepers only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from eth_account import Account

from devnet import units
from devnet.chain import DEPLOYER, DevChain
from devnet.scenario import Trader, trader_key
from devnet.synthetix import PerpsMarket, SynthetixDeployment

SCENARIOS = ("liquidations", "empty")
FLAG_AND_LIQUIDATE = "flag+liquidate"
LIQUIDATE_ONLY = "liquidate"  # flagged by someone else
FORCE_ONLY = "force-only"  # too large for liquidatePosition
ETH_CRASH, BTC_CRASH = "1900", "28500"


@dataclass
class SynthetixScenario:
    deployment: SynthetixDeployment
    name: str = "liquidations"
    traders: dict[str, Trader] = field(default_factory=dict)
    other_keeper: Trader | None = None

    @property
    def chain(self) -> DevChain:
        return self.deployment.chain

    def trader(self, label: str, expect: tuple[str, ...] = (), note: str = "") -> Trader:
        key = trader_key(f"synthetix/{label}")
        address = Account.from_key(key).address
        trader = Trader(label, address, key, expect, note)
        self.traders[label] = trader
        self.chain.set_balance(address, units.ether(100))
        return trader

    def open(self, trader: Trader, market: PerpsMarket, size: str, margin: str) -> None:
        """Deposit `margin` sUSD and trade `size` (negative: short) at the oracle price, 1 % slippage."""
        susd = self.deployment["SynthsUSD"]
        self.chain.send(susd.functions.issue(trader.address, units.ether(margin)), DEPLOYER)
        proxy = market.proxy.functions
        self.chain.send(proxy.transferMargin(units.ether(margin)), trader.address)
        price = proxy.assetPrice().call()[0]
        slippage = Decimal("1.01") if Decimal(size) > 0 else Decimal("0.99")
        desired = int(Decimal(price) * slippage)
        self.chain.send(proxy.modifyPosition(units.ether(size), desired), trader.address)

    def flag(self, flagger: Trader, trader: Trader, market: PerpsMarket) -> None:
        self.chain.send(market.proxy.functions.flagPosition(trader.address), flagger.address)

    def manifest(self) -> dict[str, Any]:
        return {
            "protocol": "synthetix-perps-v2",
            "scenario": self.name,
            "traders": [
                {"label": t.label, "address": t.address, "expect": list(t.expect), "note": t.note}
                for t in self.traders.values()
            ],
            "otherKeeper": None if self.other_keeper is None else self.other_keeper.address,
        }


def build(deployment: SynthetixDeployment, name: str = "liquidations") -> SynthetixScenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    s = SynthetixScenario(deployment, name)
    if name == "empty":
        return s
    eth, btc = deployment.market("sETH"), deployment.market("sBTC")
    # shorts first keep the skew, and so the instantaneous P/D check, small
    s.open(s.trader("eth-short-healthy", note="short 800 ETH, 2x"), eth, "-800", "800000")
    s.open(
        s.trader(
            "eth-long-1000", (FLAG_AND_LIQUIDATE,), "flag fee 6,650 sUSD uncapped: maxKeeperFee pays 1,000"
        ),
        eth,
        "1000",
        "108000",
    )
    s.open(
        s.trader("eth-long-1300", (FORCE_ONLY,), "|size|/skewScale 0.13 % >= maxLiquidationDelta 0.12 %"),
        eth,
        "1300",
        "140000",
    )
    s.open(s.trader("eth-long-5", (FLAG_AND_LIQUIDATE,), "flag fee under the cap"), eth, "5", "560")
    flagged = s.trader("eth-long-10-flagged", (LIQUIDATE_ONLY,), "flagged by another keeper")
    s.open(flagged, eth, "10", "1100")
    s.open(s.trader("btc-short-healthy", note="short 3 BTC, 5x"), btc, "-3", "20000")
    s.open(s.trader("btc-long-5", (FLAG_AND_LIQUIDATE,)), btc, "5", "8000")
    s.chain.advance_time(60)
    deployment.set_price("sETH", ETH_CRASH)
    deployment.set_price("sBTC", BTC_CRASH)
    s.other_keeper = s.trader("other-keeper", note="flags a position and leaves its liquidation to others")
    del s.traders["other-keeper"]
    s.flag(s.other_keeper, flagged, eth)
    return s
