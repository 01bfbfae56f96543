"""Funds that look after themselves: the generic part (settings, caps, the day's budget, the band, the
swap every action goes through). Each action is OFF until its setting is given.

A funds action is a plan like any other (stage `funds`): ranked after the liquidations, proven at the
head, journaled before broadcast, recorded in the audit trail; dry-run simulates and records it. Every
action is cut to its per-action cap and to what is left of its daily cap. The day's spend is read
back from the journal (the spending step's label carries the action, the amount and the UTC day of
the head), so a restart does not reset it: a step counts while pending or once mined, not when it
reverted or was dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from keeper.codec import encode_call
from keeper.errors import SettingError
from keeper.quotes import QuoteSource
from keeper.routers import QuoteRejectedError
from keeper.rpc import Rpc
from keeper.strategy import Plan, Step
from keeper.swaps import SwapGuard, best_quote

FUNDS = "funds"  # a plan's stage: moves the keeper's own money, earns nothing
GAS_TOPUP, SUSD_CONVERT = "gas-topup", "susd-convert"
VAULT_DEPOSIT, VAULT_WITHDRAW = "vault-deposit", "vault-withdraw"
VAULT = (VAULT_DEPOSIT, VAULT_WITHDRAW)  # one daily budget for both directions
DAY_SECONDS = 86_400
USDC_DECIMALS, ETH_DECIMALS, SUSD_DECIMALS = 6, 18, 18
APPROVE = "approve(address,uint256)"
ALLOWANCE = "allowance(address,address)"
GAS_APPROVE = 60_000
COUNTED = ("pending", "mined")  # journal statuses whose transfer happened or may still happen
_LABEL = re.compile(r"^funds (?P<action>[a-z-]+) (?P<amount>\d+) on day (?P<day>\d+)$")


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caps:
    """What one action may move, and all of that action's moves in one UTC day (token units)."""

    per_action: int
    per_day: int


@dataclass(frozen=True)
class GasTopup:
    floor_wei: int  # below it, buy ETH ...
    target_wei: int  # ... up to about this
    caps: Caps  # USDC units sold


@dataclass(frozen=True)
class SusdConvert:
    above: int  # sUSD units held before any is converted
    caps: Caps  # sUSD units sold


@dataclass(frozen=True)
class VaultTarget:
    target: int  # USDC units kept in the Perp Vault
    band: int  # no move while the Vault holds target ± band
    caps: Caps  # USDC units moved, deposits and withdrawals together


@dataclass(frozen=True)
class FundsSettings:
    gas: GasTopup | None = None
    susd: SusdConvert | None = None
    vault: VaultTarget | None = None


