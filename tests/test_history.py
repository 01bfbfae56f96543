"""`perp-keeper history` against the real contracts: every event the keeper's receipts hold, to the wei;
lateness and missed windows against the contracts' own views block by block; resumable reading."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from web3 import Web3

from devnet import up
from devnet.chain import DevChain
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY, ScenarioBuilder
from tests.helpers import cli_output, run_once


@pytest.fixture(scope="class")
def keeper_run(devnet: up.Devnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One `run --once` of the keeper on the all-kinds scenario: (head before, head after); undone after."""
    snapshot = devnet.chain.snapshot()
    before = devnet.chain.w3.eth.block_number
    saved = os.environ.get("KEEPER_PRIVATE_KEY")
    os.environ["KEEPER_PRIVATE_KEY"] = KEEPER_KEY
    try:
        code, summary = run_once(
            devnet.url,
            devnet.metadata_path,
            tmp_path_factory.mktemp("run") / "k.sqlite",
            "--metrics-port",
            "0",
        )
        assert code == 0, summary
        yield before, devnet.chain.w3.eth.block_number
    finally:
        if saved is None:
            os.environ.pop("KEEPER_PRIVATE_KEY", None)
        else:
            os.environ["KEEPER_PRIVATE_KEY"] = saved
        devnet.chain.revert(snapshot)


def history(devnet: up.Devnet, db: Path, *extra: str, url: str | None = None) -> tuple[int, str]:
    return cli_output(
        "history",
        "--rpc-url",
        url or devnet.url,
        "--metadata",
        str(devnet.metadata_path),
        "--state-db",
        str(db),
        *extra,
    )


def history_json(devnet: up.Devnet, db: Path, *extra: str, url: str | None = None) -> list[dict[str, Any]]:
    code, out = history(devnet, db, "--json", *extra, url=url)
    assert code == 0, out
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def receipt_events(devnet: up.Devnet, first: int, last: int) -> list[dict[str, Any]]:
    """What the keeper's own transactions logged, decoded by web3 with the artifacts' ABIs."""
    d = devnet.deployment
    w3 = devnet.chain.w3
    ch, vault = d["ClearingHouse"], d["Vault"]
    keeper = Web3.to_checksum_address(KEEPER_ADDRESS)
    out: list[dict[str, Any]] = []
    for number in range(first, last + 1):
        block: Any = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if tx["from"] != keeper:
                continue
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            changed = {}
            for log in receipt["logs"]:
                found = _decode(ch, vault, log)
                if found is None:
                    continue
                name, args = found
                row = {"block": number, "tx": "0x" + receipt["transactionHash"].hex().removeprefix("0x")}
                row["log_index"] = log["logIndex"]
                if name == "PositionChanged":
                    changed[(args["trader"], args["baseToken"])] = args["exchangedPositionNotional"]
                    continue
                if name == "LiquidityChanged" and args["liquidity"] >= 0:
                    continue
                if name == "PositionLiquidated":
                    row["reward"] = (
                        changed[(args["trader"], args["baseToken"])] + changed[(keeper, args["baseToken"])]
                    )
                out.append({**row, "event": name, "args": dict(args)})
    return out


def _decode(ch: Any, vault: Any, log: Any) -> tuple[str, Any] | None:
    names: dict[str, tuple[str, ...]] = {
        ch.address: ("PositionLiquidated", "LiquidityChanged", "PositionChanged")
    }
    names[vault.address] = ("CollateralLiquidated", "BadDebtSettled")
    contract = ch if log["address"] == ch.address else vault if log["address"] == vault.address else None
    if contract is None:
        return None
    for name in names[contract.address]:
        event = getattr(contract.events, name)()
        if "0x" + bytes(log["topics"][0]).hex() == event.topic:
            return name, event.process_log(log)["args"]
    return None


KINDS = {
    "PositionLiquidated": "position",
    "CollateralLiquidated": "collateral",
    "BadDebtSettled": "bad-debt",
    "LiquidityChanged": "orders-cancelled",
}


def snake(name: str) -> str:
    return "".join(
        "_" + c.lower() if c.isupper() and i and name[i - 1].islower() | name[i - 1].isdigit() else c.lower()
        for i, c in enumerate(name)
    )


