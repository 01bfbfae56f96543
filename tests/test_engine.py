"""`perp-keeper run --once` on the real contracts: liquidations largest first, profit, dry-run safety."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from devnet import up
from devnet.chain import DevChain
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper import cli
from tests.helpers import run_once


def keeper_value(devnet: up.Devnet) -> int:
    """Vault account value + wallet USDC, both in USDC's 6 decimals."""
    d = devnet.deployment
    return int(d["Vault"].functions.getAccountValue(KEEPER_ADDRESS).call()) + int(
        d["USDC"].functions.balanceOf(KEEPER_ADDRESS).call()
    )


def liquidatable(devnet: up.Devnet) -> set[str]:
    """Accounts with a position ClearingHouse would liquidate (a WETH holder left with no position but
    a negative account value is the collateral liquidator's, not this one's)."""
    for _ in range(5):
        # pinned: a read racing anvil's mining can see a half state; and anvil under load sometimes
        # answers a just-mined block with BlockOutOfRangeError (foundry#4843), so read at a new head
        try:
            return _liquidatable_at(devnet, devnet.chain.w3.eth.block_number)
        except Web3RPCError as error:
            if "BlockOutOfRange" not in str(error):
                raise
    raise AssertionError("anvil kept answering BlockOutOfRangeError at its own head")


def _liquidatable_at(devnet: up.Devnet, block: int) -> set[str]:
    d = devnet.deployment
    found = set()
    for t in devnet.scenario.traders.values():
        value = d["ClearingHouse"].functions.getAccountValue(t.address).call(block_identifier=block)
        requirement = (
            d["AccountBalance"]
            .functions.getMarginRequirementForLiquidation(t.address)
            .call(block_identifier=block)
        )
        if value < requirement and requirement > 0:
            found.add(t.label)
    return found


def run(url: str, devnet: up.Devnet, tmp_path: Path, *extra: str) -> tuple[int, str]:
    return run_once(url, devnet.metadata_path, tmp_path / "keeper.sqlite", *extra)


