"""Crash speed on the real contracts, 2-second blocks: many liquidations per block, `kill -9`, a
lost send.

The crash devnet (devnet/crash.py) is built once for the module: 20 takers long vETH at 8x that all
become liquidatable in the same block after one price move, a maker whose orders the crash fills and
a WETH-collateral account. Each test loads its dump into its own anvil mining a block every 2 seconds
and runs the keeper as an operator does: `perp-keeper run`, live, in a subprocess (the lost-send test
runs `run --once` in process, behind the fault proxy).
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3

from devnet import crash, faults
from devnet.crash import CrashNet
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from tests.helpers import run_once

pytestmark = pytest.mark.chain

ACCOUNTS = 20
BLOCK_TIME = 2  # as an operator runs it on Optimism
WITHIN_BLOCKS = 3
CANCEL_SELECTOR = "0xcc3606dc"
T = TypeVar("T")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crash")
    crash.build(out, ACCOUNTS, extras=True)
    return out


@pytest.fixture
def net(built: Path) -> Iterator[CrashNet]:
    loaded = crash.load(built, BLOCK_TIME)
    try:
        yield loaded
    finally:
        loaded.stop()


@contextmanager
def keeper(net: CrashNet, work: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """`perp-keeper run` on `net` with `work`'s state database and audit log; stopped on the way out."""
    env = crash.keeper_env(net, work / "keeper.sqlite", work / "audit.jsonl")
    with (work / f"{name}.log").open("w") as log:
        proc = crash.start_keeper(env, log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def wait_for(what: str, condition: Callable[[], T | None], seconds: float, every: float = 0.2) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0


def settled(net: CrashNet, accounts: list[str]) -> bool:
    """Nothing liquidatable (positions or collateral) and nothing held by the keeper."""
    vault = net.deployment["Vault"]
    if crash.liquidatable(net, accounts) or any(vault.functions.isLiquidatable(a).call() for a in accounts):
        return False
    return crash.held(net) == {"positions": {}, "collateral": {}}


def journal(state_db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM journal ORDER BY id")]


def pooled(net: CrashNet) -> dict[str, dict[str, Any]]:
    """The keeper's transactions waiting in the node's pool, by hash."""
    content = net.chain.rpc("txpool_content")
    mine = {k.lower(): v for k, v in content["pending"].items()}.get(KEEPER_ADDRESS.lower(), {})
    return {tx["hash"]: tx for tx in mine.values()}


def decisions(work: Path) -> list[dict[str, Any]]:
    path = work / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if r.get("event") == "decision"]


# --- many in one block -----------------------------------------------------------------------------


def test_twenty_accounts_crossing_in_one_block_are_all_liquidated_within_three_blocks(
    net: CrashNet, tmp_path: Path
) -> None:
    takers = net.manifest.takers
    with keeper(net, tmp_path, "keeper") as proc:
        crash.wait_caught_up(net, tmp_path / "keeper.sqlite", proc)
        crossed = crash.crash(net)

        def all_liquidated() -> bool:
            head = net.chain.w3.eth.block_number
            done = {x.trader for x in crash.liquidations(net, crossed, head)} if head > crossed else set()
            return done >= set(takers)

        wait_for("every taker liquidated", all_liquidated, 60, every=0.5)
        stop(proc)
    assert not crash.liquidatable(net, takers, crossed - 1)  # none before the crash block
    assert crash.liquidatable(net, takers, crossed) == set(takers)  # every one at it
    first: dict[str, int] = {}
    for x in crash.liquidations(net, crossed, net.chain.w3.eth.block_number):
        first.setdefault(x.trader, x.block)
    late = {t: first[t] - crossed for t in takers if first[t] - crossed > WITHIN_BLOCKS}
    per_block = Counter(first.values())
    assert not late, f"crossed at {crossed}; liquidated per block {sorted(per_block.items())}"
    assert max(per_block.values()) > 1  # several liquidations in one block, not one a block


# --- kill -9 right after a broadcast -----------------------------------------------------------------


def test_a_keeper_killed_right_after_it_broadcasts_sends_nothing_twice_and_ends_flat(
    net: CrashNet, tmp_path: Path
) -> None:
    """Killed the moment the maker's cancelAllExcessOrders reaches the node (mining then held, so what
    it broadcast is still pending when it restarts), restarted on the same state database."""
    maker, holder = net.manifest.extras["crash-maker"], net.manifest.extras["crash-weth"]
    everyone = [*net.manifest.takers, maker, holder]
    state_db = tmp_path / "keeper.sqlite"
    with keeper(net, tmp_path, "first") as first:
        crash.wait_caught_up(net, state_db, first)
        crossed = crash.crash(net)

        def cancel_pooled() -> str | None:
            txs = pooled(net)
            return next((h for h, tx in txs.items() if tx["input"].startswith(CANCEL_SELECTOR)), None)

        cancel = wait_for("the maker's cancel in the pool", cancel_pooled, 30, every=0.005)
        net.chain.rpc("evm_setIntervalMining", 0)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    at_kill = pooled(net)
    pending = {r["tx_hash"]: r for r in journal(state_db) if r["status"] == "pending"}
    assert cancel in at_kill
    assert set(at_kill) <= set(pending)  # everything broadcast was journaled first

    decided = len(decisions(tmp_path))
    with keeper(net, tmp_path, "second") as second:
        wait_for("the restart", lambda: "perp-keeper live" in (tmp_path / "second.log").read_text(), 60)
        # its first head comes while what it broadcast before the kill is still pending
        started = time.monotonic()
        wait_for(
            "a tick of the restarted keeper",
            lambda: len(decisions(tmp_path)) > decided or time.monotonic() - started > 5,
            30,
        )
        net.chain.rpc("evm_setIntervalMining", BLOCK_TIME)
        wait_for("nothing liquidatable, nothing held", lambda: settled(net, everyone), 90, every=1.0)
        stop(second)

    head = net.chain.w3.eth.block_number
    txs = crash.keeper_txs(net, crossed, head)
    # on chain: one cancel for the maker's one market, every liquidation did liquidate, nothing reverted
    assert Counter(t.account for t in txs if t.kind == "cancel") == Counter({maker: 1})
    liquidated = {x.tx_hash for x in crash.liquidations(net, crossed, head)}
    assert {t.tx_hash for t in txs if t.kind == "liquidate"} <= liquidated
    assert [t for t in txs if not t.ok] == []
    # what was pending at the kill was mined (or replaced at its nonce), and its step was not signed
    # under another nonce before that outcome was known
    rows = journal(state_db)
    by_hash = {r["tx_hash"]: r for r in rows}
    for tx_hash, entry in pending.items():
        settled_at = by_hash[tx_hash]["updated_at"]
        assert by_hash[tx_hash]["status"] in ("mined", "replaced"), by_hash[tx_hash]
        at_nonce = [r["step"] for r in rows if r["nonce"] == entry["nonce"] and r["status"] == "mined"]
        assert at_nonce == [entry["step"]]  # its nonce went to it (or its replacement), no other step
        again = [
            r
            for r in rows
            if r["step"] == entry["step"] and r["nonce"] != entry["nonce"] and r["created_at"] < settled_at
        ]
        assert again == [], entry["step"]
    # a step signed again at a new nonce only once the earlier one had an outcome
    for step in {r["step"] for r in rows}:
        signed = sorted((r for r in rows if r["step"] == step), key=lambda r: r["created_at"])
        for earlier, later in itertools.pairwise(signed):
            if later["nonce"] != earlier["nonce"]:
                assert earlier["status"] != "pending", step
                assert later["created_at"] >= earlier["updated_at"], step
    # every transaction the keeper got mined was journaled, and the journal has nothing left pending
    assert {t.tx_hash for t in txs} == {r["tx_hash"] for r in rows if r["status"] in ("mined", "reverted")}
    assert [r for r in rows if r["status"] == "pending"] == []
    # the taken-over positions were closed and the seized WETH sold
    kinds = Counter(t.kind for t in txs)
    assert kinds["close"] >= 1
    assert kinds["collateral"] >= 1
    assert kinds["sell"] >= 1
    assert crash.held(net) == {"positions": {}, "collateral": {}}


# --- a send whose answer is lost ---------------------------------------------------------------------


class RecordingProxy(RpcProxy):
    """The fault proxy, also keeping every signed transaction sent through it."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.raw: list[bytes] = []

    async def _handle(self, body: bytes) -> Any:
        payload = json.loads(body)
        for request in payload if isinstance(payload, list) else [payload]:
            if request.get("method") == "eth_sendRawTransaction":
                self.raw.append(bytes.fromhex(request["params"][0].removeprefix("0x")))
        return await super()._handle(body)


def decoded(raw: bytes) -> dict[str, Any]:
    return dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())


def test_a_send_whose_answer_is_lost_is_not_sent_twice(
    net: CrashNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    takers = net.manifest.takers
    crossed = crash.crash(net)
    wait_for("the crash block", lambda: net.chain.w3.eth.block_number >= crossed, 10)
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    monkeypatch.setenv("KEEPER_METRICS_PORT", "0")
    nonce_before = net.chain.w3.eth.get_transaction_count(Web3.to_checksum_address(KEEPER_ADDRESS))
    proxy = RecordingProxy(net.url)
    proxy.start()
    try:
        proxy.inject(faults.LOST_SEND_ANSWER, method="eth_sendRawTransaction")
        code, out = run_once(proxy.url, net.metadata_path, tmp_path / "keeper.sqlite")
    finally:
        proxy.stop()
    assert code == 0, out
    assert proxy.injected[faults.LOST_SEND_ANSWER] == 1
    head = net.chain.w3.eth.block_number
    txs = crash.keeper_txs(net, crossed, head)
    signed = {"0x" + keccak(raw).hex(): decoded(raw) for raw in proxy.raw}
    lost = "0x" + keccak(proxy.raw[0]).hex()  # the first send is the one whose answer was lost
    # each signed transaction reached the chain exactly once; nothing else was signed
    assert {t.tx_hash for t in txs} == set(signed)
    assert lost in {t.tx_hash for t in txs}
    assert sorted(t.nonce for t in txs) == list(range(nonce_before, nonce_before + len(txs)))
    # no step was signed twice: each (target, calldata) went out under one nonce
    steps: dict[tuple[str, bytes], set[int]] = {}
    for tx in signed.values():
        steps.setdefault((bytes(tx["to"]).hex(), bytes(tx["data"])), set()).add(int(tx["nonce"]))
    assert all(len(nonces) == 1 for nonces in steps.values()), steps
    assert len(proxy.raw) > len(signed)  # the lost one was sent again as the same bytes (a retry)
    # `run --once` printed its summary (every taker, the maker, the WETH account's position and its
    # collateral, the close, the sale) and left nothing liquidatable and nothing held
    summary = re.search(r"\n(\d+) executed, 0 not;", out)
    assert summary is not None, out
    assert int(summary.group(1)) >= len(takers) + 5, out
    assert settled(net, [*takers, *net.manifest.extras.values()])