class TestAfterAKeeperRun:
    """One `run --once` on the all-kinds scenario (undone after the class), read back by `history`."""

    def test_history_lists_every_event_of_the_keepers_receipts_to_the_wei(
        self, devnet: up.Devnet, keeper_run: tuple[int, int], tmp_path: Path
    ) -> None:
        before, after = keeper_run
        rows = history_json(
            devnet, tmp_path / "h.sqlite", "--from-block", str(before + 1), "--to-block", str(after)
        )
        expected = receipt_events(devnet, before + 1, after)
        assert len(expected) >= 25
        assert {e["event"] for e in expected} == set(KINDS)  # all four kinds happened
        assert [(r["block"], r["tx"], r["log_index"]) for r in rows] == [
            (e["block"], e["tx"], e["log_index"]) for e in expected
        ]
        keeper = Web3.to_checksum_address(KEEPER_ADDRESS)
        symbols = {m.base_token.address: s for s, m in devnet.deployment.markets.items()}
        for row, event in zip(rows, expected, strict=True):
            assert row["protocol"] == "perp-v2"
            assert row["kind"] == KINDS[event["event"]]
            for name, value in event["args"].items():  # every argument under its own name, exactly
                assert row[snake(name)] == value, (name, row)
            trader = event["args"].get("trader", event["args"].get("maker"))
            assert row["trader"] == trader
            assert row["liquidator"] == (None if row["kind"] == "bad-debt" else keeper)
            if row["kind"] == "position":
                assert row["market"] == symbols[event["args"]["baseToken"]]
                assert row["notional_usd"] == event["args"]["positionNotional"]
                assert row["liquidator_reward"] == event["reward"]
                fee = event["args"]["liquidationFee"]
                assert row["liquidator_reward"] in (fee // 2, fee)  # half, or all of it on bad debt
            if row["kind"] == "bad-debt":
                assert row["notional_usd"] == event["args"]["amount"] * 10**12
            if row["kind"] == "collateral":
                assert row["market"] == "WETH"
                assert row["discount_ratio"] == 100_000
                paid = (
                    row["repaid_settlement_without_insurance_fund_fee_x10_s"]
                    + row["insurance_fund_fee_x10_s"]
                )
                assert row["notional_usd"] - row["liquidator_reward"] == paid * 10**12
        stamps = {r["block"]: r["timestamp"] for r in rows}
        for block, stamp in stamps.items():
            assert devnet.chain.w3.eth.get_block(block)["timestamp"] == stamp

    def test_table_csv_and_plot_say_the_same(
        self, devnet: up.Devnet, keeper_run: tuple[int, int], tmp_path: Path
    ) -> None:
        before, after = keeper_run
        span = ("--from-block", str(before + 1), "--to-block", str(after))
        rows = history_json(devnet, tmp_path / "h.sqlite", *span)
        code, table = history(devnet, tmp_path / "h.sqlite", *span, "--plot", str(tmp_path / "h.html"))
        assert code == 0
        assert f"\n{len(rows)} events\n" in table
        rewards = sum(r["liquidator_reward"] or 0 for r in rows)
        keeper_line = next(
            line for line in table.splitlines() if line.startswith(Web3.to_checksum_address(KEEPER_ADDRESS))
        )
        assert f"{rewards / 10**18:,.2f}" in keeper_line
        assert (tmp_path / "h.html").read_text().count("<svg") == 2  # the page: two charts
        code, _ = history(devnet, tmp_path / "h.sqlite", *span, "--plot", str(tmp_path / "h.svg"))
        assert code == 0
        svg = ElementTree.parse(tmp_path / "h.svg").getroot()  # well-formed, one picture
        bars = [
            r
            for r in svg.iter("{http://www.w3.org/2000/svg}rect")
            if r.find("{http://www.w3.org/2000/svg}title") is not None
        ]
        assert sum(int(r.findtext("{http://www.w3.org/2000/svg}title", "0").split()[0]) for r in bars) == len(
            rows
        )
        code, _ = history(devnet, tmp_path / "h.sqlite", *span, "--csv", str(tmp_path / "h.csv"))
        assert code == 0
        parsed = list(csv.DictReader(io.StringIO((tmp_path / "h.csv").read_text())))
        assert [int(r["block"]) for r in parsed] == [r["block"] for r in rows]
        assert [r["position_notional"] for r in parsed] == [
            str(r.get("position_notional", "") or "") for r in rows
        ]

    def test_history_resumes_from_its_cache_and_adapts_to_refused_ranges(
        self, devnet: up.Devnet, keeper_run: tuple[int, int], tmp_path: Path
    ) -> None:
        _, after = keeper_run
        db = tmp_path / "h.sqlite"
        with RpcProxy(devnet.url, max_log_range=8) as proxy:
            first = history_json(devnet, db, url=proxy.url)
            assert proxy.refused_log_ranges > 0
            cold = proxy.methods["eth_getLogs"]
            proxy.methods.clear()
            again = history_json(devnet, db, url=proxy.url)
            warm = proxy.methods["eth_getLogs"]
        assert again == first
        # final blocks (older than the reorg window, 64) were cached; the second run reads only the rest
        with sqlite3.connect(db) as conn:
            (covered,) = conn.execute("SELECT max(last) FROM history_spans").fetchone()
        assert covered == after - 64
        assert cold > 20 + warm // 2
        assert len([r for r in first if r["kind"] == "position"]) == 15

    def test_compensation_values_the_liquidated_at_the_block_before_their_first_liquidation(
        self, devnet: up.Devnet, keeper_run: tuple[int, int], tmp_path: Path
    ) -> None:
        before, after = keeper_run
        rows = history_json(
            devnet, tmp_path / "h.sqlite", "--from-block", str(before + 1), "--to-block", str(after)
        )
        first: dict[str, int] = {}
        for r in rows:
            if r["kind"] in ("position", "collateral"):
                first.setdefault(r["trader"], r["block"])
        connection = (
            *("--rpc-url", devnet.url, "--metadata", str(devnet.metadata_path)),
            *("--state-db", str(tmp_path / "h.sqlite")),
        )
        code, out = cli_output(
            "compensation",
            *connection,
            "--liquidated-between",
            str(before + 1),
            str(after),
            *("--fund", "5000", "--policy", "smallest-first", "--json"),
        )
        assert code == 0, out
        report = json.loads(out)
        assert {r["account"]: r["block"] for r in report["rows"]} == {a: b - 1 for a, b in first.items()}
        for row in report["rows"][:3]:  # the same value as valuing that account alone at that block
            (tmp_path / "one.txt").write_text(row["account"] + "\n")
            code, out = cli_output(
                "compensation",
                *connection,
                "--block",
                str(row["block"]),
                "--accounts",
                str(tmp_path / "one.txt"),
                *("--fund", "5000", "--policy", "pro-rata", "--json"),
            )
            assert code == 0, out
            assert json.loads(out)["rows"][0]["value"] == row["value"]


def test_operator_mistakes_are_one_line_and_exit_2(devnet: up.Devnet, tmp_path: Path) -> None:
    head = devnet.chain.w3.eth.block_number
    for extra in (
        ("--to-block", str(head + 10)),
        ("--from-block", "50", "--to-block", "40"),
        ("--plot", str(tmp_path / "h.png")),
    ):
        code, out = history(devnet, tmp_path / "h.sqlite", *extra)
        assert code == 2, extra
        assert out == ""


def liquidatable(devnet: up.Devnet, who: str, block: int) -> bool:
    d = devnet.deployment
    value = d["ClearingHouse"].functions.getAccountValue(who).call(block_identifier=block)
    requirement = (
        d["AccountBalance"].functions.getMarginRequirementForLiquidation(who).call(block_identifier=block)
    )
    return bool(requirement > 0 and value < requirement)


def runs(flags: dict[int, bool]) -> list[tuple[int, int]]:
    """Runs of consecutive True blocks, as (first, last)."""
    out: list[tuple[int, int]] = []
    for block in sorted(flags):
        if flags[block]:
            if out and out[-1][1] == block - 1:
                out[-1] = (out[-1][0], block)
            else:
                out.append((block, block))
    return out


def test_lateness_gives_the_crossing_blocks_and_the_missed_windows(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ETH falls (eth-long-4x crosses into liquidation), recovers (it leaves it, unliquidated: a missed
    window), falls again (it crosses again) and the keeper liquidates it 4 blocks later. The crossing
    blocks are the contracts' own views read block by block; nobody liquidates the accounts that were
    already liquidatable, so each has one missed window over the whole range."""
    builder = ScenarioBuilder(devnet.deployment, dict(devnet.scenario.traders))
    victim = builder.traders["eth-long-4x"].address
    mover = builder.traders["price-mover"]
    start = chain.w3.eth.block_number
    for price in ("1400", "1513", "1400"):
        builder.move_market("vETH", price, mover)
        builder.settle_twaps()
    for _ in range(3):
        chain.rpc("evm_mine")
    ch = devnet.deployment["ClearingHouse"]
    base = devnet.deployment.market("vETH").base_token.address
    keeper = Web3.to_checksum_address(KEEPER_ADDRESS)
    liquidated = chain.send(ch.functions.liquidate(victim, base, 0), keeper)["blockNumber"]
    chain.rpc("evm_mine")
    end = chain.w3.eth.block_number
    truth = runs({b: liquidatable(devnet, victim, b) for b in range(start, end + 1)})
    (missed_run, late_run, *_) = truth  # crossed, recovered; crossed again, then liquidated
    assert start < missed_run[0]
    assert missed_run[1] < late_run[0] - 1
    assert late_run[0] < liquidated
    labels = {t.address: t.label for t in devnet.scenario.traders.values()}
    already = {a for a in labels if liquidatable(devnet, a, start) and liquidatable(devnet, a, end)}
    assert {"eth-long-7x", "btc-short-8x"} <= {labels[a] for a in already}
    span = ("--from-block", str(start), "--to-block", str(end), "--lateness")
    for step in ("1", "4"):
        monkeypatch.setenv("KEEPER_LATENESS_STEP", step)
        rows = history_json(devnet, tmp_path / f"h{step}.sqlite", *span)
        (late,) = [r for r in rows if r["kind"] == "position"]
        assert (late["trader"], late["block"]) == (victim, liquidated)
        assert late["first_liquidatable_block"] == late_run[0]
        assert late["blocks_late"] == liquidated - late_run[0] - 1
        missed = [(r["trader"], r["from_block"], r["to_block"]) for r in rows if r["kind"] == "missed"]
        assert sorted(missed) == sorted([(victim, *missed_run), *((a, start, end) for a in already)])


@pytest.fixture(scope="module")
def snx_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[up.SynthetixDevnet, int, int]]:
    """A Synthetix Perps V2 devnet after one keeper `run --once`: (devnet, head before, head after)."""
    net = up.start_synthetix(out_dir=tmp_path_factory.mktemp("snx-history"), log=False)
    saved = os.environ.get("KEEPER_PRIVATE_KEY")
    os.environ["KEEPER_PRIVATE_KEY"] = KEEPER_KEY
    try:
        before = net.chain.w3.eth.block_number
        db = tmp_path_factory.mktemp("snx-run") / "k.sqlite"
        code, out = run_once(
            net.url, net.metadata_path, db, "--protocol", "synthetix-perps-v2", "--metrics-port", "0"
        )
        assert code == 0, out
        yield net, before, net.chain.w3.eth.block_number
    finally:
        if saved is None:
            os.environ.pop("KEEPER_PRIVATE_KEY", None)
        else:
            os.environ["KEEPER_PRIVATE_KEY"] = saved
        net.stop()


def test_synthetix_flags_and_liquidations_match_the_receipts(
    snx_run: tuple[up.SynthetixDevnet, int, int], tmp_path: Path
) -> None:
    net, before, after = snx_run
    code, out = cli_output(
        *("history", "--json", "--rpc-url", net.url, "--metadata", str(net.metadata_path)),
        *(
            "--state-db",
            str(tmp_path / "h.sqlite"),
            "--from-block",
            str(before + 1),
            "--to-block",
            str(after),
        ),
    )
    assert code == 0, out
    rows = json.loads(out)
    w3 = net.chain.w3
    markets = {m.proxy.address: m for m in net.deployment.markets.values()}
    expected = []
    for number in range(before + 1, after + 1):
        for tx_hash in w3.eth.get_block(number)["transactions"]:
            receipt = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            for log in receipt["logs"]:
                market = markets.get(log["address"])
                if market is None:
                    continue
                for name, kind in (("PositionFlagged", "flag"), ("PositionLiquidated", "position")):
                    event = getattr(market.proxy.events, name)()
                    if "0x" + bytes(log["topics"][0]).hex() == event.topic:
                        args = event.process_log(log)["args"]
                        expected.append((number, log["logIndex"], kind, market.key, dict(args)))
    assert {e[2] for e in expected} == {"flag", "position"}
    assert [(r["block"], r["log_index"], r["kind"], r["market"]) for r in rows] == [e[:4] for e in expected]
    liquidations = {(e[4]["account"], e[3]): e[4] for e in expected if e[2] == "position"}
    for row, (number, _, kind, key, args) in zip(rows, expected, strict=True):
        assert row["protocol"] == "synthetix-perps-v2"
        for name, value in args.items():
            assert row[snake(name)] == value, name
        assert row["timestamp"] == w3.eth.get_block(number)["timestamp"]
        assert row["trader"] == args["account"]
        liquidation = liquidations[(args["account"], key)]
        if kind == "flag":
            assert row["timestamp"] == args["timestamp"]  # the event's own timestamp is the block's
            assert row["liquidator"] == args["flagger"]
            assert row["liquidator_reward"] == liquidation["flaggerFee"]  # paid at the liquidation
        else:
            assert row["liquidator"] == args["liquidator"]
            assert row["liquidator_reward"] == args["liquidatorFee"]
        assert row["notional_usd"] == abs(liquidation["size"]) * row["price"] // 10**18