def test_hold_policy_liquidates_every_position_largest_first_and_gains(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    monkeypatch.setenv("KEEPER_INHERITED_POSITIONS", "hold")
    before = keeper_value(devnet)
    eth_before = chain.w3.eth.get_balance(Web3.to_checksum_address(KEEPER_ADDRESS))
    audit = tmp_path / "audit.jsonl"
    code, summary = run(devnet.url, devnet, tmp_path, "--audit-log", str(audit))
    assert code == 0, summary
    assert liquidatable(devnet) == set(), summary
    gas_usd = (
        (eth_before - chain.w3.eth.get_balance(Web3.to_checksum_address(KEEPER_ADDRESS))) * 1513 // 10**30
    )
    assert keeper_value(devnet) - before > gas_usd  # net of gas (ETH valued at the devnet's 1,513)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    # the first pass takes opportunities largest position notional first (|size| x mark)
    first = [
        r
        for r in records
        if r["event"] == "decision"
        and r["tick"] == 1
        and r["inputs"].get("round") == 1
        and r["inputs"].get("stage") == "liquidate"
    ]
    positions = [int(r["opportunity_notional"]) for r in first if r["kind"] != "collateral"]
    assert len(positions) >= 8
    assert positions == sorted(positions, reverse=True)
    kinds = [r["kind"] == "collateral" for r in first]
    assert kinds == sorted(kinds)  # every position before any collateral
    assert any(r["event"] == "transaction" and r["status"] == "mined" for r in records)


def test_default_close_policy_liquidates_every_position_and_gains_net_of_gas(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    keeper = Web3.to_checksum_address(KEEPER_ADDRESS)
    before, eth_before = keeper_value(devnet), chain.w3.eth.get_balance(keeper)
    code, summary = run(devnet.url, devnet, tmp_path)
    assert code == 0, summary
    assert liquidatable(devnet) == set(), summary
    assert " skipped " not in summary, summary
    # what was taken over was closed: the keeper holds no position
    d = devnet.deployment
    for market in d.markets.values():
        base = market.base_token.address
        assert d["AccountBalance"].functions.getTakerPositionSize(keeper, base).call() == 0
    gas_usd = (eth_before - chain.w3.eth.get_balance(keeper)) * 1513 // 10**30
    assert keeper_value(devnet) - before > gas_usd


@pytest.mark.parametrize("max_keeper_fee_usd", [None, 500])
def test_dry_run_sends_nothing_and_records_every_liquidatable_account(
    devnet: up.Devnet,
    chain: DevChain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_keeper_fee_usd: int | None,
) -> None:
    monkeypatch.delenv("KEEPER_PRIVATE_KEY", raising=False)
    if max_keeper_fee_usd is None:
        monkeypatch.delenv("KEEPER_MAX_KEEPER_FEE", raising=False)
    else:
        monkeypatch.setenv("KEEPER_MAX_KEEPER_FEE", str(max_keeper_fee_usd))
    cap = None if max_keeper_fee_usd is None else max_keeper_fee_usd * 10**18
    audit = tmp_path / "dry.jsonl"
    vault = devnet.deployment["Vault"]
    positions = liquidatable(devnet)
    expected = positions | {
        label
        for label, t in devnet.scenario.traders.items()
        if vault.functions.isLiquidatable(t.address).call()
    }
    with RpcProxy(devnet.url) as proxy:
        code, _ = run(
            proxy.url, devnet, tmp_path, "--dry-run", "--from", KEEPER_ADDRESS, "--audit-log", str(audit)
        )
        assert code == 0
        assert proxy.methods["eth_sendRawTransaction"] == 0
        assert proxy.methods["eth_sendTransaction"] == 0
    assert liquidatable(devnet) == positions  # nothing changed on chain
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    decided = {r["account"] for r in records if r["event"] == "decision"}
    labels = {t.address: t.label for t in devnet.scenario.traders.values()}
    assert {labels[a] for a in decided} == expected
    estimates = [r["estimate"] for r in records if r["event"] == "decision" and r["estimate"]]
    assert estimates
    # the operator's KEEPER_MAX_KEEPER_FEE caps each reward exactly (Perp v2 itself has no cap)
    for estimate in estimates:
        assert (estimate["protocol_cap"], estimate["operator_cap"]) == (None, cap)
        gross = estimate["reward_gross"]
        assert estimate["reward_capped"] == (gross if cap is None else min(gross, cap))
    if cap is not None:
        assert any(e["reward_gross"] > cap for e in estimates)  # the cap binds somewhere
    for record in records:
        if record["event"] == "decision" and record["estimate"]:
            assert "account_value" in record["inputs"]
            assert record["steps"][0]["calldata"].startswith("0x")
    assert any(r["event"] == "simulation" for r in records)
    # the account under water is reported with its bad debt (what the insurance fund absorbs), exactly
    underwater = {
        labels[r["account"]]: r["inputs"]
        for r in records
        if r["event"] == "decision" and r["inputs"].get("bad_debt")
    }
    assert "eth-long-8x-bad-debt" in underwater
    inputs = underwater["eth-long-8x-bad-debt"]
    assert inputs["account_value"] < 0
    assert inputs["bad_debt"] == -inputs["account_value"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KEEPER_PRIVATE_KEY": "0x1234"}, "KEEPER_PRIVATE_KEY: not a 32-byte hex private key"),
        ({"KEEPER_PRIVATE_KEY": ""}, "no key"),
        (
            {"KEEPER_PRIVATE_KEY": KEEPER_KEY, "KEEPER_MIN_PROFIT_USD": "lots"},
            "KEEPER_MIN_PROFIT_USD: not a number",
        ),
        (
            {"KEEPER_PRIVATE_KEY": KEEPER_KEY, "KEEPER_INHERITED_POSITIONS": "sell"},
            "KEEPER_INHERITED_POSITIONS",
        ),
        ({"KEEPER_PRIVATE_KEY": KEEPER_KEY, "KEEPER_SLIPPAGE_BPS": "-5"}, "KEEPER_SLIPPAGE_BPS"),
    ],
)
def test_run_bad_settings_are_one_line_exit_2_and_never_show_the_key(
    devnet: up.Devnet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(
        [
            "run",
            "--once",
            "--rpc-url",
            devnet.url,
            "--metadata",
            str(devnet.metadata_path),
            "--state-db",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert KEEPER_KEY.removeprefix("0x") not in err


def test_run_follows_heads_liquidates_serves_metrics_and_stops_cleanly_on_sigterm(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "KEEPER_PRIVATE_KEY": KEEPER_KEY,
        "KEEPER_INHERITED_POSITIONS": "hold",
        "KEEPER_RPC_URL": devnet.url,
        "KEEPER_WS_URL": devnet.url.replace("http://", "ws://"),
        "KEEPER_METADATA": str(devnet.metadata_path),
        "KEEPER_STATE_DB": str(tmp_path / "loop.sqlite"),
        "KEEPER_METRICS_PORT": str(port),
        "KEEPER_BLOCK_INTERVAL_MS": "60000",  # the devnet only mines when the keeper sends
        "KEEPER_STALE_HEAD_SECONDS": "0",  # and its clock is 2023's
    }
    log_file = tmp_path / "keeper.log"
    with log_file.open("w") as log:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "keeper.cli", "run"], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            deadline, settled = time.monotonic() + 120, False
            while not settled and time.monotonic() < deadline:
                # a view may revert on a state mid-liquidation (seen: SafeMath in getAccountValue)
                with contextlib.suppress(ContractLogicError):
                    settled = not liquidatable(devnet)
                time.sleep(0.5)
            assert settled
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert 'perp_keeper_transactions_total{status="mined"}' in metrics
            assert "perp_keeper_scan_seconds_count" in metrics
            health = httpx.get(f"http://127.0.0.1:{port}/health")
            assert health.status_code == 200, health.text
            assert health.json()["ok"] is True
            keeper.send_signal(signal.SIGTERM)
            keeper.wait(timeout=30)
        finally:
            if keeper.poll() is None:
                keeper.kill()
    err = log_file.read_text()
    assert keeper.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records  # JSON logs when stderr is not a terminal
    assert any("account" in r for r in records)  # with the account as context
