"""Which Perp v2 views to read, as Multicall3 calls, and how their answers become `risk` dataclasses.

An account is read in at most two steps at one block. The core views (account value, requirement,
orders, base tokens, Vault liquidatability, collateral tokens) come with the extras its last known
shape needs (position sizes per market; open orders per market for makers; USDC value, balances and
debt threshold for non-USDC collateral holders). Only when the core answer shows a new shape (a new
market, new orders, a new collateral) are the extras read again for that shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keeper.codec import topic
from keeper.indexer import AccountSource
from keeper.multicall import Call, Result
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.risk import Account, CollateralConfig, Params, Position

COLLATERAL_TWAP_SECONDS = 900  # Vault._COLLATERAL_TWAP_INTERVAL

# rough gas per view, for cutting batches under the node's eth_call cap (measured on curie 2.8.4)
GAS_ACCOUNT_VALUE = 180_000
GAS_PER_MARKET = 110_000  # each market adds a mark-price read (pool observations) to the big views
GAS_REQUIREMENT = 60_000
GAS_SETTLEMENT_VALUE = 160_000
GAS_SMALL = 45_000
GAS_MARK = 120_000

EVENTS = (  # (contract, event signature, indexed topic holding the account)
    ("Vault", "Deposited(address,address,uint256)", 2),
    ("Vault", "Withdrawn(address,address,uint256)", 2),
    ("Vault", "CollateralLiquidated(address,address,address,uint256,uint256,uint256,uint24)", 1),
    ("Vault", "BadDebtSettled(address,uint256)", 1),
    ("ClearingHouse", "PositionChanged(address,address,int256,int256,uint256,int256,int256,uint256)", 1),
    (
        "ClearingHouse",
        "LiquidityChanged(address,address,address,int24,int24,int256,int256,int128,uint256)",
        1,
    ),
    ("ClearingHouse", "PositionLiquidated(address,address,uint256,uint256,uint256,address)", 1),
    ("ClearingHouse", "PositionClosed(address,address,int256,int256,int256,int256,uint256)", 1),
)
PARAMETER_CONTRACTS = ("ClearingHouseConfig", "CollateralManager", "MarketRegistry")


def account_sources(deployment: Deployment) -> list[AccountSource]:
    return [
        AccountSource(signature.split("(")[0], deployment.address(contract), topic(signature), index)
        for contract, signature, index in EVENTS
    ]


@dataclass(frozen=True)
class Shape:
    """What an account's extras depend on: its markets, whether it has orders, its non-USDC collateral."""

    bases: tuple[str, ...] = ()
    maker: bool = False
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Core:
    account_value: int
    margin_requirement: int
    has_order: bool
    bases: tuple[str, ...]
    vault_liquidatable: bool
    collateral_tokens: tuple[str, ...]


