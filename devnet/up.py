"""`perp-keeper devnet up`: anvil + the real Perp v2 deployment + a scenario, ready to point a keeper at."""

from __future__ import annotations

import gzip
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Generic, TextIO, TypeVar

from devnet import synthetix, synthetix_scenario, toolchain
from devnet.anvil import Anvil
from devnet.chain import DevChain
from devnet.deploy import Deployment, deploy
from devnet.scenario import ScenarioBuilder, Trader, build
from devnet.synthetix import SynthetixDeployment
from devnet.synthetix_scenario import SynthetixScenario

GENESIS_TIMESTAMP = 1_700_000_000  # fixed, so every devnet run is the same chain


D = TypeVar("D", Deployment, SynthetixDeployment)
S = TypeVar("S", ScenarioBuilder, SynthetixScenario)


@dataclass
class Net(Generic[D, S]):
    anvil: Anvil
    chain: DevChain
    deployment: D
    scenario: S
    metadata_path: Path

    @property
    def url(self) -> str:
        return self.anvil.url

    def stop(self) -> None:
        self.anvil.stop()


Devnet = Net[Deployment, ScenarioBuilder]
SynthetixDevnet = Net[SynthetixDeployment, SynthetixScenario]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start(
    scenario: str = "all-kinds",
    port: int = 0,
    out_dir: Path = Path("state/devnet"),
    log: bool = True,
    anvil_args: Sequence[str] = (),
) -> Devnet:
    """Start anvil, deploy Perp v2, build `scenario`, write metadata + scenario manifest into `out_dir`."""
    return _start("Perp v2 (curie 2.8.4)", deploy, build, scenario, port, out_dir, log, anvil_args)


def start_synthetix(
    scenario: str = "liquidations",
    port: int = 0,
    out_dir: Path = Path("state/devnet"),
    log: bool = True,
    anvil_args: Sequence[str] = (),
) -> SynthetixDevnet:
    """The same for Synthetix Perps V2."""
    return _start(
        "Synthetix Perps V2 (synthetix 2.102.1)",
        synthetix.deploy,
        synthetix_scenario.build,
        scenario,
        port,
        out_dir,
        log,
        anvil_args,
    )


def _start(
    what: str,
    deploy_on: Callable[[DevChain], D],
    build_on: Callable[[D, str], S],
    scenario: str,
    port: int,
    out_dir: Path,
    log: bool,
    anvil_args: Sequence[str],
) -> Net[D, S]:
    say = _log if log else (lambda _m: None)
    toolchain.ensure()
    anvil = Anvil(port=port, extra_args=["--timestamp", str(GENESIS_TIMESTAMP), *anvil_args]).start()
    try:
        chain = DevChain(anvil.url)
        t0 = time.monotonic()
        say(f"deploying {what}, Uniswap v3 and stand-ins ...")
        deployment = deploy_on(chain)
        say(f"  deployed in {time.monotonic() - t0:.1f} s")
        t1 = time.monotonic()
        say(f"building scenario {scenario!r} ...")
        builder = build_on(deployment, scenario)
        say(f"  {len(builder.traders)} accounts in {time.monotonic() - t1:.1f} s")
        out_dir.mkdir(parents=True, exist_ok=True)
        metadata_path = out_dir / "metadata.json"
        metadata_path.write_text(json.dumps(deployment.metadata(), indent=2) + "\n")
        manifest = {"scenario": scenario, **builder.manifest()}
        (out_dir / "scenario.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        anvil.stop()
        raise
    return Net(anvil, chain, deployment, builder, metadata_path.resolve())


def dump_state(devnet: Devnet | SynthetixDevnet, path: Path) -> None:
    """Write the chain state in the format `anvil --load-state` reads."""
    raw = devnet.chain.rpc("anvil_dumpState")
    data = bytes.fromhex(raw.removeprefix("0x"))
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def risk_report(devnet: Devnet | SynthetixDevnet, out: TextIO = sys.stdout) -> None:
    """The scenario's accounts, riskiest first, read from the contracts' own views."""
    d = devnet.deployment
    if isinstance(d, SynthetixDeployment):
        synthetix_report(d, devnet.scenario.traders.values(), out)
        return
    clearing_house, account_balance, vault = d["ClearingHouse"], d["AccountBalance"], d["Vault"]
    rows = []
    for trader in devnet.scenario.traders.values():
        value = clearing_house.functions.getAccountValue(trader.address).call()
        requirement = account_balance.functions.getMarginRequirementForLiquidation(trader.address).call()
        has_order = account_balance.functions.hasOrder(trader.address).call()
        vault_liquidatable = vault.functions.isLiquidatable(trader.address).call()
        position_value = account_balance.functions.getTotalAbsPositionValue(trader.address).call()
        kinds = []
        if value < requirement:
            kinds.append("maker" if has_order else "taker")
        if vault_liquidatable:
            kinds.append("collateral")
        ratio = Fraction(value, position_value) if position_value else None
        rows.append((ratio, trader.label, trader.address, value, requirement, ",".join(kinds) or "-"))
    # riskiest first; accounts without positions last
    rows.sort(key=lambda r: (r[0] is None, r[0] or 0, r[1]))
    header = (
        f"{'account':<28} {'address':<42} {'account value':>14} {'mm requirement':>14} {'margin':>8}"
        "  liquidatable"
    )
    print(header, file=out)
    for ratio, label, address, value, requirement, kind in rows:
        margin = f"{_decimal(ratio * 100):7.2f}%" if ratio is not None else f"{'-':>8}"
        usd_value, usd_requirement = (
            _decimal(Fraction(value, 10**18)),
            _decimal(Fraction(requirement, 10**18)),
        )
        print(
            f"{label:<28} {address:<42} {usd_value:14,.2f} {usd_requirement:14,.2f} {margin}  {kind}",
            file=out,
        )


def synthetix_report(d: SynthetixDeployment, traders: Iterable[Trader], out: TextIO = sys.stdout) -> int:
    """Every scenario position in every market, from the market proxies' own views; returns how many
    are liquidatable or flagged."""
    waiting = 0
    print(
        f"{'account':<22} {'address':<42} {'market':<9} {'size':>10} {'margin':>12} {'flag fee':>10}  state",
        file=out,
    )
    for trader in traders:
        for market in d.markets.values():
            views = market.proxy.functions
            size = views.positions(trader.address).call()[4]
            if size == 0:
                continue
            margin = views.remainingMargin(trader.address).call()[0]
            fee = views.liquidationFee(trader.address).call()
            state = "flagged" if views.isFlagged(trader.address).call() else ""
            state = state or ("liquidatable" if views.canLiquidate(trader.address).call() else "-")
            waiting += state != "-"
            size_, margin_, fee_ = (_decimal(Fraction(x, 10**18)) for x in (size, margin, fee))
            print(
                f"{trader.label:<22} {trader.address:<42} {market.key:<9} {size_:>10.4f} "
                f"{margin_:>12,.2f} {fee_:>10,.2f}  {state}",
                file=out,
            )
    return waiting


def _decimal(value: Fraction) -> Decimal:
    return Decimal(value.numerator) / Decimal(value.denominator)


def serve_until_interrupted(devnet: Devnet | SynthetixDevnet) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _log("devnet is up; Ctrl-C stops it")
    while not stop.wait(0.5):
        pass
