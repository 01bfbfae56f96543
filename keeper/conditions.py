"""Alert conditions: small pure functions over a snapshot of what the keeper knows (`Facts`), and the
settings they read. A condition returns its findings, each keyed by the condition and its instance
("rpc-down:https://host"); `keeper/alerts.py` sends one alert per key until it clears.

Adding a condition: one function `(Facts, AlertSettings) -> list[Finding]`, added to `CONDITIONS` (and
its key's first part to `FAMILIES`, the metric's label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from keeper import config
from keeper.errors import SettingError
from keeper.notify import LEVELS, targets

X18 = 10**18


@dataclass(frozen=True)
class AlertSettings:
    webhooks: str = ""  # secret: never logged
    min_level: str = "info"
    min_eth_wei: int = 10**16
    stall_blocks: int = 10
    stuck_blocks: int = 20
    lag_blocks: int = 3
    event_window: float = 900.0
    summary_seconds: float = 86_400.0
    max_per_minute: int = 20
    check_seconds: float = 15.0


def alert_settings(env: Mapping[str, str]) -> AlertSettings:
    eth = env.get("KEEPER_ALERT_MIN_ETH", "0.01")
    try:
        min_eth = Decimal(eth)
    except ArithmeticError:
        min_eth = Decimal(-1)
    if not min_eth.is_finite() or min_eth < 0:
        raise SettingError(f"KEEPER_ALERT_MIN_ETH: must be a non-negative number of ETH, got {eth!r}")
    settings = AlertSettings(
        webhooks=env.get("KEEPER_ALERT_WEBHOOKS", ""),
        min_level=config.choice(env, "KEEPER_ALERT_MIN_LEVEL", "info", LEVELS),
        min_eth_wei=int(min_eth * X18),
        stall_blocks=config.integer(env, "KEEPER_ALERT_STALL_BLOCKS", 10, low=1) or 10,
        stuck_blocks=config.integer(env, "KEEPER_ALERT_STUCK_BLOCKS", 20, low=1) or 20,
        lag_blocks=config.integer(env, "KEEPER_ALERT_LAG_BLOCKS", 3, low=1) or 3,
        event_window=float(config.integer(env, "KEEPER_ALERT_EVENT_WINDOW_SECONDS", 900, low=1) or 900),
        summary_seconds=float(config.integer(env, "KEEPER_ALERT_SUMMARY_SECONDS", 86_400) or 0),
        max_per_minute=config.integer(env, "KEEPER_ALERT_MAX_PER_MINUTE", 20, low=1) or 20,
        check_seconds=float(config.integer(env, "KEEPER_ALERT_CHECK_SECONDS", 15, low=1) or 15),
    )
    targets(settings.webhooks)  # malformed URLs are a start-up error (exit 2), named by place only
    return settings


@dataclass(frozen=True)
class Finding:
    key: str
    level: str
    text: str


@dataclass(frozen=True)
class EndpointState:
    name: str  # redacted
    healthy: bool
    lag: int
    last_error: str = ""


@dataclass
class Stuck:
    account: str
    since_block: int
    reason: str


@dataclass
class Facts:
    """What the conditions read: a snapshot of the keeper's state (no I/O)."""

    now: float = 0.0  # monotonic seconds
    block_interval: float = 2.0
    last_tick_at: float | None = None  # monotonic
    head: int | None = None
    eth_wei: int | None = None
    capital: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (largest needed, held)
    endpoints: list[EndpointState] = field(default_factory=list)
    reverts: list[tuple[float, str]] = field(default_factory=list)  # (when, what)
    ceilings: list[tuple[float, str]] = field(default_factory=list)
    lost: list[tuple[float, str]] = field(default_factory=list)
    bad_debt: dict[str, int] = field(default_factory=dict)  # account -> amount (X18 USD)
    stuck: dict[str, Stuck] = field(default_factory=dict)  # opportunity key -> since when, why
    funds: list[tuple[float, str]] = field(default_factory=list)  # funds moves that landed (when, what)
    funds_refused: dict[str, str] = field(default_factory=dict)  # funds action -> why it may not move
    lease_lost: str | None = None  # this replica held the signer lease and no longer does (why)


Condition = Callable[[Facts, AlertSettings], list[Finding]]


def low_gas(f: Facts, s: AlertSettings) -> list[Finding]:
    if f.eth_wei is None or f.eth_wei >= s.min_eth_wei:
        return []
    text = f"{f.eth_wei / X18:.4f} ETH left for gas (under {s.min_eth_wei / X18:g})"
    return [Finding("low-gas", "critical", text)]


