"""Alerts that reach a person: conditions over what the keeper already knows, each one alert until it
clears, then one "resolved".

`Watch` collects the facts as the keeper runs (engine hooks for plans and transaction outcomes, tick
results, the RPC client's endpoint records, balances read by a side job); every few seconds
`Alerter.evaluate` runs each condition, a small pure function `(Facts, AlertSettings) -> [Finding]`,
and compares what it finds with what is already firing. Adding a condition is one function added to
`CONDITIONS`. Delivery is `keeper/notify.py`'s, in the background: no tick waits on a webhook.

Events (a transaction reverted or replaced up to the ceiling, a liquidation lost to another keeper)
are conditions too: active while one happened within `event_window` seconds, so a burst is one alert
and a quiet window resolves it. A liquidation counts as lost when a liquidation step reverts (or its
simulation fails) with a reason the strategy explains as "not liquidatable": the account was
liquidatable when planned at the head, and only a liquidation of it by someone else in between makes
it solvent that fast (a price move back is the other, rarer cause; the alert says "probably").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from keeper.conditions import CONDITIONS, AlertSettings, Condition, EndpointState, Facts, Finding, Stuck
from keeper.endpoints import Endpoint
from keeper.flights import Result
from keeper.funds import FUNDS, parse_label
from keeper.notify import LEVELS, Alert, Notifier, targets
from keeper.receipts import TxOutcome
from keeper.strategy import LIQUIDATE, Plan

X18 = 10**18
log = logging.getLogger(__name__)


class Alerter:
    """Firing conditions, deduplicated (one alert until it clears, then one "resolved"), rate-limited."""

    def __init__(
        self,
        settings: AlertSettings,
        notifier: Notifier,
        conditions: Sequence[Condition] = CONDITIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.notifier, self.conditions, self.clock = settings, notifier, conditions, clock
        self.firing: dict[str, Finding] = {}
        self.sent_at: list[float] = []  # within the last minute
        self.suppressed = 0

    def evaluate(self, facts: Facts) -> list[Alert]:
        found = {x.key: x for c in self.conditions for x in c(facts, self.settings)}
        alerts = [Alert(k, x.level, x.text) for k, x in found.items() if k not in self.firing]
        alerts += [Alert(k, x.level, x.text, resolved=True) for k, x in self.firing.items() if k not in found]
        self.firing = found
        return [a for a in alerts if self.emit(a)]

    def emit(self, alert: Alert) -> bool:
        """Send one alert if its level passes the filter and the per-minute budget allows."""
        if LEVELS.index(alert.level) < LEVELS.index(self.settings.min_level):
            return False
        now = self.clock()
        self.sent_at = [t for t in self.sent_at if now - t < 60]
        if len(self.sent_at) >= self.settings.max_per_minute:
            self.suppressed += 1
            return False
        self.sent_at.append(now)
        return self.notifier.send(alert)


class Watch:
    """The facts, fed as the keeper runs: engine hooks, tick results, balances, endpoint records."""

    def __init__(self, block_interval: float, max_replacements: int = 3) -> None:
        self.facts = Facts(block_interval=block_interval)
        self.max_replacements = max_replacements
        self.totals = {"liquidations": 0, "reward": 0, "gas_wei": 0, "profit": 0}

    def planned(self, plan: Plan[Any]) -> None:
        """Engine hook: the largest capital a recent plan needed, and what the keeper held then."""
        if plan.stage == FUNDS:
            self._funds_planned(plan)
        if plan.bad_debt:
            self.facts.bad_debt[plan.opportunity.account] = plan.bad_debt
        if plan.capital is not None:
            name, need, held = plan.capital
            largest, _ = self.facts.capital.get(name, (0, 0))
            self.facts.capital[name] = (max(largest, need), held)

    def landed(self, plan: Plan[Any], label: str, outcome: TxOutcome, reason: str) -> None:
        """Engine hook: one transaction's outcome (`reason` already explained by the strategy)."""
        now, what = time.monotonic(), f"{label} for {plan.opportunity.account}: {reason or outcome.status}"
        if outcome.status in ("reverted", "simulation-failed", "dropped", "not-mined", "send-failed"):
            self.facts.reverts.append((now, what))
            if plan.stage == LIQUIDATE and "not liquidatable" in reason:
                self.facts.lost.append((now, f"{plan.opportunity.account} ({reason})"))
        if outcome.replacements >= self.max_replacements:
            self.facts.ceilings.append((now, what))
        if plan.stage == FUNDS and outcome.ok and parse_label(label) is not None:
            self.facts.funds.append((now, f"{label}: {outcome.status}"))
        self.totals["gas_wei"] += outcome.fee_wei

    def _funds_planned(self, plan: Plan[Any]) -> None:
        """A funds action refused by its daily cap fires until one of it is planned again."""
        action = plan.opportunity.kind
        if not plan.execute and "daily cap reached" in plan.reason:
            self.facts.funds_refused[action] = plan.reason
        else:
            self.facts.funds_refused.pop(action, None)

    def ticked(self, head: int, results: Sequence[Result]) -> None:
        """After each tick: what is liquidatable and not being liquidated, since when and why."""
        self.facts.head, self.facts.last_tick_at = head, time.monotonic()
        seen = set()
        planned = {r.kind for r in results if r.key.startswith("funds:")}
        self.facts.funds_refused = {k: v for k, v in self.facts.funds_refused.items() if k in planned}
        for r in results:
            if r.status == "executed" and not r.key.startswith("funds:"):
                self.totals["liquidations"] += 1
                self.totals["reward"] += r.reward
                self.totals["profit"] += r.profit
            if r.status in ("skipped", "failed") and not r.key.startswith("funds:"):
                seen.add(r.key)
                st = self.facts.stuck.setdefault(r.key, Stuck(r.account, head, r.reason))
                st.reason = reason_class(r.reason)
        self.facts.stuck = {k: v for k, v in self.facts.stuck.items() if k in seen}
        accounts = {r.account for r in results}  # bad debt stays reported while its account is planned
        self.facts.bad_debt = {a: v for a, v in self.facts.bad_debt.items() if a in accounts}

    def prune(self, window: float) -> None:
        now = time.monotonic()
        for events in (self.facts.reverts, self.facts.ceilings, self.facts.lost, self.facts.funds):
            events[:] = [e for e in events if now - e[0] <= window]


