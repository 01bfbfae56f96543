"""Perp v2 account values at a past block, for compensation: what the account would be worth if it
were closed at the oracle (index) price, with its collateral at full oracle value.

value = USDC balance + Σ non-USDC collateral x the collateral feed's latest price (no collateral
ratio haircut) + owed realised PnL + pending maker fees - pending funding + unrealised PnL, the last
valued at each market's index price (`price="index"`) or at the mark price the contracts use
(`"mark"`). The unrealised PnL is the contracts' own (`AccountBalance.getPnlAndPendingFee`, at the
mark), with each market's position value re-priced: Σ size x (price - mark), rounded like
`PerpMath.mulDiv` (toward zero). So at the mark price, and for USDC-only accounts, the value is
`Vault.getAccountValue` before its cut to 6 decimals.
"""

from __future__ import annotations

from collections.abc import Sequence

from keeper.errors import SettingError
from keeper.multicall import Call, Reader
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.views import GAS_PER_MARKET, GAS_SMALL, Views

X18 = 10**18
USDC_TO_X18 = 10**12
PRICES = ("index", "mark")
GAS_PNL = 200_000


Shape = tuple[tuple[str, ...], tuple[str, ...], int, int]  # bases, non-USDC tokens, settled, unrealised


def mul_div(a: int, b: int, denominator: int) -> int:
    """PerpMath.mulDiv for signed values: |a x b| / d rounded down, then the sign (toward zero)."""
    q: int = abs(a * b) // denominator
    return q if a * b >= 0 else -q


def collateral_x18(balance: int, price: int, decimals: int, feed_decimals: int) -> int:
    """Vault._getSettlementByCollateral (token decimals <= 18): balance in 18 dp x price / 10^feed."""
    up: int = 10 ** (18 - decimals)
    down: int = 10**feed_decimals
    return balance * up * price // down


async def values(read: Reader, d: Deployment, accounts: Sequence[str], block: int, price: str) -> list[int]:
    if price not in PRICES:
        raise SettingError(f"--price: expected index or mark, got {price!r}")
    v = Views(d)
    exchange = d.address("Exchange")
    first: list[Call] = []
    for a in accounts:
        first += [
            Call(d.account_balance, "getBaseTokens(address)", (a,), ("address[]",), GAS_SMALL),
            Call(d.vault, "getCollateralTokens(address)", (a,), ("address[]",), GAS_SMALL),
            Call(
                d.account_balance,
                "getPnlAndPendingFee(address)",
                (a,),
                ("int256", "int256", "uint256"),
                GAS_PNL,
            ),
            Call(exchange, "getAllPendingFundingPayment(address)", (a,), ("int256",), GAS_PNL),
            v.balance_by_token(a, d.usdc),
        ]
    answers = await read(first, block)
    shapes: list[Shape | None] = []
    for i in range(len(accounts)):
        bases, tokens, pnl, funding, usdc = answers[5 * i : 5 * i + 5]
        if not bases.ok:  # not (yet) an account at this block
            shapes.append(None)
            continue
        owed, unrealised, fee = pnl.value
        settled = int(usdc.one()) * USDC_TO_X18 + int(owed) + int(fee) - int(funding.one())
        shapes.append(
            (
                tuple(bases.one()),
                tuple(t for t in tokens.one() if t.lower() != d.usdc.lower()),
                settled,
                int(unrealised),
            )
        )
    return await _priced(read, d, v, accounts, shapes, block, price)


async def _priced(
    read: Reader,
    d: Deployment,
    v: Views,
    accounts: Sequence[str],
    shapes: Sequence[Shape | None],
    block: int,
    price: str,
) -> list[int]:
    """The second read: positions and collateral balances of each account, and every price."""
    bases = sorted({b for s in shapes if s for b in s[0]})
    tokens = sorted({t for s in shapes if s for t in s[1]})
    calls = [v.mark_price(b) for b in bases] + [v.index_price(b) for b in bases]
    for t in tokens:
        calls += [
            Call(
                d.address("CollateralManager"),
                "getPrice(address,uint256)",
                (t, 0),
                ("uint256",),
                GAS_PER_MARKET,
            ),
            Call(
                d.address("CollateralManager"), "getPriceFeedDecimals(address)", (t,), ("uint8",), GAS_SMALL
            ),
            Call(t, "decimals()", (), ("uint8",), GAS_SMALL),
        ]
    for a, s in zip(accounts, shapes, strict=True):
        if s:
            calls += [v.total_size(a, b) for b in s[0]] + [v.balance_by_token(a, t) for t in s[1]]
    answers = iter(await read(calls, block))
    marks = {b: int(next(answers).one()) for b in bases}
    index = {b: int(next(answers).one()) for b in bases}
    feeds = {
        t: (int(next(answers).one()), int(next(answers).one()), int(next(answers).one())) for t in tokens
    }
    out = []
    for s in shapes:
        if s is None:
            out.append(0)
            continue
        account_bases, account_tokens, settled, unrealised = s
        value = settled + unrealised
        for b in account_bases:
            size = int(next(answers).one())
            if price == "index":
                value += mul_div(size, index[b], X18) - mul_div(size, marks[b], X18)
        for t in account_tokens:
            feed_price, feed_decimals, decimals = feeds[t]
            value += collateral_x18(int(next(answers).one()), feed_price, decimals, feed_decimals)
        out.append(value)
    return out
