"""Several RPC endpoints: the health policy as pure functions, then the real client through the devnet's
fault proxy (two or three proxies in front of one anvil), then `run`, `check` and `scan` on the devnet.

Through proxies in front of one node every endpoint answers the same chain, so where a request went is
read from each proxy's own counts (`http_requests`, `methods`, `injected`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from prometheus_client import generate_latest

from devnet import faults, up
from devnet.anvil import Anvil
from devnet.chain import DEPLOYER, DevChain
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_KEY
from keeper import endpoints as health
from keeper.check import endpoint_rows
from keeper.endpoints import Endpoint, Sighting
from keeper.errors import RpcError, RpcUnavailableError, SettingError
from keeper.jsonrpc import RpcBusyError, most_telling
from keeper.loop import HeadLoop
from keeper.metrics import Metrics
from keeper.receipts import TxRequest
from keeper.rpc import BlockHeader, Rpc
from keeper.session import check_rpc_url, rpc_timeout
from keeper.tx import MAYBE_SENT, TxManager
from tests.helpers import cli_output, run_once
from tests.test_engine import liquidatable

DEAD = "http://127.0.0.1:1/v3/sEcReTkEy"  # nothing listens on port 1: connection refused at once
NEVER = math.inf  # no background surveys: a test asks for them


# --- the policy, pure ------------------------------------------------------------------------------
def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"http://10.0.0.{i}:8545/key{i}", f"http://10.0.0.{i}:8545") for i in range(n)]


def test_urls_are_parsed_checked_and_redacted() -> None:
    assert check_rpc_url(" http://a:1/k1 , https://b/k2?x=y ") == "http://a:1/k1,https://b/k2?x=y"
    assert health.redact("http://a:1/k1,https://b/k2?x=y") == "http://a:1,https://b"
    assert health.endpoint_names(["https://p/k1", "https://p/k2", "http://q/k"]) == [
        "https://p#1",
        "https://p#2",
        "http://q",
    ]
    cases = [
        ("http://a/k1,,http://b/k2", "an empty URL in the list (URL 2 of 3)"),
        ("http://a/k1,ftp://b/sEcReT", "expected an http(s):// URL, got ftp scheme (URL 2 of 2)"),
        ("http://a/sEcReT,http://a/sEcReT", "a URL is listed twice"),
        ("", "is required"),
    ]
    for text, message in cases:
        with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
            check_rpc_url(text)
        assert "sEcReT" not in str(raised.value)
    with pytest.raises(SettingError, match=r"expected a ws\(s\):// URL"):
        health.parse_urls("ws://a,http://b", "--ws-url", ("ws", "wss"))


def test_the_request_timeout_setting() -> None:
    assert rpc_timeout({}) == 30.0
    assert rpc_timeout({"KEEPER_RPC_TIMEOUT_SECONDS": "5"}) == 5.0
    for bad in ("0", "1.5", "soon", "601"):
        with pytest.raises(SettingError, match="KEEPER_RPC_TIMEOUT_SECONDS"):
            rpc_timeout({"KEEPER_RPC_TIMEOUT_SECONDS": bad})


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert health.retry_after_seconds("3", now) == 3.0
    assert health.retry_after_seconds(email.utils.formatdate(now + 7, usegmt=True), now) == 7.0
    assert health.retry_after_seconds(email.utils.formatdate(now - 7, usegmt=True), now) == 0.0
    assert health.retry_after_seconds("soon", now) is None
    assert health.retry_after_seconds(None, now) is None


def test_which_json_rpc_errors_are_transient() -> None:
    assert health.transient_answer(-32603, "internal error")
    assert health.transient_answer(-32000, "header not found")
    assert health.transient_answer(-32002, "upstream request failed, try again")
    assert not health.transient_answer(-32603, "Error: VM Exception: reverted with reason string 'x'")
    assert not health.transient_answer(3, "execution reverted: CH_EAV")
    assert not health.transient_answer(-32000, "insufficient funds for gas * price + value")
    assert not health.transient_answer(-32602, "query exceeds max block range 1000")  # the indexer's
    assert not health.transient_answer(-32601, "the method no_such does not exist")
    assert health.ALREADY_SENT == MAYBE_SENT  # the transaction manager reads the same words


def test_pinned_blocks_and_heads_are_read_from_requests_and_answers() -> None:
    assert health.pinned_block("eth_call", [{"to": "0x1"}, "0x10"]) == 16
    assert health.pinned_block("eth_call", [{"to": "0x1"}, "latest"]) is None
    assert health.pinned_block("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x20"}]) == 32
    assert health.pinned_block("eth_getBlockByNumber", ["0x5", False]) == 5
    assert health.pinned_block("eth_getCode", ["0x1", "latest"]) is None
    assert health.pinned_block("eth_sendRawTransaction", ["0x02"]) is None
    assert health.head_of("eth_blockNumber", [], "0x2a") == 42
    assert health.head_of("eth_getBlockByNumber", ["latest", False], {"number": "0x2b"}) == 43
    assert health.head_of("eth_getBlockByNumber", ["0x2b", False], {"number": "0x2b"}) is None


def test_failures_open_a_window_that_an_answer_closes() -> None:
    (ep,) = endpoints(1)
    for n, expected in enumerate([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0], start=1):
        health.failed(ep, "transport", 100.0, 0.25)
        assert (ep.failures, ep.avoid_until) == (n, 100.0 + expected)
    health.failed(ep, "rate-limit", 100.0, 0.25, retry_after=120.0, max_wait=30.0)  # capped
    assert ep.avoid_until == ep.rate_limited_until == 130.0
    assert health.recent_errors(ep, 100.0) == 8.0
    assert health.recent_errors(ep, 100.0 + health.ERROR_HALF_LIFE_SECONDS) == 4.0
    health.answered(ep, 0.02)
    assert (ep.failures, ep.avoid_until, ep.rate_limited_until, ep.latency) == (0, 0.0, 0.0, 0.02)
    health.answered(ep, 0.12)
    assert ep.latency == pytest.approx(0.02 + health.LATENCY_WEIGHT * 0.10)


def test_rank_prefers_healthy_then_holding_the_block_then_fast_and_never_returns_nothing() -> None:
    eps = endpoints(4)
    for ep, latency, head in zip(eps, [0.05, 0.01, 0.02, 0.03], [100, 100, 99, 100], strict=True):
        ep.latency, ep.head = latency, head
    now = 1_000.0
    assert health.rank(eps, now) == [1, 2, 3, 0]
    assert health.rank(eps, now, needed=100) == [1, 3, 0, 2]  # #2 may not hold block 100 yet
    health.failed(eps[1], "http-5xx", now, 0.25)
    assert health.rank(eps, now) == [2, 3, 0, 1]  # in its window: last
    assert health.rank(eps, now + 1.0)[-1] == 1  # out of it, but one recent error weighs 1 s
    eps[3].lag = health.MAX_LAG_BLOCKS + 1
    assert health.rank(eps, now) == [2, 0, 3, 1]  # lagging: after the healthy ones
    eps[0].latency = 0.021  # close to #2: the endpoint in use is kept
    assert health.rank(eps, now, current=0)[0] == 0
    eps[0].latency = 0.2  # clearly worse: switch
    assert health.rank(eps, now, current=0)[0] == 2
    eps[2].wrong_chain = 10
    assert 2 not in health.rank(eps, now)
    eps[0].chain_id = 31337
    assert health.rank(eps, now, expected=31337) == [0]  # once a chain is expected: verified ones only
    for ep in eps:
        ep.wrong_chain = 10
    assert sorted(health.rank(eps, now)) == [0, 1, 2, 3]


def test_waits_and_lags() -> None:
    eps = endpoints(2)
    health.failed(eps[0], "rate-limit", 10.0, 0.25, retry_after=2.0)
    assert health.wait_seconds(eps, 10.0) == 0.0  # #1 is available
    assert health.rate_limit_wait(eps, 10.0) == 0.0
    health.failed(eps[1], "rate-limit", 10.0, 0.25, retry_after=3.0)
    assert health.wait_seconds(eps, 10.5) == 1.5
    assert health.rate_limit_wait(eps, 10.5) == 1.5
    health.surveyed(eps, [120, 116])
    assert [(e.head, e.lag) for e in eps] == [(120, 0), (116, 4)]
    health.surveyed(eps, [None, 121])  # #0 did not answer: keeps what it had
    assert [(e.head, e.lag) for e in eps] == [(120, 0), (121, 0)]
    assert not health.healthy(eps[1], 13.0, None)  # out of its window, but not answered since
    health.answered(eps[1], 0.01)
    assert health.healthy(eps[1], 13.0, None)
    eps[1].lag = health.MAX_LAG_BLOCKS + 1
    assert not health.healthy(eps[1], 13.0, None)


def test_the_most_telling_refusal_of_a_broadcast() -> None:
    transient = TimeoutError()
    refused = RpcError("eth_sendRawTransaction", -32000, "insufficient funds")
    known = RpcError("eth_sendRawTransaction", -32000, "nonce too low")
    assert most_telling([transient, refused, known]) is known
    assert most_telling([transient, refused]) is refused
    assert most_telling([transient]) is transient


def test_check_rows_show_each_endpoint() -> None:
    rows = endpoint_rows(
        [
            Sighting("http://127.0.0.1:1", error="ClientConnectorError (Connect call failed)"),
            Sighting("http://a", 31337, 100, 0.004),
            Sighting("http://b", 10, 100, 0.004),
            Sighting("http://c", 31337, 90, 0.004),
        ],
        31337,
    )
    assert [(r.name, r.ok) for r in rows] == [
        ("RPC endpoint http://127.0.0.1:1", False),
        ("RPC endpoint http://a", True),
        ("RPC endpoint http://b", False),
        ("RPC endpoint http://c", False),
    ]
    assert rows[0].detail.startswith("down: ")
    assert rows[1].detail == "chain id 31337, head 100, 4 ms"
    assert "answers chain id 10" in rows[2].detail
    assert "10 blocks behind" in rows[3].detail


def test_every_endpoint_has_its_metrics_under_its_redacted_name() -> None:
    rpc = Rpc(f"{DEAD},http://127.0.0.1:2/other/sEcReT")
    dead, other = rpc.endpoints
    dead.requests, dead.errors["transport"] = 3, 3
    health.failed(dead, "transport", time.monotonic(), 10.0)
    other.requests, other.latency, other.head = 5, 0.012, 42
    metrics = Metrics()
    metrics.watch_rpc(rpc)
    text = generate_latest(metrics.registry).decode()
    assert 'perp_keeper_rpc_endpoint_requests_total{endpoint="http://127.0.0.1:1"} 3.0' in text
    assert 'perp_keeper_rpc_endpoint_errors_total{endpoint="http://127.0.0.1:1",kind="transport"} 3.0' in text
    assert 'perp_keeper_rpc_endpoint_healthy{endpoint="http://127.0.0.1:1"} 0.0' in text
    assert 'perp_keeper_rpc_endpoint_healthy{endpoint="http://127.0.0.1:2"} 1.0' in text
    assert 'perp_keeper_rpc_endpoint_head{endpoint="http://127.0.0.1:2"} 42.0' in text
    assert 'perp_keeper_rpc_endpoint_latency_seconds{endpoint="http://127.0.0.1:2"} 0.012' in text
    assert "sEcReT" not in text


# --- the client, through fault proxies in front of one anvil --------------------------------------
@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def node(anvil: Anvil) -> DevChain:
    return DevChain(anvil.url)


@pytest.fixture
def proxies(anvil: Anvil) -> Iterator[list[RpcProxy]]:
    with RpcProxy(anvil.url) as a, RpcProxy(anvil.url) as b, RpcProxy(anvil.url) as c:
        yield [a, b, c]


def client(*urls: str, **options: float) -> Rpc:
    settings: dict[str, float] = {"backoff_seconds": 0.01, "probe_seconds": NEVER} | options
    return Rpc(",".join(urls), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "counted"),
    [(faults.HTTP_503, "http-5xx"), (faults.MALFORMED_JSON, "malformed"), (faults.RPC_ERROR, "answer")],
)
async def test_a_read_fails_over_and_the_failed_endpoint_is_avoided(
    kind: str, counted: str, node: DevChain, proxies: list[RpcProxy]
) -> None:
    a, b, _ = proxies
    a.inject(kind, times=100)
    async with client(a.url, b.url) as rpc:
        for _ in range(5):
            assert await rpc.block_number() == node.w3.eth.block_number
        assert a.http_requests == 1  # asked once, then in its back-off window
        assert b.methods["eth_blockNumber"] == 5
        assert rpc.endpoints[0].errors == Counter({counted: 1})
        assert rpc.errors == Counter({counted: 1})
        metrics = Metrics()
        metrics.watch_rpc(rpc)
        text = generate_latest(metrics.registry).decode()
    assert a.injected == Counter({kind: 1})
    name_a, name_b = a.url, b.url  # no path or key: the redacted name is the URL
    assert f'perp_keeper_rpc_endpoint_errors_total{{endpoint="{name_a}",kind="{counted}"}} 1.0' in text
    assert f'perp_keeper_rpc_endpoint_requests_total{{endpoint="{name_b}"}} 5.0' in text
    assert f'perp_keeper_rpc_endpoint_healthy{{endpoint="{name_a}"}} 0.0' in text
    assert f'perp_keeper_rpc_endpoint_healthy{{endpoint="{name_b}"}} 1.0' in text


async def test_a_timeout_fails_over_at_once(node: DevChain, proxies: list[RpcProxy]) -> None:
    a, b, _ = proxies
    a.inject(faults.DELAY, delay_seconds=2.0)
    async with client(a.url, b.url, timeout=0.3) as rpc:
        started = time.monotonic()
        assert await rpc.block_number() == node.w3.eth.block_number
        assert time.monotonic() - started < 1.0
        assert rpc.endpoints[0].errors == Counter({"transport": 1})
        assert b.http_requests == 1


async def test_retry_after_is_honoured_and_another_endpoint_needs_no_wait(proxies: list[RpcProxy]) -> None:
    a, b, _ = proxies
    async with client(a.url) as alone:  # Retry-After: 1 from the only endpoint: the retry waits 1 s
        a.inject(faults.HTTP_429)
        started = time.monotonic()
        assert await alone.chain_id() == 31337
        waited = time.monotonic() - started
    assert 1.0 <= waited < 2.5, waited  # 1 s, not the 0.01 s back-off
    async with client(a.url, b.url) as rpc:
        a.inject(faults.HTTP_429)
        started = time.monotonic()
        assert await rpc.chain_id() == 31337  # #1 said wait: #2 answers at once
        assert await rpc.chain_id() == 31337
        assert time.monotonic() - started < 0.9  # no 1 s wait
        assert rpc.endpoints[0].errors == Counter({"rate-limit": 1})
        a.inject(faults.HTTP_429)
        b.inject(faults.HTTP_429)
        rpc.endpoints[0].avoid_until = rpc.endpoints[0].rate_limited_until = 0.0
        rpc._current = 0
        started = time.monotonic()
        assert await rpc.chain_id() == 31337  # both said wait 1 s: the retry waits for the first
        waited = time.monotonic() - started
    assert 1.0 <= waited < 2.5, waited  # 1 s, not the 0.01 s back-off
    assert a.injected == Counter({faults.HTTP_429: 3})
    assert b.injected == Counter({faults.HTTP_429: 1})


async def test_a_stale_or_lagging_endpoint_is_avoided_until_it_catches_up(
    node: DevChain, proxies: list[RpcProxy]
) -> None:
    a, b, c = proxies
    async with client(a.url, b.url, c.url) as rpc:
        await rpc.probe()
        assert [ep.lag for ep in rpc.endpoints] == [0, 0, 0]
        a.inject(faults.STALE_HEAD, times=1_000)  # a's head stops advancing
        node.rpc("anvil_mine", 2)
        await rpc.probe()
        assert rpc.endpoints[0].lag == 2  # behind, within MAX_LAG_BLOCKS: still healthy
        head = node.w3.eth.block_number
        before = a.methods["eth_getBlockByNumber"]
        (got,) = await rpc.headers([head])  # pinned to a block a has not shown: not asked there
        assert got is not None
        assert got.number == head
        assert a.methods["eth_getBlockByNumber"] == before
        node.rpc("anvil_mine", 3)
        await rpc.probe()
        assert rpc.endpoints[0].lag == 5
        assert [rpc.is_healthy(ep) for ep in rpc.endpoints] == [False, True, True]
        before = a.http_requests
        for _ in range(3):
            assert await rpc.block_number() == node.w3.eth.block_number
            assert (await rpc.header("latest")).number == node.w3.eth.block_number
        assert a.http_requests == before  # avoided
        a.calm()
        await rpc.probe()
        assert rpc.endpoints[0].lag == 0
        assert rpc.is_healthy(rpc.endpoints[0])  # caught up: used again
    assert a.injected[faults.STALE_HEAD] >= 2


async def test_a_background_survey_finds_a_recovered_endpoint(
    node: DevChain, proxies: list[RpcProxy]
) -> None:
    a, b, _ = proxies
    a.inject(faults.HTTP_502, times=1_000)  # a is down
    async with client(a.url, b.url, probe_seconds=0.05) as rpc:
        for _ in range(5):
            assert await rpc.block_number() == node.w3.eth.block_number
            await asyncio.sleep(0.06)
        assert not rpc.is_healthy(rpc.endpoints[0])
        assert b.methods["eth_blockNumber"] >= 5
        a.calm()  # a is back; reads stay on b, only a survey can notice
        node.rpc("anvil_mine", 1)
        head = node.w3.eth.block_number
        for _ in range(50):
            assert await rpc.block_number() == head
            if rpc.endpoints[0].head == head and rpc.is_healthy(rpc.endpoints[0]):
                break
            await asyncio.sleep(0.06)
        assert rpc.endpoints[0].head == head
        assert rpc.is_healthy(rpc.endpoints[0])
        assert rpc.endpoints[0].errors["http-5xx"] >= 1


async def test_a_dead_endpoint_first_in_the_list_costs_one_refused_connection(
    anvil: Anvil, node: DevChain
) -> None:
    async with client(DEAD, anvil.url) as rpc:
        assert await rpc.chain_id() == 31337
        assert await rpc.block_number() == node.w3.eth.block_number
        assert rpc.endpoints[0].errors == Counter({"transport": 1})
        assert rpc.endpoints[0].requests == 1


async def test_an_unreachable_list_is_unavailable_and_a_busy_one_is_busy(proxies: list[RpcProxy]) -> None:
    async with client(DEAD, "http://127.0.0.1:9/x", attempts=2) as dead:
        with pytest.raises(RpcUnavailableError, match="unreachable") as raised:
            await dead.chain_id()
    assert "sEcReT" not in str(raised.value)
    a, b, _ = proxies
    a.inject(faults.HTTP_503, times=10)
    b.inject(faults.HTTP_429, times=10)
    async with client(a.url, b.url, attempts=2, max_retry_after=0.05) as busy:
        with pytest.raises(RpcBusyError, match="busy: HTTP"):
            await busy.chain_id()


async def test_a_send_is_broadcast_to_every_endpoint_and_mined_once(
    node: DevChain, proxies: list[RpcProxy]
) -> None:
    a, b, c = proxies
    keeper = Account.create()
    node.rpc("anvil_setBalance", keeper.address, hex(10**18))
    a.inject(faults.LOST_SEND_ANSWER)  # reaches the node, the answer is lost
    b.inject(faults.HTTP_503, method="eth_sendRawTransaction")
    async with client(a.url, b.url, c.url, DEAD) as rpc:
        manager = TxManager(rpc, keeper, 31337, poll_seconds=0.05, receipt_timeout=10)
        outcome = await manager.send(TxRequest("touch", keeper.address, DEPLOYER, b"", "touch"))
        assert outcome.ok, outcome.reason
        assert rpc.calls["eth_sendRawTransaction"] == 1  # one broadcast, not retried
        # the dead endpoint was tried and failed as unreachable (head surveys may try it again)
        assert set(rpc.endpoints[3].errors) == {"transport"}
    assert [p.methods["eth_sendRawTransaction"] for p in proxies] == [1, 1, 1]
    assert node.w3.eth.get_transaction_count(keeper.address) == 1  # one transaction, mined once
    assert a.injected == Counter({faults.LOST_SEND_ANSWER: 1})


async def test_a_send_refused_as_known_everywhere_is_looked_up_not_signed_again(
    node: DevChain, proxies: list[RpcProxy]
) -> None:
    a, b, _ = proxies
    keeper = Account.create()
    node.rpc("anvil_setBalance", keeper.address, hex(10**18))
    a.inject(faults.LOST_SEND_ANSWER)
    b.inject(faults.LOST_SEND_ANSWER)  # both reach the node, no answer comes back: retried
    async with client(a.url, b.url) as rpc:
        manager = TxManager(rpc, keeper, 31337, poll_seconds=0.05, receipt_timeout=10)
        outcome = await manager.send(TxRequest("touch", keeper.address, DEPLOYER, b"", "touch"))
        assert outcome.ok, outcome.reason
    assert node.w3.eth.get_transaction_count(keeper.address) == 1
    assert a.methods["eth_sendRawTransaction"] == b.methods["eth_sendRawTransaction"] == 2


async def test_the_loop_subscribes_to_the_first_websocket_that_works(
    anvil: Anvil, node: DevChain, caplog: pytest.LogCaptureFixture
) -> None:
    ticked: list[int] = []

    async def tick(head: BlockHeader) -> None:
        ticked.append(head.number)

    ws = anvil.url.replace("http://", "ws://")
    loop = HeadLoop(Rpc(DEAD), tick, ws_url=f"ws://127.0.0.1:1/sEcReT,{ws}", poll_after=60)
    with caplog.at_level(logging.WARNING):
        running = asyncio.create_task(loop.run())
        await asyncio.sleep(0.5)
        for _ in range(3):
            await asyncio.to_thread(node.rpc, "anvil_mine", 1)
            await asyncio.sleep(0.2)
        target = node.w3.eth.block_number
        for _ in range(50):
            if ticked and ticked[-1] == target:
                break
            await asyncio.sleep(0.1)
        loop.stop.set()
        await asyncio.wait_for(running, 10)
    assert ticked[-1] == target
    assert loop._ws_index == 1
    assert loop._ws_heads >= 3  # the heads came over the WebSocket (polling is off: poll_after=60)
    assert "newHeads subscription to ws://127.0.0.1:1 lost" in caplog.text
    assert "sEcReT" not in caplog.text
    with pytest.raises(SettingError, match="--ws-url / KEEPER_WS_URL: expected a ws"):
        HeadLoop(Rpc(DEAD), tick, ws_url=f"{ws},http://x")


# --- the commands on the devnet ------------------------------------------------------------------------
def test_run_through_a_list_with_a_dead_endpoint_first_liquidates_everything(
    devnet: up.Devnet,
    chain: DevChain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    assert liquidatable(devnet)
    urls = f"{DEAD},{devnet.url}/?key=sEcReT"
    code, summary = run_once(urls, devnet.metadata_path, tmp_path / "keeper.sqlite")
    assert code == 0, summary
    assert liquidatable(devnet) == set(), summary
    assert " skipped " not in summary, summary
    assert "sEcReT" not in summary + capsys.readouterr().err


def test_check_shows_a_dead_endpoint_as_down(
    devnet: up.Devnet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    code, out = cli_output(
        "check", "--rpc-url", f"{DEAD},{devnet.url}", "--metadata", str(devnet.metadata_path)
    )
    rows = {line[6:].split("  ")[0]: line[:4] for line in out.splitlines() if line[:4] in ("PASS", "FAIL")}
    assert rows["RPC endpoint http://127.0.0.1:1"] == "FAIL", out
    assert rows[f"RPC endpoint {devnet.url}"] == "PASS", out
    assert rows["RPC and chain id"] == "PASS", out
    assert [name for name, result in rows.items() if result == "FAIL"] == ["RPC endpoint http://127.0.0.1:1"]
    assert code == 1
    assert "down: " in out
    assert "sEcReT" not in out + capsys.readouterr().err


def test_five_429s_at_start_up_are_waited_out_not_an_operator_error(
    devnet: up.Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RpcProxy(devnet.url) as proxy:
        proxy.inject(faults.HTTP_429, times=5)
        started = time.monotonic()
        code, _ = cli_output(
            "scan", "--json", "--rpc-url", proxy.url, "--metadata", str(devnet.metadata_path),
            "--state-db", str(tmp_path / "s.sqlite"),
        )  # fmt: skip
        waited = time.monotonic() - started
        assert proxy.injected == Counter({faults.HTTP_429: 5})
    assert code == 0, capsys.readouterr().err
    assert waited >= 5.0  # Retry-After: 1, five times


def test_an_endpoint_on_another_chain_is_an_operator_error(
    devnet: up.Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Anvil(extra_args=["--chain-id", "10"]) as other:
        urls = f"{devnet.url},{other.url}/?key=sEcReT"
        code, _ = cli_output(
            "scan", "--rpc-url", urls, "--metadata", str(devnet.metadata_path),
            "--state-db", str(tmp_path / "s.sqlite"),
        )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert f"chain id 10 at {other.url} does not match the metadata's 31337" in err
    assert "sEcReT" not in err