def reason_class(reason: str) -> str:
    """Why a liquidatable account is not being liquidated, in one word first, then the engine's words."""
    text = reason.lower()
    if "cooling down" in text:
        kind = "cooling down"
    elif any(w in text for w in ("capital", "free collateral", "usdc", "needed", "left after")):
        kind = "no capital"
    elif any(w in text for w in ("profit", "unprofitable", "gas")):
        kind = "unprofitable"
    else:
        kind = "other"
    return f"{kind} ({reason[:160]})" if reason else kind


def summary(totals: Mapping[str, int], hours: float) -> Alert:
    text = (
        f"summary of the last {hours:g} h: {totals['liquidations']} liquidation(s), reward "
        f"{totals['reward'] / X18:,.2f} USD, gas {totals['gas_wei'] / X18:.6f} ETH, est. profit "
        f"{totals['profit'] / X18:,.2f} USD"
    )
    return Alert("summary", "info", text)


class Service:
    """The alert side job: read the balance and the endpoints, evaluate, send the daily summary."""

    def __init__(
        self,
        alerter: Alerter,
        watch: Watch,
        eth_balance: Callable[[], Awaitable[int]],
        endpoints: Callable[[], list[EndpointState]],
    ) -> None:
        self.alerter, self.watch = alerter, watch
        self.eth_balance, self.endpoints = eth_balance, endpoints
        self.summary_due = time.monotonic() + alerter.settings.summary_seconds
        self.exported: Callable[[Facts, set[str]], None] | None = None  # metrics, after each check
        self.lease_state: Callable[[], str | None] | None = None  # replicas: why the lease was lost

    async def check(self) -> list[Alert]:
        facts, settings = self.watch.facts, self.alerter.settings
        try:
            facts.eth_wei = await self.eth_balance()
        except Exception as exc:  # the RPC's own alerts cover it; the other conditions still run
            log.warning("alerts: reading the ETH balance failed: %s", type(exc).__name__)
        facts.endpoints, facts.now = self.endpoints(), time.monotonic()
        if self.lease_state is not None:
            facts.lease_lost = self.lease_state()
        self.watch.prune(settings.event_window)
        sent = self.alerter.evaluate(facts)
        if settings.summary_seconds and facts.now >= self.summary_due:
            self.summary_due = facts.now + settings.summary_seconds
            report = summary(self.watch.totals, settings.summary_seconds / 3600)
            self.watch.totals = dict.fromkeys(self.watch.totals, 0)
            if self.alerter.emit(report):
                sent.append(report)
        if self.exported is not None:
            self.exported(facts, self.families())
        return sent

    async def run(self) -> None:
        """Evaluate every `check_seconds` until cancelled; a failed round is logged, never raised."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("alerts: a check failed")
            await asyncio.sleep(self.alerter.settings.check_seconds)

    def families(self) -> set[str]:
        """The conditions firing now, without their instance ("rpc-down", not "rpc-down:host")."""
        return {key.split(":", 1)[0] for key in self.alerter.firing}


class Node(Protocol):
    """What the alerts read of the RPC client (`keeper.rpc.Rpc` is one)."""

    @property
    def endpoints(self) -> Sequence[Endpoint]: ...

    def is_healthy(self, ep: Endpoint) -> bool: ...

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any: ...


def build(
    settings: AlertSettings,
    keeper: str,
    rpc: Node,
    block_interval: float,
    max_replacements: int = 3,
    count: Callable[[str], None] | None = None,
) -> Service:
    """The alert service of a run: notifier, alerter, the watch fed by the engine's hooks."""
    notifier = Notifier(targets(settings.webhooks), keeper, count=count)

    async def eth_balance() -> int:
        return int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)

    def endpoints() -> list[EndpointState]:
        return [EndpointState(e.name, rpc.is_healthy(e), e.lag, e.last_error[:120]) for e in rpc.endpoints]

    watch = Watch(block_interval, max_replacements)
    return Service(Alerter(settings, notifier), watch, eth_balance, endpoints)
