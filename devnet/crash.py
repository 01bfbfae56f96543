"""A flash crash on the real Perp v2 devnet: N takers that all become liquidatable in the same block.

Perp's mark price is the median of the 15-s and 30-min market TWAPs and the index plus the 15-min
premium (AccountBalance._getMarkPrice), so on a live chain a crash reaches the marks over minutes and
accounts cross one after another. To have N accounts cross in ONE block, as the crash benchmark and
tests need, the crash is one price move (the vETH index, the WETH collateral price and the spot pool,
then one vETH pool trade, ~780 ticks, in one block) followed by a block whose timestamp is 15 minutes
later: at that block every TWAP window has passed the move, the mark jumps, and the takers (all long
vETH at 8x, so with one liquidation price) cross together. Before it their marks had not moved.

The takers are sized so that one 50 % round leaves each healthy (a 7.5 % fall: past maintenance at
8x, short of the second round), and each long is paired with a hedger's short of the same notional
so every taker enters at the same pool price. Deep maker liquidity around the crash price lets the
keeper close what it takes over without moving the market far. The keeper is funded as in every
scenario (USDC in the Vault for the initial margin of its takeovers, USDC in the wallet, ETH).

`extras` adds a maker whose orders the crash fills (cancelAllExcessOrders, then a liquidation) and
a WETH-collateral account (a takeover and seized WETH to sell). The rest reads what happened (who was
liquidatable when, PositionLiquidated, the keeper's transactions, what it holds) and runs the keeper.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import BlockIdentifier

from devnet import units, up
from devnet.anvil import Anvil
from devnet.chain import DEPLOYER, DevChain
from devnet.deploy import SPOT_POOL_FEE, UINT256_MAX, Deployment, attach
from devnet.scenario import DEADLINE, KEEPER_ADDRESS, KEEPER_KEY, ScenarioBuilder, Trader

ROOT = Path(__file__).resolve().parent.parent
START_PRICE = Decimal("1780")  # the deployment's vETH and WETH price
DROP_BPS = 750  # the crash: -7.5 %, past maintenance at 8x, short of a second 50 % round
CRASH_PRICE = START_PRICE * (10_000 - DROP_BPS) / 10_000
LEVERAGE = 8
TWAP_JUMP_SECONDS = 900  # the 15-min premium window: the mark has fully moved at the next block
FAST_GAS = 3_000_000  # a fixed gas limit skips eth_estimateGas while building
SELECTORS = {
    "65d461bd": "liquidate",
    "86b9d81f": "liquidate",
    "cc3606dc": "cancel",
    "b6b1b6c3": "close",
    "00aa9a89": "close",
    "08511abb": "collateral",
    "414bf389": "sell",
    "095ea7b3": "approve",
}


@dataclass
class Manifest:
    takers: list[str]  # addresses, in the order they were opened
    extras: dict[str, str] = field(default_factory=dict)  # label -> address

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text()))


# --- building ------------------------------------------------------------------------------------


def build(out_dir: Path, accounts: int = 50, extras: bool = False, log: bool = False) -> Manifest:
    """A fresh devnet with the crash scenario, dumped to `out_dir/state.json` (with metadata.json and
    crash.json) for `load`; the node is stopped."""
    net = up.start(scenario="empty", out_dir=out_dir, log=log)
    try:
        b = net.scenario
        _deep_book(b)
        takers = _takers(b, accounts)
        manifest = Manifest([t.address for t in takers])
        if extras:
            manifest.extras = {t.label: t.address for t in (_maker(b), _weth_holder(b))}
        b.settle_twaps()
        up.dump_state(net, out_dir / "state.json")
        (out_dir / "crash.json").write_text(json.dumps(manifest.__dict__, indent=2) + "\n")
    finally:
        net.stop()
    return manifest


def _deep_book(b: ScenarioBuilder) -> None:
    """Maker liquidity around the start and crash prices: closing takeovers moves the price little."""
    lp = b.trader("crash-lp", note="deep vETH liquidity 1400-2000; healthy maker")
    b.deposit_usdc(lp.address, units.usdc(20_000_000))
    b.add_liquidity(lp, "vETH", "1400", "2000", base="2000", quote="7200000")


def _takers(b: ScenarioBuilder, n: int) -> list[Trader]:
    """n longs at 8x on 1,000-5,000 USDC; after each, the hedger shorts the same notional back."""
    d, chain = b.deployment, b.chain
    usdc, vault, clearing_house = d["USDC"], d["Vault"], d["ClearingHouse"]
    hedger = b.trader("crash-hedger", note="shorts what each taker buys; healthy")
    margins = [1_000 + (i * 7_919) % 4_001 for i in range(n)]
    total = units.usdc(sum(margins) + 50_000_000)
    chain.send(usdc.functions.mint(DEPLOYER, total))
    chain.send(usdc.functions.approve(vault.address, UINT256_MAX))
    _fast(chain, vault.functions.depositFor(hedger.address, usdc.address, units.usdc(50_000_000)))
    base = d.market("vETH").base_token.address
    takers = []
    for i, margin in enumerate(margins):
        taker = b.trader(f"crash-taker-{i}", ("taker",), f"long vETH {LEVERAGE}x on {margin} USDC")
        notional = units.ether(margin * LEVERAGE)
        _fast(chain, vault.functions.depositFor(taker.address, usdc.address, units.usdc(margin)))
        _fast(chain, clearing_house.functions.openPosition(_trade(base, False, notional)), taker.address)
        _fast(chain, clearing_house.functions.openPosition(_trade(base, True, notional)), hedger.address)
        takers.append(taker)
    return takers


def _maker(b: ScenarioBuilder) -> Trader:
    """Quote-only orders 1720-1775 that the crash fills: a leveraged long with open orders."""
    maker = b.trader("crash-maker", ("maker",), "quote-only vETH 1720-1775, filled by the crash")
    b.deposit_usdc(maker.address, units.usdc(6_300))
    b.add_liquidity(maker, "vETH", "1720", "1775", quote="60000")
    return maker


def _weth_holder(b: ScenarioBuilder) -> Trader:
    """20 WETH as collateral, long vETH ~6x of it: the crash makes its USDC debt pass the threshold."""
    holder = b.trader("crash-weth", ("taker", "collateral"), "20 WETH, long vETH 210k")
    b.deposit_weth(holder.address, units.ether(20))
    b.open_position(holder, "vETH", "long", 210_000)
    return holder


def _trade(base: str, short: bool, notional: int) -> tuple[Any, ...]:
    """Exact quote: a long pays `notional`, a short receives it."""
    return (base, short, not short, notional, 0, DEADLINE, 0, b"\x00" * 32)


def _fast(chain: DevChain, call: ContractFunction, sender: str = DEPLOYER) -> None:
    tx_hash = call.transact({"from": Web3.to_checksum_address(sender), "gas": FAST_GAS})
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1:
        raise RuntimeError(f"{call.fn_name} from {sender} failed")


# --- running -------------------------------------------------------------------------------------


@dataclass
class CrashNet:
    """A crash devnet loaded from its dump, mining a block every `block_time` seconds."""

    anvil: Anvil
    chain: DevChain
    deployment: Deployment
    manifest: Manifest
    metadata_path: Path
    block_time: int

    @property
    def url(self) -> str:
        return self.anvil.url

    def stop(self) -> None:
        self.anvil.stop()


def load(built: Path, block_time: int, anvil_args: Sequence[str] = ()) -> CrashNet:
    """anvil from `built`'s dump, its clock resumed, then interval mining (started after the clock is
    set: a block stamped with today's wall clock would jump the chain years ahead)."""
    anvil = Anvil(load_state=built / "state.json", extra_args=anvil_args).start()
    try:
        chain = DevChain(anvil.url)
        chain.resume_clock()
        chain.rpc("anvil_setBlockTimestampInterval", block_time)
        deployment = attach(chain, json.loads((built / "metadata.json").read_text()))
        factory = deployment["UniswapV3Factory"]
        spot = factory.functions.getPool(
            deployment["USDC"].address, deployment["WETH9"].address, SPOT_POOL_FEE
        )
        deployment.spot_pool = chain.contract("UniswapV3Pool", spot.call())
        chain.rpc("evm_setIntervalMining", block_time)
    except BaseException:
        anvil.stop()
        raise
    manifest = Manifest.read(built / "crash.json")
    return CrashNet(anvil, chain, deployment, manifest, built / "metadata.json", block_time)


