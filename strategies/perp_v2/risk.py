"""Pure Perp v2 risk math over exact contract reads: opportunities, ranking, and the re-read tiers.

Money is `int`: USD values in 18-decimal fixed point (`X18`, as the ClearingHouse reports them), USDC
amounts in 6 decimals, ratios in Perp's 1e6 (`uint24`) units, prices in their feed's decimals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

X18 = 10**18
RATIO = 10**6  # Perp's uint24 ratios: 62_500 = 6.25 %
USDC_TO_X18 = 10**12

TAKER, MAKER, COLLATERAL = "taker", "maker", "collateral"
CLOSE, SELL = "close", "sell"  # the keeper's own inventory: a taken-over position, seized collateral
KIND_ORDER = {TAKER: 0, MAKER: 0, COLLATERAL: 1}  # positions first: they change what collateral owes

# How close to a liquidation condition an account must be, after the worst price move since its last
# exact read, to be read again on this block: 5/4 of the linear worst case (a taker's PnL and
# requirement are exactly linear in the mark, so this is margin for rounding, not for a model error),
# plus a drift allowance (funding, fees) of DRIFT_BPS of its exposure plus DRIFT_FLOOR_X18.
LOSS_SAFETY_NUM, LOSS_SAFETY_DEN = 5, 4
DRIFT_BPS = 10
DRIFT_FLOOR_X18 = X18  # 1 USD
NEVER = 2**255  # a tolerance for accounts with nothing exposed to prices


@dataclass(frozen=True)
class CollateralConfig:
    token: str
    decimals: int
    price_decimals: int
    collateral_ratio: int
    discount_ratio: int


@dataclass(frozen=True)
class Params:
    """Protocol parameters, read once per change (the config contracts log every change)."""

    mm_ratio: int
    im_ratio: int
    liquidation_penalty_ratio: int
    mm_ratio_buffer: int
    debt_non_settlement_ratio: int
    liquidation_ratio: int
    collaterals: Mapping[str, CollateralConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class Position:
    base_token: str
    taker_size: int  # 18 dp, signed
    total_size: int  # taker + a maker's impermanent position


@dataclass(frozen=True)
class Account:
    """One account as the contracts see it at `block`."""

    address: str
    block: int
    account_value: int  # ClearingHouse.getAccountValue, X18
    margin_requirement: int  # AccountBalance.getMarginRequirementForLiquidation, X18
    has_order: bool
    positions: tuple[Position, ...]
    vault_liquidatable: bool
    collateral_tokens: tuple[str, ...]
    order_markets: tuple[str, ...] = ()  # base tokens with open orders (makers)
    free_collateral_by_mm: int | None = None  # Vault.getFreeCollateralByRatio(mmRatio), USDC 6 dp
    settlement_value: int | None = None  # Vault.getSettlementTokenValue, USDC 6 dp
    collateral_balances: tuple[tuple[str, int], ...] = ()  # non-settlement tokens, token units
    debt_threshold: int | None = None  # CollateralManager.getDebtThresholdByTrader, USDC 6 dp

    @property
    def liquidatable(self) -> bool:
        """ClearingHouse._isLiquidatable, exactly: account value below the maintenance requirement."""
        return self.account_value < self.margin_requirement

    @property
    def cancellable(self) -> bool:
        """cancelAllExcessOrders is allowed: free collateral by mmRatio < 0, or liquidatable (CH_NEXO)."""
        return self.has_order and (
            self.liquidatable or (self.free_collateral_by_mm is not None and self.free_collateral_by_mm < 0)
        )


@dataclass(frozen=True)
class Snapshot:
    block: int
    timestamp: int
    marks: Mapping[str, int]  # base token -> mark price X18
    collateral_prices: Mapping[str, int]  # token -> CollateralManager.getPrice(token, 900), feed decimals
    accounts: Mapping[str, Account]


@dataclass(frozen=True)
class Opportunity:
    account: str
    kind: str
    base_token: str | None
    collateral_token: str | None
    size: int  # taker: position to liquidate (18 dp); maker: position left after cancels; collateral: balance
    notional: int  # X18 USD: |size| x mark, or the collateral's value at the Vault's price
    account_value: int  # X18
    margin_requirement: int  # X18
    liquidatable: bool
    cancel_markets: tuple[str, ...] = ()  # makers: every market whose orders must be cancelled first

    @property
    def market(self) -> str | None:
        """The market (base token) of a position, or the collateral token of a collateral liquidation."""
        return self.base_token or self.collateral_token

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.account.lower()}:{(self.market or '').lower()}"

    @property
    def exclusive(self) -> str:
        """A liquidation holds its account; the keeper's inventory, one market or token at a time."""
        return self.key if self.kind in (CLOSE, SELL) else self.account.lower()

    def sort_key(self) -> tuple[int, int, int, str, str]:
        return (
            0 if self.liquidatable else 1,
            KIND_ORDER[self.kind],
            -self.notional,
            self.account.lower(),
            (self.base_token or self.collateral_token or "").lower(),
        )


