"""Alerts reach a local HTTP receiver: each condition fires once, resolves once and carries no secret;
a webhook that is down (or hangs) never slows a tick; the format follows the URL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from keeper.alerts import Alerter, Service, Watch, build
from keeper.audit import AuditLog
from keeper.conditions import AlertSettings, EndpointState, Facts, Stuck, alert_settings
from keeper.engine import Engine
from keeper.errors import SettingError
from keeper.flights import Result
from keeper.notify import Alert, Notifier, target, targets
from keeper.receipts import TxOutcome, TxRequest
from keeper.strategy import Plan
from strategies.perp_v2.plugin import PerpSession
from tests.test_engine_fast import FakeRpc, FakeSender, FakeStrategy, Op

SECRET = "T0KEN-s3cret-abcdef"


@dataclass
class Receiver:
    """A webhook on 127.0.0.1: records every POST (path and JSON body); `status` is what it answers."""

    status: int = 200
    hang: bool = False
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        if self.hang:
            await asyncio.sleep(3600)
        self.posts.append((request.split()[1].decode(), json.loads(body)))
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/{SECRET}"

    def texts(self) -> list[str]:
        return [body["text"] for _, body in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    yield r
    r.server.close()


async def delivered(notifier: Notifier, count: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while len(notifier.delivered) < count and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


FIRE: dict[str, Callable[[Facts], None]] = {
    "low-gas": lambda f: setattr(f, "eth_wei", 10**15),
    "low-capital:free collateral": lambda f: f.capital.update({"free collateral": (500, 100)}),
    "stalled": lambda f: setattr(f, "last_tick_at", f.now - 100),
    "rpc-down:https://rpc.example": lambda f: f.endpoints.append(
        EndpointState("https://rpc.example", False, 0, "timeout")
    ),
    "rpc-lagging:https://rpc.example": lambda f: f.endpoints.append(
        EndpointState("https://rpc.example", True, 9)
    ),
    "tx-reverted": lambda f: f.reverts.append((f.now, "liquidate for 0xabc: CH_EAV")),
    "tx-ceiling": lambda f: f.ceilings.append((f.now, "liquidate for 0xabc")),
    "lost": lambda f: f.lost.append((f.now, "0xabc (not liquidatable)")),
    "bad-debt:0xabc": lambda f: f.bad_debt.update({"0xabc": 5 * 10**18}),
    "stuck:taker:0xabc": lambda f: f.stuck.update({"taker:0xabc": Stuck("0xabc", 0, "unprofitable (x)")}),
}


def quiet_facts() -> Facts:
    now = time.monotonic()
    return Facts(now=now, block_interval=2.0, last_tick_at=now, head=100, eth_wei=10**18)


@pytest.mark.parametrize("key", sorted(FIRE))
async def test_each_condition_fires_once_resolves_once_and_carries_no_secret(
    receiver: Receiver, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = Notifier(targets(receiver.url), "0xKeeper00000000")
    alerter = Alerter(AlertSettings(), notifier)
    notifier.start()
    try:
        facts = quiet_facts()
        assert alerter.evaluate(facts) == []  # nothing is wrong: nothing is sent
        FIRE[key](facts)
        for _ in range(3):  # still wrong at the next checks: no second alert
            alerter.evaluate(facts)
        firing = alerter.evaluate(quiet_facts())  # cleared
        assert [a.resolved for a in firing] == [True]
        alerter.evaluate(quiet_facts())
        await delivered(notifier, 2)
    finally:
        await notifier.close()
    bodies = [body for _, body in receiver.posts]
    assert [(b["key"], b["resolved"]) for b in bodies] == [(key, False), (key, True)]
    assert all(SECRET not in json.dumps(b) for b in bodies)
    assert SECRET not in caplog.text


async def test_min_level_filters_and_the_rate_limit_bounds(receiver: Receiver) -> None:
    notifier = Notifier(targets(receiver.url), "0xKeeper")
    alerter = Alerter(AlertSettings(min_level="critical", max_per_minute=2), notifier)
    notifier.start()
    try:
        facts = quiet_facts()
        FIRE["lost"](facts)  # info: filtered
        FIRE["low-gas"](facts)  # critical: sent
        alerter.evaluate(facts)
        for n in range(3):  # a per-minute budget of 2: the third and fourth are suppressed
            alerter.emit(Alert(f"x{n}", "critical", "x"))
        await delivered(notifier, 2)
    finally:
        await notifier.close()
    assert [b["key"] for _, b in receiver.posts] == ["low-gas", "x0"]
    assert alerter.suppressed == 2


def test_the_format_follows_the_url() -> None:
    alert = Alert("low-gas", "critical", "0.001 ETH left")
    slack = target(f"https://hooks.slack.com/services/{SECRET}")
    discord = target(f"https://discord.com/api/webhooks/1/{SECRET}")
    telegram = target(f"https://api.telegram.org/bot{SECRET}/sendMessage?chat_id=-100")
    generic = target(f"https://example.org/alerts?token={SECRET}")
    kinds = [t.kind for t in (slack, discord, telegram, generic)]
    assert kinds == ["slack", "discord", "telegram", "generic"]
    assert slack.request(alert, "0xK")[1] == {"text": "🚨 perp-keeper 0xK: 0.001 ETH left"}
    assert set(discord.request(alert, "0xK")[1]) == {"content"}
    url, body = telegram.request(alert, "0xK")
    assert body["chat_id"] == "-100"
    assert "chat_id" not in url
    assert url.endswith("/sendMessage")
    assert generic.request(alert, "0xK")[1]["level"] == "critical"
    assert all(SECRET not in t.name for t in (slack, discord, telegram, generic))


def test_settings_errors_name_the_place_never_the_url() -> None:
    for bad in (f"ftp://host/{SECRET}", f"https://api.telegram.org/bot{SECRET}/sendMessage"):
        with pytest.raises(SettingError) as error:
            alert_settings({"KEEPER_ALERT_WEBHOOKS": bad})
        assert SECRET not in str(error.value)
    with pytest.raises(SettingError, match="KEEPER_ALERT_MIN_LEVEL"):
        alert_settings({"KEEPER_ALERT_MIN_LEVEL": "loud"})
    settings = alert_settings({"KEEPER_ALERT_MIN_ETH": "0.5", "KEEPER_ALERT_STUCK_BLOCKS": "7"})
    assert (settings.min_eth_wei, settings.stuck_blocks) == (5 * 10**17, 7)


async def test_a_failing_webhook_is_retried_then_counted_and_never_quoted(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 500
    outcomes: list[str] = []
    notifier = Notifier(targets(receiver.url), "0xK", attempts=3, backoff=0.01, count=outcomes.append)
    notifier.start()
    notifier.send(Alert("low-gas", "critical", "x"))
    await delivered(notifier, 1)
    await notifier.close()
    assert len(receiver.posts) == 3
    assert outcomes == ["failed"]
    assert "HTTP 500" in caplog.text
    assert SECRET not in caplog.text


def liquidation_plan(account: str = "0xabc") -> Plan[Op]:
    return Plan(Op(account, 10**20), [], True, "profitable", capital=("free collateral", 700, 300))


def test_the_watch_learns_from_the_engine_hooks() -> None:
    watch = Watch(block_interval=2.0, max_replacements=3)
    plan = liquidation_plan()
    watch.planned(plan)
    request = TxRequest("k", "0xabc", "0xch", b"", "liquidate")
    lost = "CH_EAV: the account is not liquidatable"
    watch.landed(plan, "liquidate", TxOutcome(request, "reverted", "CH_EAV"), lost)
    watch.landed(plan, "liquidate", TxOutcome(request, "mined", replacements=3, fee_wei=7), "")
    cooling = Result("0xabc", "taker", None, "skipped", "cooling down after an error (rpc)", key="k1")
    watch.ticked(50, [cooling])
    watch.ticked(80, [cooling])
    f = watch.facts
    assert f.capital == {"free collateral": (700, 300)}
    assert len(f.reverts) == 1
    assert len(f.lost) == 1
    assert len(f.ceilings) == 1
    assert f.stuck["k1"].since_block == 50
    assert f.stuck["k1"].reason.startswith("cooling down")
    watch.ticked(81, [Result("0xabc", "taker", None, "executed", key="k1", reward=5, profit=4)])
    assert f.stuck == {}
    assert watch.totals["liquidations"] == 1
    assert watch.totals["gas_wei"] == 7


async def tick_seconds(engine: Engine, ticks: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(ticks):
        await engine.tick()
        await engine.drain(1.0)
    return (time.perf_counter() - started) / ticks


async def test_a_webhook_that_is_down_or_hangs_never_slows_a_tick(receiver: Receiver, tmp_path: Any) -> None:
    """Every tick fires and clears a condition (2 alerts a tick) and the queue overflows: the tick's
    duration with the receiver hanging is that with it answering, within noise."""
    durations = {}
    for mode in ("up", "hang", "down"):
        receiver.hang = mode == "hang"
        url = receiver.url if mode != "down" else "http://127.0.0.1:9/hooks/" + SECRET
        settings = AlertSettings(webhooks=url, max_per_minute=10_000)
        service = build(settings, "0xK", _NoNode(), 2.0)
        service.alerter.notifier.queue = asyncio.Queue(5)
        strategy = FakeStrategy([Op(f"0x{i:040x}", 10**20 + i) for i in range(5)])
        engine = Engine([strategy], FakeRpc(), "0xK", AuditLog(tmp_path / f"{mode}.jsonl"), FakeSender())
        engine.hooks.planned, engine.hooks.landed = service.watch.planned, service.watch.landed
        flip = Flipper(service)
        engine.hooks.ticked = flip
        service.alerter.notifier.start()
        try:
            durations[mode] = await tick_seconds(engine)
        finally:
            await service.alerter.notifier.close(flush_within=0.1)
        assert flip.sent >= 20
    print(f"tick: {', '.join(f'{m} {s * 1000:.2f} ms' for m, s in durations.items())}")
    assert durations["hang"] < durations["up"] * 3 + 0.01
    assert durations["down"] < durations["up"] * 3 + 0.01


class Flipper:
    """A tick hook that makes a condition fire and clear on alternate ticks."""

    def __init__(self, service: Service) -> None:
        self.service, self.n, self.sent = service, 0, 0

    def __call__(self, head: int, results: list[Result]) -> None:
        self.n += 1
        facts = quiet_facts()
        if self.n % 2:
            FIRE["low-gas"](facts)
        self.sent += len(self.service.alerter.evaluate(facts)) + 1


class _NoNode:
    endpoints: tuple[Any, ...] = ()

    def is_healthy(self, ep: Any) -> bool:
        return True

    async def request(self, method: str, params: Any = ()) -> Any:
        return "0x0"


async def test_on_the_devnet_low_gas_and_endpoints_come_from_the_real_node(
    session: PerpSession, receiver: Receiver
) -> None:
    keeper = "0x000000000000000000000000000000000000dEaD"
    await session.rpc.request("anvil_setBalance", [keeper, hex(10**15)])
    settings = AlertSettings(webhooks=receiver.url, min_eth_wei=10**16, summary_seconds=0)
    service = build(settings, keeper, session.rpc, 2.0)
    service.alerter.notifier.start()
    try:
        sent = await service.check()
        assert [a.key for a in sent] == ["low-gas"]
        assert service.watch.facts.endpoints[0].healthy
        await session.rpc.request("anvil_setBalance", [keeper, hex(10**17)])
        assert [(a.key, a.resolved) for a in await service.check()] == [("low-gas", True)]
        await delivered(service.alerter.notifier, 2)
    finally:
        await service.alerter.notifier.close()
    assert "0.0010 ETH left for gas" in receiver.posts[0][1]["text"]


async def test_run_sends_started_and_stopped_and_logs_no_webhook(
    devnet: Any, chain: Any, receiver: Receiver, tmp_path: Any
) -> None:
    """`perp-keeper run` (dry-run) on the devnet: "started" once it serves, "stopped" after SIGTERM."""
    env = {
        **os.environ,
        "KEEPER_RPC_URL": devnet.url,
        "KEEPER_METADATA": str(devnet.metadata_path),
        "KEEPER_STATE_DB": str(tmp_path / "alerts.sqlite"),
        "KEEPER_METRICS_PORT": "0",
        "KEEPER_STALE_HEAD_SECONDS": "0",
        "KEEPER_ALERT_WEBHOOKS": receiver.url,
        "KEEPER_LOG_LEVEL": "DEBUG",
    }
    log_file = tmp_path / "keeper.log"
    with log_file.open("w") as log:
        keeper = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keeper.cli", "run", "--dry-run", env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 90
            while not receiver.posts and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            keeper.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(keeper.wait(), 60) == 0
        finally:
            if keeper.returncode is None:
                keeper.kill()
    texts = [body["text"] for _, body in receiver.posts]
    assert len(texts) == 2, log_file.read_text()[-2000:]
    assert "started (Perp v2, dry-run)" in texts[0]
    assert texts[1].endswith("stopped")
    assert SECRET not in log_file.read_text()


def test_bad_debt_a_plan_reports_is_a_fact_while_its_account_is_planned() -> None:
    watch = Watch(block_interval=2.0, max_replacements=3)
    underwater = Plan(Op("0xdebt", 10**18), [], True, "profitable", bad_debt=7 * 10**18)
    healthy = Plan(Op("0xfine", 10**18), [], True, "profitable")
    watch.planned(underwater)
    watch.planned(healthy)
    assert watch.facts.bad_debt == {"0xdebt": 7 * 10**18}
    watch.ticked(10, [Result("0xdebt", "taker", None, "sent", key="taker:0xdebt")])
    assert watch.facts.bad_debt == {"0xdebt": 7 * 10**18}
    watch.ticked(11, [])  # liquidated: no longer planned
    assert watch.facts.bad_debt == {}


def test_a_lost_signer_lease_fires_once_the_replica_had_held_it() -> None:
    from keeper.conditions import lease_lost

    settings = alert_settings({})
    held = Facts(lease_lost=None)
    assert lease_lost(held, settings) == []
    lost = Facts(lease_lost="this replica (h:1:x) lost signer:0xabc: a standby now")
    (finding,) = lease_lost(lost, settings)
    assert finding.key == "lease"
    assert "standby" in finding.text


def test_the_lease_fact_is_set_only_after_the_replica_held_the_lease() -> None:
    from typing import cast

    from keeper.lease import LeaseKeeper
    from keeper.run import lease_watch

    @dataclass
    class FakeLease:
        active: bool = False
        holder: str = "host:1:abc"
        name: str = "signer:0xabc"
        handed_over: bool = False

    lease = FakeLease()
    state = lease_watch([cast(LeaseKeeper, lease)])
    assert state() is None  # a standby from the start: nothing was lost
    lease.active = True
    assert state() is None
    lease.active = False
    assert state() == "this replica (host:1:abc) lost signer:0xabc: a standby now"
    lease.active = True
    assert state() is None  # held again: the alert resolves
    lease.active, lease.handed_over = False, True
    assert state() is None  # a shard handed over to a replica that joined: not lost