def crash(net: CrashNet) -> int:
    """The one price move; returns the block at which the marks have moved (every taker crosses there).

    Interval mining is paused while the move is made (the index and collateral prices, the spot pool,
    then the vETH pool trade, mined as they are sent; the trade's block is M); block M+1 is stamped 15
    minutes after M and interval mining resumes, so M+1 comes one block time later, like any block.
    """
    chain = net.chain
    b = ScenarioBuilder(net.deployment)
    mover = b.trader("price-mover")
    chain.rpc("evm_setIntervalMining", 0)
    try:
        price = str(CRASH_PRICE)
        market = net.deployment.market("vETH")
        target = units.tick_at_price(float(CRASH_PRICE))
        limit = int(Decimal("1.0001") ** (Decimal(target) / 2) * units.Q96)
        trade = (market.base_token.address, True, True, units.ether(10**7), 0, DEADLINE, limit, b"\x00" * 32)
        call = net.deployment["ClearingHouse"].functions.openPosition(trade)
        chain.rpc("evm_setAutomine", True)  # each transaction its own block, mined as it is sent
        try:
            b.set_index_price("vETH", price)
            b.set_collateral_price(price)
            b.move_spot_price(price)
            _fast(chain, call, mover.address)
        finally:
            chain.rpc("evm_setAutomine", False)
        moved = chain.w3.eth.get_block("latest")
        chain.rpc("evm_setNextBlockTimestamp", int(moved["timestamp"]) + TWAP_JUMP_SECONDS)
    finally:
        chain.rpc("evm_setIntervalMining", net.block_time)
    return int(moved["number"]) + 1


