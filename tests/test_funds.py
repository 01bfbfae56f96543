"""Funds that look after themselves: the cap, budget and band logic (pure), then gas top-up, the Vault
target and the sUSD conversion end to end on the real contracts and Uniswap v3 pools of the devnets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from devnet import up
from devnet.chain import DevChain
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper import funds
from keeper.alerts import Alerter, Watch
from keeper.audit import AuditLog
from keeper.conditions import AlertSettings
from keeper.config import run_settings
from keeper.engine import Engine
from keeper.errors import SettingError
from keeper.flights import Result
from keeper.funds import Caps, Ledger
from keeper.journal import Journal
from keeper.notify import Notifier, targets
from keeper.protocol import Session
from keeper.quotes import UniswapV3
from keeper.tx import TxManager
from strategies.perp_v2.funds import PerpV2Funds
from strategies.perp_v2.plugin import PLUGIN, PerpSession
from strategies.synthetix_perps_v2.funds import SynthetixFunds
from strategies.synthetix_perps_v2.plugin import open_session as open_synthetix_session
from tests.helpers import run_once
from tests.test_alerts import SECRET, Receiver, delivered, quiet_facts

ETH, USDC = 10**18, 10**6
KEEPER = Web3.to_checksum_address(KEEPER_ADDRESS)

# --- pure: settings, caps, the day's budget, the band, labels -------------------------------------------


def test_every_action_is_off_by_default_and_on_with_its_first_setting() -> None:
    assert funds.funds_settings({}) == funds.FundsSettings()
    chosen = funds.funds_settings(
        {
            "KEEPER_GAS_TOPUP_FLOOR_ETH": "0.05",
            "KEEPER_GAS_TOPUP_TARGET_ETH": "0.2",
            "KEEPER_SUSD_CONVERT_ABOVE": "250",
            "KEEPER_VAULT_TARGET_USDC": "50000",
        }
    )
    assert chosen.gas == funds.GasTopup(5 * 10**16, 2 * 10**17, Caps(100 * USDC, 500 * USDC))
    assert chosen.susd == funds.SusdConvert(250 * ETH, Caps(10_000 * ETH, 50_000 * ETH))
    assert chosen.vault == funds.VaultTarget(50_000 * USDC, 5_000 * USDC, Caps(10_000 * USDC, 50_000 * USDC))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KEEPER_GAS_TOPUP_FLOOR_ETH": "0.1"}, "KEEPER_GAS_TOPUP_TARGET_ETH"),
        ({"KEEPER_GAS_TOPUP_FLOOR_ETH": "0.1", "KEEPER_GAS_TOPUP_TARGET_ETH": "0.1"}, "TARGET_ETH"),
        ({"KEEPER_SUSD_CONVERT_ABOVE": "lots"}, "KEEPER_SUSD_CONVERT_ABOVE"),
        ({"KEEPER_VAULT_TARGET_USDC": "-5"}, "KEEPER_VAULT_TARGET_USDC"),
        ({"KEEPER_VAULT_TARGET_USDC": "5", "KEEPER_VAULT_MOVE_MAX_USDC": "x"}, "KEEPER_VAULT_MOVE_MAX_USDC"),
    ],
)
def test_a_malformed_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingError, match=named):
        funds.funds_settings(env)


def test_caps_cut_an_action_then_the_day_refuses_with_the_reason() -> None:
    caps = Caps(per_action=100, per_day=250)
    assert funds.allowed(60, caps, 0) == (60, "")
    assert funds.allowed(400, caps, 0) == (100, "cut from 400 to the per-action cap 100")
    assert funds.allowed(400, caps, 200) == (50, "cut from 400 to what is left of the daily cap (50 of 250)")
    assert funds.allowed(1, caps, 250) == (0, "daily cap reached: 250 of 250 moved today")


def test_gas_is_bought_only_under_the_floor_and_up_to_the_target() -> None:
    assert funds.gas_shortfall(5, floor=10, target=30) == 25
    assert funds.gas_shortfall(10, floor=10, target=30) == 0
    assert funds.gas_shortfall(29, floor=10, target=30) == 0


def test_the_vault_band_does_not_flap() -> None:
    assert funds.vault_move(900, target=1_000, band=100) == 0
    assert funds.vault_move(1_100, target=1_000, band=100) == 0
    assert funds.vault_move(899, target=1_000, band=100) == 101
    assert funds.vault_move(1_101, target=1_000, band=100) == -101


def row(label: str, status: str, nonce: int, sender: str = "0xk") -> dict[str, Any]:
    return {"label": label, "status": status, "nonce": nonce, "sender": sender}


def test_the_days_spend_is_read_back_from_the_journal() -> None:
    label = funds.spend_label
    rows = [
        row(label(funds.GAS_TOPUP, 40, 7), "replaced", 1),  # a replacement of the nonce below
        row(label(funds.GAS_TOPUP, 40, 7), "mined", 1),
        row(label(funds.GAS_TOPUP, 30, 7), "pending", 2),
        row(label(funds.GAS_TOPUP, 99, 7), "reverted", 3),  # moved nothing
        row(label(funds.GAS_TOPUP, 50, 6), "mined", 4),  # yesterday
        row(label(funds.VAULT_DEPOSIT, 70, 7), "mined", 5),
        row("approve 0xrouter", "mined", 6),
    ]
    assert funds.parse_label(label(funds.VAULT_WITHDRAW, 12, 3)) == (funds.VAULT_WITHDRAW, 12, 3)
    assert funds.parse_label("sell via 0x") is None
    assert funds.spent(rows, [funds.GAS_TOPUP], 7) == 70
    assert funds.spent(rows, funds.VAULT, 7) == 70
    assert funds.spent(rows, [funds.SUSD_CONVERT], 7) == 0


# --- devnet: Perp v2 ------------------------------------------------------------------------------------

GAS_ENV = {"KEEPER_GAS_TOPUP_FLOOR_ETH": "2", "KEEPER_GAS_TOPUP_TARGET_ETH": "3"}


def funds_engine(
    session: PerpSession, tmp_path: Path, env: Mapping[str, str], *, live: bool = True
) -> Engine:
    """The Perp funds strategy alone, with a journal (the day's spend is read back from it)."""
    d = session.deployment
    assert d.quoter_v2 is not None
    assert d.swap_router is not None
    ledger = Ledger(lambda: session.store.journal_rows(sender=KEEPER_ADDRESS.lower()))
    sources: list[Any] = [UniswapV3(session.rpc, d.quoter_v2, d.swap_router)]
    strategy = PerpV2Funds(
        d, session.rpc, session.read, sources, funds.funds_settings(env), KEEPER_ADDRESS, ledger
    )
    journal = Journal(session.store)
    tx = TxManager(session.rpc, Account.from_key(KEEPER_KEY), d.chain_id, journal=journal) if live else None
    return Engine([strategy], session.rpc, KEEPER_ADDRESS, AuditLog(tmp_path / "audit.jsonl"), tx)


def one(results: list[Result], kind: str) -> Result:
    """The first pass's result for `kind` (run_once goes on while a pass executed something)."""
    return next(r for r in results if r.kind == kind)


async def head(engine: Engine) -> list[Result]:
    """One head, followed to its receipts."""
    results = await engine.tick()
    await engine.drain()
    return results


def usdc_of(devnet: up.Devnet, who: str = KEEPER_ADDRESS) -> int:
    return int(devnet.deployment["USDC"].functions.balanceOf(who).call())


async def test_gas_top_up_buys_eth_between_the_floor_and_the_target(
    devnet: up.Devnet, chain: DevChain, session: PerpSession, tmp_path: Path
) -> None:
    d = devnet.deployment
    chain.set_balance(KEEPER_ADDRESS, 1 * ETH)
    usdc_before = usdc_of(devnet)
    engine = funds_engine(
        session,
        tmp_path,
        {**GAS_ENV, "KEEPER_GAS_TOPUP_MAX_USDC": "10000", "KEEPER_GAS_TOPUP_DAILY_MAX_USDC": "20000"},
    )
    results = await engine.run_once()
    assert one(results, funds.GAS_TOPUP).status == "executed", results
    eth = chain.w3.eth.get_balance(KEEPER)
    assert 2 * ETH < eth < 3 * ETH
    sold = usdc_before - usdc_of(devnet)
    assert 3_000 * USDC < sold < 4_000 * USDC  # ~2 ETH at ~1,780 USDC
    assert d["USDC"].functions.allowance(KEEPER_ADDRESS, d["SwapRouter"].address).call() == 0  # exact
    assert d["WETH9"].functions.balanceOf(KEEPER_ADDRESS).call() < ETH // 20  # the slippage margin only
    assert not [r for r in await engine.run_once() if r.status == "executed"]  # above the floor now


async def test_gas_top_up_is_cut_to_its_cap_and_refused_past_the_days_even_after_a_restart(
    devnet: up.Devnet, chain: DevChain, session: PerpSession, tmp_path: Path
) -> None:
    chain.set_balance(KEEPER_ADDRESS, 1 * ETH)
    env = {**GAS_ENV, "KEEPER_GAS_TOPUP_MAX_USDC": "500", "KEEPER_GAS_TOPUP_DAILY_MAX_USDC": "500"}
    usdc_before = usdc_of(devnet)
    engine, watch = funds_engine(session, tmp_path, env), Watch(block_interval=2.0)
    engine.hooks.planned, engine.hooks.landed, engine.hooks.ticked = watch.planned, watch.landed, watch.ticked
    results = await head(engine)
    assert one(results, funds.GAS_TOPUP).status == "executed", results
    (moved,) = watch.facts.funds  # the funds alert's event: the spending step, mined
    assert moved[1].startswith("funds gas-topup 500000000 on day ")
    assert usdc_before - usdc_of(devnet) == 500 * USDC  # cut from ~3,500 to the cap
    assert chain.w3.eth.get_balance(KEEPER) < 2 * ETH  # still under the floor
    restarted = funds_engine(session, tmp_path, env)  # a new process: the spend comes from the journal
    refused = one(await restarted.run_once(), funds.GAS_TOPUP)
    assert refused.status == "skipped"
    assert refused.reason == "gas-topup: daily cap reached: 500,000,000 of 500,000,000 moved today"
    assert usdc_before - usdc_of(devnet) == 500 * USDC
    await head(engine)  # the first process, still running, is refused too: the funds-capped alert
    assert watch.facts.funds_refused == {funds.GAS_TOPUP: refused.reason}
    assert watch.facts.stuck == {}  # a refused funds action is not a stuck liquidation
    chain.advance_time(funds.DAY_SECONDS)  # the next day has its own budget
    assert one(await restarted.run_once(), funds.GAS_TOPUP).status == "executed"
    assert usdc_before - usdc_of(devnet) == 1_000 * USDC


async def test_dry_run_sends_nothing_and_records_what_it_would_do(
    devnet: up.Devnet, chain: DevChain, session: PerpSession, tmp_path: Path
) -> None:
    chain.set_balance(KEEPER_ADDRESS, 1 * ETH)
    nonce, usdc_before = chain.w3.eth.get_transaction_count(KEEPER), usdc_of(devnet)
    results = await funds_engine(session, tmp_path, GAS_ENV, live=False).run_once()
    found = one(results, funds.GAS_TOPUP)
    assert found.status == "dry-run"
    assert found.reason.startswith("gas-topup: sell 100.00 USDC for >= ")  # the default per-action cap
    assert chain.w3.eth.get_transaction_count(KEEPER) == nonce
    assert usdc_of(devnet) == usdc_before
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (decision,) = [r for r in records if r["event"] == "decision"]
    assert decision["decision"] == "execute"
    assert decision["dry_run"] is True
    assert decision["inputs"]["stage"] == funds.FUNDS
    assert decision["inputs"]["amount"] == 100 * USDC
    steps = [s["label"] for s in decision["steps"]]
    assert steps[-2:] == [
        funds.spend_label(funds.GAS_TOPUP, 100 * USDC, decision["inputs"]["day"]),
        "unwrap WETH",
    ]
    assert next(r["simulation"]["ok"] for r in records if r["event"] == "simulation") is True


def vault_of(devnet: up.Devnet) -> int:
    d = devnet.deployment
    return int(d["Vault"].functions.getBalanceByToken(KEEPER_ADDRESS, d["USDC"].address).call())


async def test_the_vault_is_kept_at_its_target_within_the_caps(
    devnet: up.Devnet, chain: DevChain, session: PerpSession, tmp_path: Path
) -> None:
    d = devnet.deployment
    held, wallet = vault_of(devnet), usdc_of(devnet)
    target = held // USDC - 70_000  # the Vault holds 70,000 USDC too many
    env = {
        "KEEPER_VAULT_TARGET_USDC": str(target),
        "KEEPER_VAULT_BAND_USDC": "1000",
        "KEEPER_VAULT_MOVE_MAX_USDC": "50000",
        "KEEPER_VAULT_MOVE_DAILY_MAX_USDC": "60000",
    }
    engine = funds_engine(session, tmp_path, env)
    assert one(await head(engine), funds.VAULT_WITHDRAW).status == "executed"
    assert (held - vault_of(devnet), usdc_of(devnet) - wallet) == (50_000 * USDC, 50_000 * USDC)
    cut = one(await head(engine), funds.VAULT_WITHDRAW)  # 20,000 wanted, 10,000 left today
    assert cut.status == "executed"
    assert held - vault_of(devnet) == 60_000 * USDC
    refused = one(await head(engine), funds.VAULT_WITHDRAW)
    assert refused.reason.startswith("vault-withdraw: daily cap reached")
    chain.advance_time(funds.DAY_SECONDS)
    now = vault_of(devnet)
    deposit_env = {**env, "KEEPER_VAULT_TARGET_USDC": str(now // USDC + 5_000)}
    deposit = one(await head(funds_engine(session, tmp_path, deposit_env)), funds.VAULT_DEPOSIT)
    assert deposit.status == "executed"
    assert vault_of(devnet) - now == 5_000 * USDC
    assert d["USDC"].functions.allowance(KEEPER_ADDRESS, d["Vault"].address).call() == 0  # exact
    # at its target, inside the band: no move either way
    assert not (await funds_engine(session, tmp_path, deposit_env).tick())


# --- devnet: Synthetix Perps V2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[up.SynthetixDevnet]:
    net = up.start_synthetix(out_dir=tmp_path_factory.mktemp("synthetix-funds"), log=False)
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
async def snx_session(snx: up.SynthetixDevnet, tmp_path: Path) -> AsyncIterator[Session]:
    snapshot = snx.chain.snapshot()
    opened = await open_synthetix_session(snx.url, snx.metadata_path, tmp_path / "snx.sqlite")
    try:
        yield opened
    finally:
        await opened.close()
        snx.chain.revert(snapshot)


async def test_susd_above_the_threshold_is_converted_to_usdc_within_the_caps(
    snx: up.SynthetixDevnet, snx_session: Session, tmp_path: Path
) -> None:
    d, net = snx_session.deployment, snx.deployment
    net.chain.send(net["SynthsUSD"].functions.issue(KEEPER_ADDRESS, 3_000 * ETH))
    susd, usdc = net["SynthsUSD"].functions, net["USDC"].functions
    held, usdc_before = susd.balanceOf(KEEPER_ADDRESS).call(), usdc.balanceOf(KEEPER_ADDRESS).call()
    env = {
        "KEEPER_SUSD_CONVERT_ABOVE": "500",
        "KEEPER_SUSD_CONVERT_MAX_SUSD": "2000",
        "KEEPER_SUSD_CONVERT_DAILY_MAX_SUSD": "2500",
    }
    chosen = funds.funds_settings(env).susd
    assert chosen is not None
    ledger = Ledger(lambda: snx_session.store.journal_rows(sender=KEEPER_ADDRESS.lower()))
    uniswap = UniswapV3(snx_session.rpc, d.quoter_v2, d.swap_router)
    strategy = SynthetixFunds(
        d.susd, d.usdc, snx_session.rpc, snx_session.read, [uniswap], chosen, KEEPER_ADDRESS, ledger
    )
    tx = TxManager(
        snx_session.rpc, Account.from_key(KEEPER_KEY), d.chain_id, journal=Journal(snx_session.store)
    )
    engine = Engine([strategy], snx_session.rpc, KEEPER_ADDRESS, AuditLog(None), tx)
    first = one(await head(engine), funds.SUSD_CONVERT)
    assert first.status == "executed", first
    assert held - susd.balanceOf(KEEPER_ADDRESS).call() == 2_000 * ETH  # cut to the per-action cap
    received = usdc.balanceOf(KEEPER_ADDRESS).call() - usdc_before
    assert 1_970 * USDC < received < 2_000 * USDC  # at the pool's 0.998, less its fee
    second = one(await head(engine), funds.SUSD_CONVERT)  # 1,000 held: cut to the day's 500 left
    assert second.status == "executed", second
    assert held - susd.balanceOf(KEEPER_ADDRESS).call() == 2_500 * ETH
    # 500 left: not above the threshold, nothing to do
    assert not [r for r in await head(engine) if r.kind == funds.SUSD_CONVERT]
    assert usdc.allowance(KEEPER_ADDRESS, d.swap_router).call() == 0


# --- alerts ---------------------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    yield r
    r.server.close()


@pytest.mark.parametrize(
    ("key", "fire"),
    [
        ("funds", lambda f: f.funds.append((f.now, "funds gas-topup 500000000 on day 7: mined"))),
        ("funds-capped:gas-topup", lambda f: f.funds_refused.update({funds.GAS_TOPUP: "daily cap reached"})),
    ],
)
async def test_funds_alerts_fire_once_resolve_once_and_carry_no_secret(
    receiver: Receiver, key: str, fire: Any
) -> None:
    notifier = Notifier(targets(receiver.url), "0xKeeper00000000")
    alerter = Alerter(AlertSettings(), notifier)
    notifier.start()
    try:
        facts = quiet_facts()
        assert alerter.evaluate(facts) == []
        fire(facts)
        for _ in range(3):
            alerter.evaluate(facts)
        assert [a.resolved for a in alerter.evaluate(quiet_facts())] == [True]
        await delivered(notifier, 2)
    finally:
        await notifier.close()
    bodies = [body for _, body in receiver.posts]
    assert [(b["key"], b["resolved"]) for b in bodies] == [(key, False), (key, True)]
    assert all(SECRET not in json.dumps(b) for b in bodies)


# --- wiring ---------------------------------------------------------------------------------------------


async def test_the_plugin_ranks_funds_after_every_liquidation_and_only_when_asked(
    devnet: up.Devnet, session: PerpSession
) -> None:
    settings = run_settings({})
    off = PLUGIN.wire(session.session, settings, {}, KEEPER_ADDRESS)
    assert not any(isinstance(s, PerpV2Funds) for s in off.strategies)
    on = PLUGIN.wire(session.session, settings, GAS_ENV, KEEPER_ADDRESS)
    assert isinstance(on.strategies[-1], PerpV2Funds)
    assert len(on.strategies) == len(off.strategies) + 1
    await off.close()
    await on.close()


def test_a_setting_for_the_other_protocol_is_exit_2_with_one_line(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("KEEPER_SUSD_CONVERT_ABOVE", "100")
    code, _ = run_once(devnet.url, devnet.metadata_path, tmp_path / "s.sqlite", "--dry-run")
    assert code == 2
    assert "KEEPER_SUSD_CONVERT_ABOVE: Perp v2 pays no sUSD" in capsys.readouterr().err
