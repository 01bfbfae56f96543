"""Deterministic account scenarios on a deployed devnet.

A `ScenarioBuilder` opens real positions through the real ClearingHouse and moves prices the way
the market would (index feeds first, then pool trades within the max-tick limit, then time past
the TWAP windows), so accounts become liquidatable in each of the ways Perp v2 allows. Every trader
has a label, a deterministic key, and the kinds of liquidation the scenario expects for it; that
manifest is what tests assert against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from eth_account import Account
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3.contract import Contract

from devnet import units
from devnet.chain import DEPLOYER, DevChain
from devnet.deploy import PERP_TICK_SPACING, PRICE_FEED_DECIMALS, SPOT_POOL_FEE, UINT256_MAX, Deployment

DEADLINE = 2**64
Expect = tuple[str, ...]
TWAP_SETTLE_SECONDS = 3600  # > 30-min mark TWAP, so marks reflect the moved pools
MOVE_STEP_TICKS = 900  # under Exchange's maxTickCrossedWithinBlock (1000)
MOVE_STEP_SECONDS = 16  # a new 15-s window for the next step

# anvil's second default dev account (a public, well-known test key): the keeper's devnet wallet.
KEEPER_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
KEEPER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


@dataclass
class Trader:
    label: str
    address: ChecksumAddress
    private_key: str
    expect: tuple[str, ...] = ()  # liquidation kinds the scenario expects: taker, maker, collateral
    note: str = ""


def trader_key(label: str) -> str:
    return "0x" + keccak(text=f"perp-keeper/devnet/{label}").hex().removeprefix("0x")


@dataclass
class ScenarioBuilder:
    deployment: Deployment
    traders: dict[str, Trader] = field(default_factory=dict)

    @property
    def chain(self) -> DevChain:
        return self.deployment.chain

    # --- accounts -----------------------------------------------------------------------------
    def trader(self, label: str, expect: tuple[str, ...] = (), note: str = "") -> Trader:
        if label not in self.traders:
            key = trader_key(label)
            address = Account.from_key(key).address
            self.chain.set_balance(address, units.ether(100))
            self.traders[label] = Trader(label, address, key, expect, note)
        return self.traders[label]

    def deposit_usdc(self, account: str, amount: int) -> None:
        usdc, vault = self.deployment["USDC"], self.deployment["Vault"]
        self.chain.send(usdc.functions.mint(account, amount))
        self.chain.send(usdc.functions.approve(vault.address, UINT256_MAX), account)
        self.chain.send(vault.functions.deposit(usdc.address, amount), account)

    def mint_usdc(self, account: str, amount: int) -> None:
        self.chain.send(self.deployment["USDC"].functions.mint(account, amount))

    def deposit_weth(self, account: str, amount: int) -> None:
        self.chain.set_balance(account, amount + units.ether(100))
        self.chain.send(self.deployment["Vault"].functions.depositEther(), account, value=amount)

    # --- trading ------------------------------------------------------------------------------
    def open_position(
        self, trader: Trader, symbol: str, side: str, notional_usd: str | int | Decimal
    ) -> None:
        """Open (or add to) a taker position of `notional_usd` worth of quote, long or short."""
        if side not in ("long", "short"):
            raise ValueError(f"side must be long or short, not {side!r}")
        base = self.deployment.market(symbol).base_token.address
        amount = units.ether(notional_usd)
        is_short = side == "short"
        # long: pay exactly `amount` quote; short: receive exactly `amount` quote
        params = (base, is_short, not is_short, amount, 0, DEADLINE, 0, b"\x00" * 32)
        self.chain.send(self.deployment["ClearingHouse"].functions.openPosition(params), trader.address)

    def close_position(self, trader: Trader, symbol: str) -> None:
        base = self.deployment.market(symbol).base_token.address
        params = (base, 0, 0, DEADLINE, b"\x00" * 32)
        self.chain.send(self.deployment["ClearingHouse"].functions.closePosition(params), trader.address)

    def add_liquidity(
        self,
        trader: Trader,
        symbol: str,
        lower_price: str,
        upper_price: str,
        base: str | int = 0,
        quote: str | int = 0,
    ) -> None:
        market = self.deployment.market(symbol)
        lower = units.tick_at_price(float(lower_price), PERP_TICK_SPACING)
        upper = units.tick_at_price(float(upper_price), PERP_TICK_SPACING)
        params = (
            market.base_token.address,
            units.ether(base),
            units.ether(quote),
            lower,
            upper,
            0,
            0,
            False,
            DEADLINE,
        )
        self.chain.send(self.deployment["ClearingHouse"].functions.addLiquidity(params), trader.address)

    # --- prices -------------------------------------------------------------------------------
    def set_index_price(self, symbol: str, price: str) -> None:
        self._set_feed(self.deployment.market(symbol).price_feed, price)

    def set_collateral_price(self, price: str) -> None:
        assert self.deployment.weth_price_feed is not None
        self._set_feed(self.deployment.weth_price_feed, price)

    def move_spot_price(self, price: str) -> None:
        """Trade the USDC/WETH Uniswap pool to `price` (USDC per WETH), as arbitrageurs would after
        the collateral's index moved, so selling seized WETH meets a market, not a stale pool."""
        d = self.deployment
        pool, usdc, weth, router = d.spot_pool, d["USDC"], d["WETH9"], d["SwapRouter"]
        assert pool is not None
        usdc_is_token0 = int(usdc.address, 16) < int(weth.address, 16)
        if usdc_is_token0:
            target = units.sqrt_price_x96(1 / Fraction(Decimal(price)), 6, 18)
        else:
            target = units.sqrt_price_x96(price, 18, 6)
        current = int(pool.functions.slot0().call()[0])
        selling_weth = (target > current) if usdc_is_token0 else (target < current)
        sell, buy = (weth, usdc) if selling_weth else (usdc, weth)
        amount = units.ether(100_000) if selling_weth else units.usdc(10**9)
        if selling_weth:
            self.chain.set_balance(DEPLOYER, amount + units.ether(1_000))
            self.chain.send(weth.functions.deposit(), value=amount)
        else:
            self.chain.send(usdc.functions.mint(DEPLOYER, amount))
        self.chain.send(sell.functions.approve(router.address, UINT256_MAX))
        params = (sell.address, buy.address, SPOT_POOL_FEE, DEPLOYER, DEADLINE, amount, 0, target)
        self.chain.send(router.functions.exactInputSingle(params))

    def _set_feed(self, feed: Contract, price: str) -> None:
        self.chain.send(feed.functions.setPrice(units.to_units(price, PRICE_FEED_DECIMALS)))

    def pool_tick(self, symbol: str) -> int:
        return int(self.deployment.market(symbol).pool.functions.slot0().call()[1])

    def move_market(self, symbol: str, price: str, mover: Trader) -> None:
        """Move the index to `price`, then trade the pool there in steps the Exchange accepts.

        A market never moves more than maxTickCrossedWithinBlock ticks per 15-s window (EX_OPLAS),
        and a trade may not push it more than 10 % away from the index (EX_OPB), so the index moves
        first and the pool follows in steps of MOVE_STEP_TICKS, MOVE_STEP_SECONDS apart.
        """
        self.set_index_price(symbol, price)
        target = units.tick_at_price(float(price))
        clearing_house = self.deployment["ClearingHouse"]
        base = self.deployment.market(symbol).base_token.address
        while abs(gap := target - (tick := self.pool_tick(symbol))) > 1:  # within a tick is there
            step = max(-MOVE_STEP_TICKS, min(MOVE_STEP_TICKS, gap))
            limit_tick = tick + step
            sqrt_limit = int(Decimal("1.0001") ** (Decimal(limit_tick) / 2) * units.Q96)
            going_down = step < 0
            # sell base to push the price down, buy base to push it up; the price limit stops the fill
            params = (base, going_down, True, units.ether(10**7), 0, DEADLINE, sqrt_limit, b"\x00" * 32)
            self.chain.send(clearing_house.functions.openPosition(params), mover.address)
            self.chain.advance_time(MOVE_STEP_SECONDS)

    def settle_twaps(self) -> None:
        self.chain.advance_time(TWAP_SETTLE_SECONDS)

    def manifest(self) -> dict[str, Any]:
        return {
            "traders": [
                {
                    "label": t.label,
                    "address": t.address,
                    "expect": list(t.expect),
                    "note": t.note,
                }
                for t in self.traders.values()
            ]
        }


