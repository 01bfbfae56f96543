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
from keeper.metadata import Deployment
from keeper.multicall import Call, Result
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
        return [
            Call(self.account_balance, "getMarkPrice(address)", (b,), ("uint256",), GAS_MARK) for b in bases
        ] + [
            Call(
                self.collateral_manager,
                "getPrice(address,uint256)",
                (t, COLLATERAL_TWAP_SECONDS),
                ("uint256",),
                GAS_MARK,
            )
            for t in tokens
        ]

    # --- accounts -----------------------------------------------------------------------------------
    def core_calls(self, trader: str, markets: int) -> list[Call]:
        heavy = GAS_PER_MARKET * max(1, markets)
        return [
            Call(
                self.clearing_house,
                "getAccountValue(address)",
                (trader,),
                ("int256",),
                GAS_ACCOUNT_VALUE + heavy,
            ),
            Call(
                self.account_balance,
                "getMarginRequirementForLiquidation(address)",
                (trader,),
                ("int256",),
                GAS_REQUIREMENT + heavy,
            ),
            Call(self.account_balance, "hasOrder(address)", (trader,), ("bool",), GAS_SMALL),
            Call(self.account_balance, "getBaseTokens(address)", (trader,), ("address[]",), GAS_SMALL),
            Call(self.vault, "isLiquidatable(address)", (trader,), ("bool",), GAS_SMALL + heavy),
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
        ab = self.account_balance
        calls = []
        for base in shape.bases:
            calls += [
                Call(ab, "getTakerPositionSize(address,address)", (trader, base), ("int256",), GAS_SMALL),
                Call(ab, "getTotalPositionSize(address,address)", (trader, base), ("int256",), GAS_SMALL),
            ]
        if shape.maker:
            calls += [
                Call(
                    self.order_book,
                    "getOpenOrderIds(address,address)",
                    (trader, base),
                    ("bytes32[]",),
                    GAS_SMALL,
                )
                for base in shape.bases
            ]
            calls.append(
                Call(
                    self.vault,
                    "getFreeCollateralByRatio(address,uint24)",
                    (trader, mm_ratio),
                    ("int256",),
                    GAS_SETTLEMENT_VALUE + GAS_PER_MARKET * len(shape.bases),
                )
            )
        if shape.tokens:
            calls += [
                Call(
                    self.vault,
                    "getSettlementTokenValue(address)",
                    (trader,),
                    ("int256",),
                    GAS_SETTLEMENT_VALUE + GAS_PER_MARKET * len(shape.bases),
                ),
                Call(
                    self.collateral_manager,
                    "getDebtThresholdByTrader(address)",
                    (trader,),
                    ("uint256",),
                    GAS_SMALL,
                ),
            ]
            calls += [
                Call(self.vault, "getBalanceByToken(address,address)", (trader, t), ("int256",), GAS_SMALL)
                for t in shape.tokens
            ]
        return calls

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