def notional(size: int, mark_price: int) -> int:
    return abs(size) * mark_price // X18


def collateral_value(balance: int, price: int, config: CollateralConfig) -> int:
    """Value in X18 USD of `balance` token units at a `price` with the feed's decimals."""
    scale: int = 10 ** (config.decimals + config.price_decimals)
    return balance * price * X18 // scale


def opportunities(snapshot: Snapshot, params: Params) -> list[Opportunity]:
    """Every liquidation the snapshot allows, in execution order (see `rank`)."""
    found: list[Opportunity] = []
    for account in snapshot.accounts.values():
        found += account_opportunities(account, snapshot, params)
    return rank(found)


def account_opportunities(account: Account, snapshot: Snapshot, params: Params) -> list[Opportunity]:
    def make(
        kind: str, size: int, value: int, base: str | None = None, token: str | None = None
    ) -> Opportunity:
        return Opportunity(
            account=account.address,
            kind=kind,
            base_token=base,
            collateral_token=token,
            size=size,
            notional=value,
            account_value=account.account_value,
            margin_requirement=account.margin_requirement,
            liquidatable=account.liquidatable if kind == MAKER else True,
            cancel_markets=account.order_markets if kind == MAKER else (),
        )

    found: list[Opportunity] = []
    if account.liquidatable and not account.has_order:
        found += [
            make(TAKER, p.taker_size, notional(p.taker_size, snapshot.marks[p.base_token]), base=p.base_token)
            for p in account.positions
            if p.taker_size
        ]
    elif account.cancellable:
        # cancelling every order turns the whole position (taker + impermanent) into a taker position
        found += [
            make(MAKER, p.total_size, notional(p.total_size, snapshot.marks[p.base_token]), base=p.base_token)
            for p in account.positions
            if p.total_size
        ]
    if account.vault_liquidatable:
        for token, balance in account.collateral_balances:
            config = params.collaterals.get(token)
            price = snapshot.collateral_prices.get(token)
            if balance > 0 and config is not None and price is not None:
                found.append(make(COLLATERAL, balance, collateral_value(balance, price, config), token=token))
    return found


def rank(found: Iterable[Opportunity]) -> list[Opportunity]:
    """Execution order: liquidatable positions largest notional first, then collateral largest first,
    then makers whose orders can be cancelled before they are liquidatable; ties by address."""
    return sorted(found, key=Opportunity.sort_key)


def margin_ratio(account: Account, params: Params) -> int | None:
    """Account value over total absolute position value, in 1e6 units (None without positions)."""
    if account.margin_requirement <= 0:
        return None
    position_value = account.margin_requirement * RATIO // params.mm_ratio
    return account.account_value * RATIO // position_value if position_value else None