def low_capital(f: Facts, s: AlertSettings) -> list[Finding]:
    return [
        Finding(
            f"low-capital:{name}",
            "warning",
            f"{name}: {held:,} held, the largest recent plan needed {need:,}",
        )
        for name, (need, held) in sorted(f.capital.items())
        if held < need
    ]


def stalled(f: Facts, s: AlertSettings) -> list[Finding]:
    if f.last_tick_at is None:
        return []
    quiet = f.now - f.last_tick_at
    if quiet <= s.stall_blocks * f.block_interval:
        return []
    return [Finding("stalled", "critical", f"no tick for {quiet:.0f} s ({s.stall_blocks} block intervals)")]


def rpc_endpoints(f: Facts, s: AlertSettings) -> list[Finding]:
    found = []
    for ep in f.endpoints:
        if not ep.healthy:
            found.append(Finding(f"rpc-down:{ep.name}", "warning", f"RPC {ep.name} down: {ep.last_error}"))
        elif ep.lag > s.lag_blocks:
            found.append(
                Finding(f"rpc-lagging:{ep.name}", "warning", f"RPC {ep.name} {ep.lag} blocks behind")
            )
    return found


def _recent(events: Sequence[tuple[float, str]], f: Facts, s: AlertSettings) -> list[str]:
    return [what for when, what in events if f.now - when <= s.event_window]


def reverted(f: Facts, s: AlertSettings) -> list[Finding]:
    recent = _recent(f.reverts, f, s)
    if not recent:
        return []
    return [Finding("tx-reverted", "warning", f"{len(recent)} transaction(s) failed; last: {recent[-1]}")]


def fee_ceiling(f: Facts, s: AlertSettings) -> list[Finding]:
    recent = _recent(f.ceilings, f, s)
    if not recent:
        return []
    return [
        Finding(
            "tx-ceiling",
            "warning",
            f"{len(recent)} transaction(s) replaced up to the ceiling; last: {recent[-1]}",
        )
    ]


def lost(f: Facts, s: AlertSettings) -> list[Finding]:
    recent = _recent(f.lost, f, s)
    if not recent:
        return []
    return [
        Finding(
            "lost",
            "info",
            f"{len(recent)} liquidation(s) probably lost to another keeper; last: {recent[-1]}",
        )
    ]


def bad_debt(f: Facts, s: AlertSettings) -> list[Finding]:
    return [
        Finding(f"bad-debt:{account}", "warning", f"bad debt on chain: {account} {amount / X18:,.2f} USD")
        for account, amount in sorted(f.bad_debt.items())
    ]


def stuck(f: Facts, s: AlertSettings) -> list[Finding]:
    if f.head is None:
        return []
    return [
        Finding(
            f"stuck:{key}",
            "warning",
            f"{st.account} liquidatable for {f.head - st.since_block} blocks, not liquidated: {st.reason}",
        )
        for key, st in sorted(f.stuck.items())
        if f.head - st.since_block >= s.stuck_blocks
    ]


def funds_moved(f: Facts, s: AlertSettings) -> list[Finding]:
    """The keeper moved its own money (gas top-up, sUSD conversion, a Vault move): worth knowing."""
    recent = _recent(f.funds, f, s)
    if not recent:
        return []
    return [Finding("funds", "info", f"{len(recent)} funds action(s); last: {recent[-1]}")]


def funds_capped(f: Facts, s: AlertSettings) -> list[Finding]:
    """A funds action the balances call for, refused by its daily cap: a person should look."""
    return [
        Finding(f"funds-capped:{action}", "warning", f"funds: {reason}")
        for action, reason in sorted(f.funds_refused.items())
    ]


def lease_lost(f: Facts, s: AlertSettings) -> list[Finding]:
    """Replicas: this one signed, and another holds the lease now (a failover happened)."""
    return [] if f.lease_lost is None else [Finding("lease", "warning", f.lease_lost)]


FAMILIES = (  # what `perp_keeper_alert_firing{condition}` is labelled with
    "low-gas",
    "low-capital",
    "stalled",
    "rpc-down",
    "rpc-lagging",
    "tx-reverted",
    "tx-ceiling",
    "lost",
    "bad-debt",
    "stuck",
    "funds",
    "funds-capped",
    "lease",
)
CONDITIONS: tuple[Condition, ...] = (
    low_gas,
    low_capital,
    stalled,
    rpc_endpoints,
    reverted,
    fee_ceiling,
    lost,
    bad_debt,
    stuck,
    funds_moved,
    funds_capped,
    lease_lost,
)
