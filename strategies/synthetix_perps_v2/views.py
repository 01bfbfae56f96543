"""What the keeper reads from Synthetix Perps V2, at one pinned block: parameters and positions.

Fee parameters are read live from PerpsV2MarketSettings (global: liquidationFeeRatio, minKeeperFee,
maxKeeperFee, keeperLiquidationFee; per market: maxLiquidationDelta, maxPD, skewScale) and read
again whenever the settings contract logs an update. Positions come from the market proxies' views
(`canLiquidate`, `isFlagged`, `positions`), all in Multicall3 batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keeper.codec import topic
from keeper.multicall import Call, Reader
from strategies.synthetix_perps_v2.fees import UNIT, FeeParams
from strategies.synthetix_perps_v2.metadata import PerpsV2Market, SynthetixDeployment

POSITION_MODIFIED = topic(
    "PositionModified(uint256,address,uint256,int256,int256,uint256,uint256,uint256,int256)"
)
POSITION_STRUCT = "(uint64,uint64,uint128,uint128,int128)"  # id, lastFundingIndex, margin, lastPrice, size


def key_bytes(key: str) -> bytes:
    return key.encode().ljust(32, b"\0")


# --- the builders every read is made of (the per-block scan and the plans alike) --------------------
def market_calls(proxy: str) -> list[Call]:
    """A market's oracle price (with its invalid flag) and skew."""
    return [
        Call(proxy, "assetPrice()", (), ("uint256", "bool")),
        Call(proxy, "marketSkew()", (), ("int128",)),
    ]


def position_calls(proxy: str, account: str) -> list[Call]:
    """An account's position in one market, whether it can be liquidated, whether it is flagged."""
    return [
        Call(proxy, "positions(address)", (account,), (POSITION_STRUCT,)),
        Call(proxy, "canLiquidate(address)", (account,), ("bool",)),
        Call(proxy, "isFlagged(address)", (account,), ("bool",)),
    ]


def plan_calls(
    deployment: SynthetixDeployment, market: PerpsV2Market, account: str, liquidator: str
) -> list[Call]:
    """Everything one liquidation is priced from, in one batch: the position views, the contract's
    own fee view, the market, who flagged it, the keeper's endorsement, the ETH price for gas."""
    eth = deployment.eth_market or market.proxy
    return [
        *position_calls(market.proxy, account),
        Call(market.proxy, "liquidationFee(address)", (account,), ("uint256",)),
        *market_calls(market.proxy),
        Call(market.state, "positionFlagger(address)", (account,), ("address",)),
        Call(deployment.manager, "isEndorsed(address)", (liquidator,), ("bool",)),
        market_calls(eth)[0],
    ]


@dataclass(frozen=True)
class MarketState:
    """One market at one block: its oracle price and skew, and its liquidation parameters."""

    market: PerpsV2Market
    price: int
    price_invalid: bool
    skew: int
    fees: FeeParams


@dataclass(frozen=True)
class Position:
    """One account in one market: the opportunity the engine ranks (largest notional first)."""

    account: str
    market: str  # the market proxy
    market_key: str
    size: int
    price: int
    can_liquidate: bool
    flagged: bool

    @property
    def kind(self) -> str:
        return "flagged" if self.flagged else "flag"

    @property
    def notional(self) -> int:
        return abs(self.size) * self.price // UNIT

    @property
    def liquidatable(self) -> bool:
        return self.size != 0 and (self.can_liquidate or self.flagged)

    @property
    def key(self) -> str:
        return f"{self.market}:{self.account}"

    @property
    def exclusive(self) -> str:
        return self.account.lower()


async def read_parameters(read: Reader, deployment: SynthetixDeployment, block: int) -> dict[str, FeeParams]:
    """The fee and liquidation parameters of every market (by proxy), global ones included."""
    settings = deployment.settings
    names = ("liquidationFeeRatio", "minKeeperFee", "maxKeeperFee", "keeperLiquidationFee")
    calls = [Call(settings, f"{n}()", (), ("uint256",)) for n in names]
    for m in deployment.markets:
        key = key_bytes(m.key)
        calls += [
            Call(settings, f"{n}(bytes32)", (key,), ("uint256",))
            for n in ("maxLiquidationDelta", "maxPD", "skewScale")
        ]
    values = [r.one() for r in await read(calls, block)]
    ratio, min_fee, max_fee, liquidation_fee = values[:4]
    out: dict[str, FeeParams] = {}
    for i, m in enumerate(deployment.markets):
        max_delta, max_pd, skew_scale = values[4 + 3 * i : 7 + 3 * i]
        out[m.proxy] = FeeParams(ratio, min_fee, max_fee, liquidation_fee, max_delta, max_pd, skew_scale)
    return out


async def read_markets(
    read: Reader, deployment: SynthetixDeployment, params: dict[str, FeeParams], block: int
) -> dict[str, MarketState]:
    """Every market's oracle price and skew, with its (cached) parameters."""
    results = await read([c for m in deployment.markets for c in market_calls(m.proxy)], block)
    out: dict[str, MarketState] = {}
    for i, m in enumerate(deployment.markets):
        price, skew = results[2 * i : 2 * i + 2]
        out[m.proxy] = MarketState(
            m,
            int(price.value[0]) if price.ok else 0,
            not price.ok or bool(price.value[1]),
            skew.one(),
            params[m.proxy],
        )
    return out


async def read_positions(
    read: Reader, markets: dict[str, MarketState], pairs: Sequence[tuple[str, str]], block: int
) -> list[Position]:
    """(market proxy, account) pairs -> their open positions (size 0 ones are dropped)."""
    results = await read([c for proxy, account in pairs for c in position_calls(proxy, account)], block)
    out = []
    for i, (proxy, account) in enumerate(pairs):
        position, can, flagged = results[3 * i : 3 * i + 3]
        size = int(position.one()[4])
        if size == 0:
            continue
        state = markets[proxy]
        out.append(
            Position(
                account,
                proxy,
                state.market.key,
                size,
                state.price,
                bool(can.value[0]) if can.ok else False,
                bool(flagged.one()),
            )
        )
    return out