# --- named scenarios ----------------------------------------------------------------------------


def _liquidity(b: ScenarioBuilder) -> None:
    """Deep maker liquidity in every market (a healthy maker with open orders) and a price mover."""
    lp = b.trader("lp-whale", note="deep liquidity in every market; healthy maker")
    b.deposit_usdc(lp.address, units.usdc(50_000_000))
    b.add_liquidity(lp, "vETH", "890", "3560", base="2000", quote="3560000")
    b.add_liquidity(lp, "vBTC", "15000", "60000", base="120", quote="3600000")
    mover = b.trader("price-mover", note="arbitrageur that moves pools to the index; healthy")
    b.deposit_usdc(mover.address, units.usdc(10_000_000))


def _fund_keeper(b: ScenarioBuilder) -> None:
    """The keeper's devnet wallet: ETH for gas, USDC in the Vault (takeovers) and in the wallet."""
    b.chain.set_balance(KEEPER_ADDRESS, units.ether(1_000))
    b.deposit_usdc(KEEPER_ADDRESS, units.usdc(1_000_000))
    b.mint_usdc(KEEPER_ADDRESS, units.usdc(1_000_000))


def scenario_empty(b: ScenarioBuilder) -> None:
    _liquidity(b)
    _fund_keeper(b)


def scenario_all_kinds(b: ScenarioBuilder) -> None:
    """Every kind of account: takers both sides at several leverages, multi-market, bad debt,
    makers with range orders, and WETH-only accounts liquidatable by each Vault condition."""
    _liquidity(b)
    _fund_keeper(b)
    mover = b.traders["price-mover"]

    def taker(label: str, symbol: str, side: str, margin: int, leverage: str, expect: Expect) -> None:
        t = b.trader(label, expect, f"{side} {symbol} {leverage}x on {margin} USDC")
        b.deposit_usdc(t.address, units.usdc(margin))
        b.open_position(t, symbol, side, Decimal(margin) * Decimal(leverage))

    # ETH will fall 15 % and BTC rise 15 %: longs ETH and shorts BTC lose.
    # Highest leverage first: each trade moves the pool, and later entries are valued at a lagging mark.
    taker("eth-long-8x-bad-debt", "vETH", "long", 3_000, "8", ("taker",))
    taker("eth-long-7x", "vETH", "long", 8_000, "7", ("taker",))
    taker("eth-long-5.5x", "vETH", "long", 20_000, "5.5", ("taker",))
    taker("eth-long-4x", "vETH", "long", 5_000, "4", ())
    taker("eth-long-2x", "vETH", "long", 10_000, "2", ())
    taker("eth-short-8x", "vETH", "short", 4_000, "8", ())
    taker("eth-short-3x", "vETH", "short", 10_000, "3", ())
    taker("btc-short-8x", "vBTC", "short", 6_000, "8", ("taker",))
    taker("btc-short-6x", "vBTC", "short", 12_000, "6", ("taker",))
    taker("btc-short-2x", "vBTC", "short", 15_000, "2", ())
    taker("btc-long-3x", "vBTC", "long", 7_000, "3", ())

    multi = b.trader("multi-long-eth-short-btc", ("taker",), "long vETH 3.5x + short vBTC 3.5x")
    b.deposit_usdc(multi.address, units.usdc(10_000))
    b.open_position(multi, "vETH", "long", 35_000)
    b.open_position(multi, "vBTC", "short", 35_000)
    hedged = b.trader("multi-hedged", (), "long vETH + long vBTC, low leverage")
    b.deposit_usdc(hedged.address, units.usdc(20_000))
    b.open_position(hedged, "vETH", "long", 15_000)
    b.open_position(hedged, "vBTC", "long", 15_000)

    # A range maker: quote-only order below the price; the fall fills it and leaves a leveraged long.
    range_maker = b.trader("maker-range-eth", ("maker",), "quote-only vETH range 1550-1750")
    b.deposit_usdc(range_maker.address, units.usdc(12_000))
    b.add_liquidity(range_maker, "vETH", "1550", "1750", quote="110000")
    # Orders in two markets, both crossed by the moves: needs a cancel per market before liquidation.
    two_markets = b.trader(
        "maker-two-markets", ("maker",), "quote-only vETH 1550-1750 + base-only vBTC 30500-34000"
    )
    b.deposit_usdc(two_markets.address, units.usdc(10_000))
    b.add_liquidity(two_markets, "vETH", "1550", "1750", quote="50000")
    b.add_liquidity(two_markets, "vBTC", "30500", "34000", base="1.4")
    in_range = b.trader("maker-in-range", (), "in-range orders in vETH and vBTC; at risk, not liquidatable")
    b.deposit_usdc(in_range.address, units.usdc(9_000))
    b.add_liquidity(in_range, "vETH", "1400", "2200", base="15", quote="26700")
    b.add_liquidity(in_range, "vBTC", "24000", "37000", base="0.5", quote="15000")
    healthy_maker = b.trader("maker-healthy", (), "well-collateralised vETH range")
    b.deposit_usdc(healthy_maker.address, units.usdc(200_000))
    b.add_liquidity(healthy_maker, "vETH", "1200", "2400", base="20", quote="35600")

    # WETH-only collateral accounts.
    weth_lev = b.trader("weth-leveraged", ("taker", "collateral"), "2 WETH, long vETH ~5x: CH and Vault (a)")
    b.deposit_weth(weth_lev.address, units.ether(2))
    b.open_position(weth_lev, "vETH", "long", 14_000)
    weth_threshold = b.trader(
        "weth-debt-threshold", ("collateral",), "100 WETH, long vETH 90k: debt > debtThreshold only"
    )
    b.deposit_weth(weth_threshold.address, units.ether(100))
    b.open_position(weth_threshold, "vETH", "long", 90_000)
    # Realises a loss on vBTC while healthy; the later WETH fall then makes its USDC debt exceed
    # collateral x collateralRatio x debtNonSettlementTokenValueRatio: condition (b) alone.
    weth_ratio = b.trader(
        "weth-debt-ratio", ("collateral",), "1 WETH, realised vBTC loss: debt > collateral x ratio only"
    )
    b.deposit_weth(weth_ratio.address, units.ether(1))
    b.open_position(weth_ratio, "vBTC", "short", 6_150)
    weth_healthy = b.trader("weth-healthy", (), "10 WETH, small vETH short")
    b.deposit_weth(weth_healthy.address, units.ether(10))
    b.open_position(weth_healthy, "vETH", "short", 3_000)

    b.settle_twaps()
    b.move_market("vBTC", "34500", mover)
    b.settle_twaps()
    b.close_position(weth_ratio, "vBTC")
    b.move_market("vETH", "1513", mover)
    b.set_collateral_price("1513")
    b.move_spot_price("1513")
    b.settle_twaps()
    _refill_books(b)


def _refill_books(b: ScenarioBuilder) -> None:
    """Market makers refill the books around the settled prices, as on a live venue.

    Without it the pools keep only the thin launch ranges, and closing a position a liquidator takes
    over would cost several times the reward. Adding liquidity moves no price and no mark, so every
    account stays exactly where the scenario put it.
    """
    deep = b.trader("lp-deep", note="deep liquidity around the settled prices; healthy maker")
    b.deposit_usdc(deep.address, units.usdc(20_000_000))
    b.add_liquidity(deep, "vETH", "1300", "1750", base="3000", quote="4500000")
    b.add_liquidity(deep, "vBTC", "30000", "40000", base="100", quote="3450000")


SCENARIOS: dict[str, Callable[[ScenarioBuilder], None]] = {
    "empty": scenario_empty,
    "all-kinds": scenario_all_kinds,
}


def build(deployment: Deployment, name: str) -> ScenarioBuilder:
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}") from None
    builder = ScenarioBuilder(deployment)
    scenario(builder)
    return builder