class Views:
    def __init__(self, deployment: Deployment) -> None:
        d = deployment
        self.usdc = d.usdc.lower()
        self.clearing_house, self.account_balance, self.vault = d.clearing_house, d.account_balance, d.vault
        self.order_book = d.address("OrderBook")
        self.config = d.address("ClearingHouseConfig")
        self.collateral_manager = d.address("CollateralManager")
        self.market_registry = d.address("MarketRegistry")
        self.eth_market = d.eth_market
        self.collateral_decimals = {c.address.lower(): c.decimals for c in d.collaterals}

    # --- protocol parameters and prices -----------------------------------------------------------
    def params_calls(self, tokens: Sequence[str]) -> list[Call]:
        calls = [
            Call(self.config, "getMmRatio()", (), ("uint24",), GAS_SMALL),
            Call(self.config, "getImRatio()", (), ("uint24",), GAS_SMALL),
            Call(self.config, "getLiquidationPenaltyRatio()", (), ("uint24",), GAS_SMALL),
            Call(self.collateral_manager, "getMmRatioBuffer()", (), ("uint24",), GAS_SMALL),
            Call(
                self.collateral_manager, "getDebtNonSettlementTokenValueRatio()", (), ("uint24",), GAS_SMALL
            ),
            Call(self.collateral_manager, "getLiquidationRatio()", (), ("uint24",), GAS_SMALL),
        ]
        for token in tokens:
            calls += [
                Call(
                    self.collateral_manager,
                    "getCollateralConfig(address)",
                    (token,),
                    ("(address,uint24,uint24,uint256)",),
                    GAS_SMALL,
                ),
                Call(
                    self.collateral_manager, "getPriceFeedDecimals(address)", (token,), ("uint8",), GAS_SMALL
                ),
                Call(token, "decimals()", (), ("uint8",), GAS_SMALL),
            ]
        return calls

    def decode_params(self, tokens: Sequence[str], results: Sequence[Result]) -> Params:
        mm, im, penalty, buffer, debt_ratio, liquidation_ratio = (r.one() for r in results[:6])
        collaterals = {}
        for i, token in enumerate(tokens):
            config, feed_decimals, decimals = results[6 + 3 * i : 9 + 3 * i]
            if not config.ok:  # not (or no longer) a collateral
                continue
            _, ratio, discount, _ = config.one()
            collaterals[token.lower()] = CollateralConfig(
                token.lower(), int(decimals.one()), int(feed_decimals.one()), int(ratio), int(discount)
            )
        return Params(mm, im, penalty, buffer, debt_ratio, liquidation_ratio, collaterals)

    def price_calls(self, bases: Sequence[str], tokens: Sequence[str]) -> list[Call]:
        return [self.mark_price(b) for b in bases] + [
            Call(
                self.collateral_manager,
                "getPrice(address,uint256)",
                (t, COLLATERAL_TWAP_SECONDS),
                ("uint256",),
                GAS_MARK,
            )
            for t in tokens
        ]

    # --- single views: the builders every read is made of (the scan and the plans alike) ------------
    def account_value(self, trader: str, markets: int = 1) -> Call:
        gas = GAS_ACCOUNT_VALUE + GAS_PER_MARKET * max(1, markets)
        return Call(self.clearing_house, "getAccountValue(address)", (trader,), ("int256",), gas)

    def requirement(self, trader: str, markets: int = 1) -> Call:
        gas = GAS_REQUIREMENT + GAS_PER_MARKET * max(1, markets)
        signature = "getMarginRequirementForLiquidation(address)"
        return Call(self.account_balance, signature, (trader,), ("int256",), gas)

    def has_order(self, trader: str) -> Call:
        return Call(self.account_balance, "hasOrder(address)", (trader,), ("bool",), GAS_SMALL)

    def taker_size(self, trader: str, base: str) -> Call:
        signature = "getTakerPositionSize(address,address)"
        return Call(self.account_balance, signature, (trader, base), ("int256",), GAS_SMALL)

    def total_size(self, trader: str, base: str) -> Call:
        signature = "getTotalPositionSize(address,address)"
        return Call(self.account_balance, signature, (trader, base), ("int256",), GAS_SMALL)

    def total_abs_position_value(self, trader: str, markets: int = 1) -> Call:
        gas = GAS_SMALL + GAS_PER_MARKET * max(1, markets)
        signature = "getTotalAbsPositionValue(address)"
        return Call(self.account_balance, signature, (trader,), ("uint256",), gas)

    def mark_price(self, base: str) -> Call:
        return Call(self.account_balance, "getMarkPrice(address)", (base,), ("uint256",), GAS_MARK)

    def index_price(self, base: str) -> Call:
        return Call(base, "getIndexPrice(uint256)", (0,), ("uint256",), GAS_MARK)

    def fee_ratio(self, base: str) -> Call:
        return Call(self.market_registry, "getFeeRatio(address)", (base,), ("uint24",), GAS_SMALL)

    def free_collateral_by_ratio(self, who: str, ratio: int, markets: int = 1) -> Call:
        gas = GAS_SETTLEMENT_VALUE + GAS_PER_MARKET * max(1, markets)
        signature = "getFreeCollateralByRatio(address,uint24)"
        return Call(self.vault, signature, (who, ratio), ("int256",), gas)

    def vault_liquidatable(self, trader: str, markets: int = 1) -> Call:
        gas = GAS_SMALL + GAS_PER_MARKET * max(1, markets)
        return Call(self.vault, "isLiquidatable(address)", (trader,), ("bool",), gas)

    def balance_by_token(self, trader: str, token: str) -> Call:
        signature = "getBalanceByToken(address,address)"
        return Call(self.vault, signature, (trader, token), ("int256",), GAS_SMALL)

    def max_repaid_and_collateral(self, trader: str, token: str) -> Call:
        signature = "getMaxRepaidSettlementAndLiquidatableCollateral(address,address)"
        return Call(self.vault, signature, (trader, token), ("uint256", "uint256"), GAS_SETTLEMENT_VALUE)

    @staticmethod
    def erc20_balance(token: str, owner: str) -> Call:
        return Call(token, "balanceOf(address)", (owner,), ("uint256",), GAS_SMALL)

    @staticmethod
    def erc20_allowance(token: str, owner: str, spender: str) -> Call:
        return Call(token, "allowance(address,address)", (owner, spender), ("uint256",), GAS_SMALL)

    # --- accounts -----------------------------------------------------------------------------------
    def core_calls(self, trader: str, markets: int) -> list[Call]:
        return [
            self.account_value(trader, markets),
            self.requirement(trader, markets),
            self.has_order(trader),
            Call(self.account_balance, "getBaseTokens(address)", (trader,), ("address[]",), GAS_SMALL),
            self.vault_liquidatable(trader, markets),
            Call(self.vault, "getCollateralTokens(address)", (trader,), ("address[]",), GAS_SMALL),
        ]

    @staticmethod
    def decode_core(results: Sequence[Result]) -> Core:
        value, requirement, has_order, bases, vault_liquidatable, tokens = (r.one() for r in results)
        return Core(
            int(value),
            int(requirement),
            bool(has_order),
            tuple(b.lower() for b in bases),
            bool(vault_liquidatable),
            tuple(t.lower() for t in tokens),
        )

    def shape_of(self, core: Core) -> Shape:
        return Shape(core.bases, core.has_order, tuple(t for t in core.collateral_tokens if t != self.usdc))

    def extra_calls(self, trader: str, shape: Shape, mm_ratio: int) -> list[Call]:
        calls = []
        for base in shape.bases:
            calls += [self.taker_size(trader, base), self.total_size(trader, base)]
        if shape.maker:
            signature = "getOpenOrderIds(address,address)"
            calls += [
                Call(self.order_book, signature, (trader, base), ("bytes32[]",), GAS_SMALL)
                for base in shape.bases
            ]
            calls.append(self.free_collateral_by_ratio(trader, mm_ratio, len(shape.bases)))
        if shape.tokens:
            markets = len(shape.bases)
            calls += [
                Call(
                    self.vault,
                    "getSettlementTokenValue(address)",
                    (trader,),
                    ("int256",),
                    GAS_SETTLEMENT_VALUE + GAS_PER_MARKET * markets,
                ),
                Call(
                    self.collateral_manager,
                    "getDebtThresholdByTrader(address)",
                    (trader,),
                    ("uint256",),
                    GAS_SMALL,
                ),
            ]
            calls += [self.balance_by_token(trader, t) for t in shape.tokens]
        return calls

    # --- what a plan reads, in one batch -----------------------------------------------------------
    def position_plan_calls(self, trader: str, base: str, liquidator: str, im_ratio: int) -> list[Call]:
        """A position liquidation: the trader's margin, its position, the mark, the keeper's room."""
        return [
            self.account_value(trader),
            self.requirement(trader),
            self.taker_size(trader, base),
            self.total_size(trader, base),
            self.total_abs_position_value(trader),
            self.mark_price(base),
            self.has_order(trader),
            self.free_collateral_by_ratio(liquidator, im_ratio),
            self.fee_ratio(base),
            self.index_price(self.eth_market or base),
        ]

    def collateral_plan_calls(self, trader: str, token: str, liquidator: str) -> list[Call]:
        """A collateral liquidation: the Vault's conditions and maximum, the keeper's USDC."""
        return [
            self.vault_liquidatable(trader),
            self.max_repaid_and_collateral(trader, token),
            self.erc20_balance(self.usdc, liquidator),
            self.erc20_allowance(self.usdc, liquidator, self.vault),
            self.index_price(self.eth_market or self.usdc),
            self.balance_by_token(trader, token),
        ]

    @staticmethod
    def account(trader: str, block: int, core: Core, shape: Shape, extras: Sequence[Result]) -> Account:
        answers = iter(extras)
        positions = []
        for base in shape.bases:
            taker, total = int(next(answers).one()), int(next(answers).one())
            if taker or total:
                positions.append(Position(base, taker, total))
        order_markets: tuple[str, ...] = ()
        free_by_mm = None
        if shape.maker:
            order_markets = tuple(base for base in shape.bases if next(answers).one())
            free_by_mm = int(next(answers).one())
        settlement = threshold = None
        balances: tuple[tuple[str, int], ...] = ()
        if shape.tokens:
            settlement, threshold = int(next(answers).one()), int(next(answers).one())
            balances = tuple((t, int(next(answers).one())) for t in shape.tokens)
        return Account(
            address=trader,
            block=block,
            account_value=core.account_value,
            margin_requirement=core.margin_requirement,
            has_order=core.has_order,
            positions=tuple(positions),
            vault_liquidatable=core.vault_liquidatable,
            collateral_tokens=core.collateral_tokens,
            order_markets=order_markets,
            free_collateral_by_mm=free_by_mm,
            settlement_value=settlement,
            collateral_balances=balances,
            debt_threshold=threshold,
        )