# --- tiering ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far prices may move (relative, X18) from those at `block` before the account must be read.

    `prices` are the reference prices the account was read at, for the markets and collateral tokens
    it is exposed to. `always` accounts (makers, already liquidatable, or within the drift allowance)
    are read on every block.
    """

    block: int
    relative_move: int  # X18: 0.05 * X18 = 5 %
    prices: tuple[tuple[str, int], ...]
    always: bool = False


def _exposures(
    account: Account, snapshot: Snapshot, params: Params
) -> tuple[int, int, list[tuple[str, int]]]:
    """(position notional, collateral value, the prices they were valued at), X18 USD."""
    refs: list[tuple[str, int]] = []
    position_exposure = 0
    for p in account.positions:
        mark = snapshot.marks.get(p.base_token, 0)
        position_exposure += notional(p.total_size, mark)
        refs.append((p.base_token, mark))
    collateral_exposure = 0
    for token, balance in account.collateral_balances:
        config, price = params.collaterals.get(token), snapshot.collateral_prices.get(token)
        if config is not None and price is not None:
            collateral_exposure += collateral_value(balance, price, config)
            refs.append((token, price))
    return position_exposure, collateral_exposure, refs


def tolerance(account: Account, snapshot: Snapshot, params: Params) -> Tolerance:
    """The largest relative move of any of its prices that cannot make `account` liquidatable.

    For each condition, cushion - drift >= 5/4 x the worst-case loss, with the loss linear in the
    move: taker PnL is |size| x dmark exactly, the requirement grows by its ratio of that, collateral
    loses at most its full value x dprice. Makers are always read: their impermanent position is not
    linear in price.
    """
    position_exposure, collateral_exposure, refs = _exposures(account, snapshot, params)
    prices = tuple(refs)
    if account.has_order or account.liquidatable or account.vault_liquidatable:
        return Tolerance(account.block, 0, prices, always=True)

    drift = DRIFT_FLOOR_X18 + (position_exposure + collateral_exposure) * DRIFT_BPS // 10_000
    collateral_mm = params.mm_ratio + params.mm_ratio_buffer
    # (cushion, loss per unit of relative move) for every condition that applies
    conditions = [
        (
            account.account_value - account.margin_requirement,
            position_exposure * (RATIO + params.mm_ratio) // RATIO + collateral_exposure,
        )
    ]
    if account.collateral_tokens and collateral_exposure:
        debt = max(0, -(account.settlement_value or 0)) * USDC_TO_X18
        weighted = sum(
            collateral_value(balance, snapshot.collateral_prices[token], params.collaterals[token])
            * params.collaterals[token].collateral_ratio
            // RATIO
            for token, balance in account.collateral_balances
            if token in params.collaterals and token in snapshot.collateral_prices
        )
        conditions += [
            (  # (a) account value vs Σ|position value| x (mmRatio + buffer)
                account.account_value - account.margin_requirement * collateral_mm // params.mm_ratio,
                position_exposure * (RATIO + collateral_mm) // RATIO + collateral_exposure,
            ),
            (  # (b) USDC debt vs weighted collateral value x debtNonSettlementTokenValueRatio
                weighted * params.debt_non_settlement_ratio // RATIO - debt,
                position_exposure + collateral_exposure,
            ),
        ]
        if account.debt_threshold is not None:  # (c) USDC debt vs the debt threshold
            conditions.append((account.debt_threshold * USDC_TO_X18 - debt, position_exposure))
    move = NEVER
    for cushion, loss_per_move in conditions:
        room = cushion - drift
        if room <= 0:
            return Tolerance(account.block, 0, prices, always=True)
        if loss_per_move > 0:
            move = min(move, room * X18 * LOSS_SAFETY_DEN // (LOSS_SAFETY_NUM * loss_per_move))
    return Tolerance(account.block, move, prices)


def moved(tol: Tolerance, marks: Mapping[str, int], collateral_prices: Mapping[str, int]) -> bool:
    """True when the account must be read again at these prices."""
    if tol.always:
        return True
    for key, reference in tol.prices:
        now = marks.get(key) or collateral_prices.get(key)
        if now is None or reference <= 0:
            return True
        if abs(now - reference) * X18 >= tol.relative_move * reference:
            return True
    return False