# --- reading what happened -----------------------------------------------------------------------


@dataclass(frozen=True)
class Liquidation:
    block: int
    trader: str
    base: str
    liquidator: str
    tx_hash: str


@dataclass(frozen=True)
class KeeperTx:
    block: int
    nonce: int
    kind: str  # liquidate, cancel, close, collateral, sell, approve, or the selector
    account: str | None  # the trader a liquidation, cancel or collateral liquidation names
    ok: bool
    gas_used: int
    tx_hash: str
    data: str


def liquidatable(net: CrashNet, accounts: Iterable[str], block: BlockIdentifier = "latest") -> set[str]:
    """Accounts the contracts call position-liquidatable at `block` (account value < maintenance)."""
    d = net.deployment
    found = set()
    for account in accounts:
        try:
            value = d["ClearingHouse"].functions.getAccountValue(account).call(block_identifier=block)
            need = (
                d["AccountBalance"]
                .functions.getMarginRequirementForLiquidation(account)
                .call(block_identifier=block)
            )
        except ContractLogicError:
            continue  # a view that reverts mid-liquidation says nothing
        if value < need:
            found.add(account)
    return found


def crossings(net: CrashNet, accounts: Sequence[str], first: int, last: int) -> dict[str, int]:
    """The first block in [first, last] at which each account was liquidatable."""
    found: dict[str, int] = {}
    for block in range(first, last + 1):
        waiting = [a for a in accounts if a not in found]
        if not waiting:
            break
        found.update({a: block for a in liquidatable(net, waiting, block)})
    return found


