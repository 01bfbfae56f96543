"""What the keeper reads from Synthetix Perps V2, at one pinned block: parameters and positions.

Fee parameters are read live from PerpsV2MarketSettings (global: liquidationFeeRatio, minKeeperFee,
maxKeeperFee, keeperLiquidationFee; per market: maxLiquidationDelta, maxPD, skewScale) and read
again whenever the settings contract logs an update. Positions come from the market proxies' views
(`canLiquidate`, `isFlagged`, `positions`), all in Multicall3 batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from keeper.codec import topic
from keeper.metadata import PerpsV2Market, SynthetixDeployment
from keeper.multicall import Call, Result
from strategies.synthetix_perps_v2.fees import UNIT, FeeParams

Reader = Callable[[Sequence[Call], int], Awaitable[list[Result]]]
POSITION_MODIFIED = topic(
    "PositionModified(uint256,address,uint256,int256,int256,uint256,uint256,uint256,int256)"
)
POSITION_STRUCT = "(uint64,uint64,uint128,uint128,int128)"  # id, lastFundingIndex, margin, lastPrice, size


def key_bytes(key: str) -> bytes:
    return key.encode().ljust(32, b"\0")


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
    calls = []
    for m in deployment.markets:
        calls += [
            Call(m.proxy, "assetPrice()", (), ("uint256", "bool")),
            Call(m.proxy, "marketSkew()", (), ("int128",)),
        ]
    results = await read(calls, block)
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
    calls = []
    for proxy, account in pairs:
        calls += [
            Call(proxy, "positions(address)", (account,), (POSITION_STRUCT,)),
            Call(proxy, "canLiquidate(address)", (account,), ("bool",)),
            Call(proxy, "isFlagged(address)", (account,), ("bool",)),
        ]
    results = await read(calls, block)
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