def amount(env: Mapping[str, str], name: str, decimals: int, default: str | None = None) -> int | None:
    """A non-negative decimal setting in token units (`decimals`); None when not set."""
    text = env.get(name, default)
    if text is None or text.strip() == "":
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise SettingError(f"{name}: not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise SettingError(f"{name}: must be a non-negative number, got {text!r}")
    return int(value * 10**decimals)


def _caps(env: Mapping[str, str], prefix: str, unit: str, decimals: int, defaults: tuple[str, str]) -> Caps:
    per_action = amount(env, f"{prefix}_MAX_{unit}", decimals, defaults[0])
    per_day = amount(env, f"{prefix}_DAILY_MAX_{unit}", decimals, defaults[1])
    assert per_action is not None
    assert per_day is not None
    return Caps(per_action, per_day)


def funds_settings(env: Mapping[str, str]) -> FundsSettings:
    """KEEPER_GAS_TOPUP_*, KEEPER_SUSD_CONVERT_*, KEEPER_VAULT_*: each action on when its first
    setting (floor, threshold, target) is given."""
    gas = susd = vault = None
    floor = amount(env, "KEEPER_GAS_TOPUP_FLOOR_ETH", ETH_DECIMALS)
    if floor is not None:
        target = amount(env, "KEEPER_GAS_TOPUP_TARGET_ETH", ETH_DECIMALS)
        if target is None or target <= floor:
            raise SettingError("KEEPER_GAS_TOPUP_TARGET_ETH: must be set above KEEPER_GAS_TOPUP_FLOOR_ETH")
        gas = GasTopup(floor, target, _caps(env, "KEEPER_GAS_TOPUP", "USDC", USDC_DECIMALS, ("100", "500")))
    above = amount(env, "KEEPER_SUSD_CONVERT_ABOVE", SUSD_DECIMALS)
    if above is not None:
        caps = _caps(env, "KEEPER_SUSD_CONVERT", "SUSD", SUSD_DECIMALS, ("10000", "50000"))
        susd = SusdConvert(above, caps)
    goal = amount(env, "KEEPER_VAULT_TARGET_USDC", USDC_DECIMALS)
    if goal is not None:
        band = amount(env, "KEEPER_VAULT_BAND_USDC", USDC_DECIMALS, str(Decimal(goal) / 10**7))
        assert band is not None  # default: 10 % of the target
        caps = _caps(env, "KEEPER_VAULT_MOVE", "USDC", USDC_DECIMALS, ("10000", "50000"))
        vault = VaultTarget(goal, band, caps)
    return FundsSettings(gas, susd, vault)


# --- pure decisions ----------------------------------------------------------------------------------


def gas_shortfall(balance: int, floor: int, target: int) -> int:
    """Wei to buy: up to the target once the balance is under the floor, else nothing."""
    return target - balance if balance < floor else 0


def vault_move(held: int, target: int, band: int) -> int:
    """USDC to deposit (> 0) or withdraw (< 0) to bring the Vault back to its target; 0 in the band."""
    if held < target - band:
        return target - held
    if held > target + band:
        return target - held
    return 0


def allowed(want: int, caps: Caps, spent_today: int) -> tuple[int, str]:
    """How much of `want` may move now: cut to the per-action cap, then to what is left of the day's;
    0 with the reason once the day's is used. The second part is a note on any cut."""
    left = caps.per_day - spent_today
    if left <= 0:
        return 0, f"daily cap reached: {spent_today:,} of {caps.per_day:,} moved today"
    if want <= min(caps.per_action, left):
        return want, ""
    if caps.per_action <= left:
        return caps.per_action, f"cut from {want:,} to the per-action cap {caps.per_action:,}"
    return left, f"cut from {want:,} to what is left of the daily cap ({left:,} of {caps.per_day:,})"


def day_of(timestamp: int) -> int:
    return timestamp // DAY_SECONDS


def spend_label(action: str, moved: int, day: int) -> str:
    """The spending step's label: the journal keeps it, and the day's spend is read back from it."""
    return f"funds {action} {moved} on day {day}"


def parse_label(label: str) -> tuple[str, int, int] | None:
    """(action, amount, day) of a spending step's label; None for any other step."""
    match = _LABEL.match(label)
    if match is None:
        return None
    return match["action"], int(match["amount"]), int(match["day"])


def spent(rows: Iterable[Mapping[str, Any]], actions: Sequence[str], day: int) -> int:
    """What `actions` moved on `day`, from journal rows: one amount per (sender, nonce), counted while
    pending or once mined (a replacement is the same transfer; a revert moved nothing)."""
    moved: dict[tuple[str, int], int] = {}
    for row in rows:
        parsed = parse_label(str(row.get("label", "")))
        if row.get("status") in COUNTED and parsed is not None:
            action, value, when = parsed
            if action in actions and when == day:
                moved[(str(row["sender"]), int(row["nonce"]))] = value
    return sum(moved.values())


class Ledger:
    """The day's spend of each action, read from the journal's rows for the keeper."""

    def __init__(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.rows = rows

    def spent(self, actions: Sequence[str], day: int) -> int:
        return spent(self.rows(), actions, day)


# --- what a funds strategy offers the engine ------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """A funds action the keeper's balances call for (an `Opportunity` to the engine)."""

    account: str  # the keeper
    kind: str  # the action
    amount: int  # what it would move before the caps, token units
    notional: int  # its value, USD x1e18 (for the record)
    market: str | None = None
    liquidatable: bool = True

    @property
    def key(self) -> str:
        return f"funds:{self.kind}:{self.account}"

    @property
    def exclusive(self) -> str:
        """Deposits and withdrawals share one: one Vault move in flight at a time."""
        return "funds:vault" if self.kind in VAULT else f"funds:{self.kind}"


FundsPlan = Plan[Need]


def new_plan(need: Need, day: int, **detail: Any) -> FundsPlan:
    return Plan(need, [], False, "", FUNDS, detail={"action": need.kind, "day": day, **detail})


def capped(plan: FundsPlan, want: int, caps: Caps, spent_today: int) -> int:
    """The amount the caps allow (recorded in the plan; 0 and a skipped plan when none)."""
    moved, note = allowed(want, caps, spent_today)
    plan.detail.update(wanted=want, spent_today=spent_today, caps=[caps.per_action, caps.per_day])
    plan.detail.update(amount=moved, cap_note=note)
    if moved == 0:
        plan.skip(f"{plan.opportunity.kind}: {note}")
    return moved


async def allowance(rpc: Rpc, token: str, owner: str, spender: str) -> int:
    answer = await rpc.call(token, encode_call(ALLOWANCE, owner, spender))
    return int.from_bytes(answer[:32], "big")


async def approve_step(rpc: Rpc, token: str, owner: str, spender: str, exact: int) -> list[Step]:
    """An approval for exactly `exact`, unless that is what is approved already."""
    if await allowance(rpc, token, owner, spender) == exact:
        return []
    return [Step(f"approve {spender}", token, encode_call(APPROVE, spender, exact), GAS_APPROVE)]


async def swap(
    plan: FundsPlan,
    rpc: Rpc,
    sources: Sequence[QuoteSource],
    sell: tuple[str, int],
    buy: str,
    keeper: str,
    slippage_bps: int,
    label: str,
) -> int:
    """The safe swap path of collateral sales (`keeper/swaps.py`): vetted quotes, best first, each sale
    (exact approval, swap) simulated from the keeper with its balance changes checked. On success the
    plan's steps are the sale (the swap labelled `label`) and its minimum out is returned; else 0 and
    the refusals are in the plan's detail."""
    guard, (token, sold) = SwapGuard(rpc, sources), sell
    choice = await best_quote(sources, token, buy, sold, keeper, slippage_bps, 0, guard.vet)
    rejected = [{"source": s, "reason": r} for s, r in choice.rejected]
    plan.detail.update(quotes=[{"source": q.source, "buy_amount": q.buy_amount} for q in choice.quotes])
    plan.detail.update(quote_errors=list(choice.errors), quotes_rejected=rejected)
    for quote in choice.ranked:
        min_out = quote.min_out(slippage_bps)
        steps = await approve_step(rpc, token, keeper, quote.spender, sold)
        steps.append(Step(label, quote.to, quote.data, quote.gas))
        try:
            effects = await guard.simulate(keeper, quote, [(s.to, s.data) for s in steps], min_out)
        except QuoteRejectedError as exc:
            rejected.append({"source": quote.source, "reason": str(exc)})
            continue
        plan.steps = steps
        plan.detail.update(source=quote.source, min_out=min_out, simulated_received=effects.received)
        return min_out
    problems = [*choice.errors, *(r["reason"] for r in rejected)]
    plan.skip(f"{plan.opportunity.kind}: no usable quote ({'; '.join(problems) or 'none given'})")
    return 0