def liquidations(net: CrashNet, first: int, last: int) -> list[Liquidation]:
    event = net.deployment["ClearingHouse"].events.PositionLiquidated()
    logs = event.get_logs(from_block=first, to_block=last)
    return [
        Liquidation(
            int(e["blockNumber"]),
            str(e["args"]["trader"]),
            str(e["args"]["baseToken"]),
            str(e["args"]["liquidator"]),
            "0x" + bytes(e["transactionHash"]).hex(),
        )
        for e in logs
    ]


def keeper_txs(net: CrashNet, first: int, last: int, keeper: str = KEEPER_ADDRESS) -> list[KeeperTx]:
    """The keeper's transactions mined in [first, last], with their receipts."""
    w3 = net.chain.w3
    out = []
    for number in range(first, last + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert not isinstance(tx, bytes)
            if str(tx["from"]).lower() != keeper.lower():
                continue
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            data = "0x" + bytes(tx["input"]).hex()
            kind = SELECTORS.get(data[2:10], data[:10])
            named = kind in ("liquidate", "cancel", "collateral")
            account = Web3.to_checksum_address("0x" + data[34:74]) if named else None
            out.append(
                KeeperTx(
                    number,
                    int(tx["nonce"]),
                    kind,
                    account,
                    receipt["status"] == 1,
                    int(receipt["gasUsed"]),
                    "0x" + bytes(tx["hash"]).hex(),
                    data,
                )
            )
    return out


def held(net: CrashNet, keeper: str = KEEPER_ADDRESS) -> dict[str, dict[str, int]]:
    """What the keeper holds that it should close or sell: taker positions by market, WETH in its wallet
    (only what is not zero)."""
    d = net.deployment
    positions = {
        symbol: int(d["AccountBalance"].functions.getTakerPositionSize(keeper, m.base_token.address).call())
        for symbol, m in d.markets.items()
    }
    weth = int(d["WETH9"].functions.balanceOf(keeper).call())
    return {
        "positions": {k: v for k, v in positions.items() if v},
        "collateral": {"WETH": weth} if weth else {},
    }


# --- the keeper, as an operator runs it ----------------------------------------------------------


def keeper_env(net: CrashNet, state_db: Path, audit_log: Path, **settings: str) -> dict[str, str]:
    """`perp-keeper run` live with the devnet's keeper key, HTTP polling, metrics off, JSON logs."""
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        "KEEPER_PRIVATE_KEY": KEEPER_KEY,
        "KEEPER_RPC_URL": net.url,
        "KEEPER_METADATA": str(net.metadata_path),
        "KEEPER_STATE_DB": str(state_db),
        "KEEPER_AUDIT_LOG": str(audit_log),
        "KEEPER_METRICS_PORT": "0",
        "KEEPER_STALE_HEAD_SECONDS": "0",
        "KEEPER_BLOCK_INTERVAL_MS": str(net.block_time * 1000),
        "KEEPER_LOG_FORMAT": "json",
        **settings,
    }


def start_keeper(env: Mapping[str, str], log: IO[str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keeper.cli", "run", *args],
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=ROOT,
    )


def checkpoint(state_db: Path) -> int | None:
    """The block the keeper has indexed up to (read-only; None before the database exists)."""
    if not state_db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


def wait_caught_up(
    net: CrashNet, state_db: Path, keeper: subprocess.Popen[bytes], timeout: float = 90
) -> None:
    """Until the keeper has indexed two blocks past the head it started at: it ticks on every head."""
    target = net.chain.w3.eth.block_number + 2
    deadline = time.monotonic() + timeout
    while (checkpoint(state_db) or 0) < target:
        if keeper.poll() is not None:
            raise RuntimeError(f"the keeper exited with {keeper.returncode} before it caught up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the keeper did not index block {target} within {timeout:.0f} s")
        time.sleep(0.2)
