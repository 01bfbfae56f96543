"""Faults survived: `perp-keeper run`, live, behind RPC endpoints that fail the way providers do.

    python bench/faults.py [--faults 1000] [--seed 7] [--rate 0.4] [--json]

A fresh devnet (the `all-kinds` scenario: every kind of liquidatable account) mines a block every 2 s.
The keeper runs as a subprocess with the devnet keeper's key and three endpoints in `--rpc-url`: a
dead one (nothing listens) and two fault-injecting proxies (devnet/proxy.py) whose seeded chaos hits a
fraction `--rate` of requests with: delays beyond `KEEPER_RPC_TIMEOUT_SECONDS`, 429 with Retry-After,
500/502/503, JSON-RPC errors, malformed JSON, a batch answer missing an element, a stale head, and a
transaction that reaches the node but whose answer is lost. It runs until `--faults` faults were
injected and nothing is liquidatable (or `--timeout`), then SIGTERMs the keeper and reports:

* `exits`: times the keeper exited on its own (target 0);
* `duplicates`: journal steps with more than one transaction mined (target 0), and `unjournaled`:
  the keeper's transactions on chain the journal does not know (target 0);
* `liquidatable_before` / `liquidatable_after` (target 0 after);
* `secrets`: occurrences of the key, the aggregator API key or an endpoint's URL path in everything
  the keeper printed and its audit trail (target 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devnet import faults, toolchain, up  # noqa: E402
from devnet.proxy import RpcProxy  # noqa: E402
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY  # noqa: E402

KINDS = (
    faults.DELAY,
    faults.HTTP_429,
    faults.HTTP_500,
    faults.HTTP_502,
    faults.HTTP_503,
    faults.RPC_ERROR,
    faults.MALFORMED_JSON,
    faults.BATCH_MISSING_ELEMENT,
    faults.STALE_HEAD,
    faults.LOST_SEND_ANSWER,
)
RPC_TIMEOUT_SECONDS = 2
DEAD_ENDPOINT = "http://127.0.0.1:1/v3/dEaDeNdPoInTkEy"
SECRET_PATHS = ("sEcReTpAtHoNe", "sEcReTpAtHtWo", "dEaDeNdPoInTkEy")
API_KEY = "zEroXaPiKeYsEcReT"


def waiting(net: up.Devnet) -> set[str]:
    """Scenario accounts the contracts themselves call liquidatable (a position or the collateral)."""
    d = net.deployment
    block = net.chain.w3.eth.block_number  # pinned: a read racing the miner can see a half state
    found = set()
    for t in net.scenario.traders.values():
        value = d["ClearingHouse"].functions.getAccountValue(t.address).call(block_identifier=block)
        requirement = (
            d["AccountBalance"]
            .functions.getMarginRequirementForLiquidation(t.address)
            .call(block_identifier=block)
        )
        if (value < requirement and requirement > 0) or d["Vault"].functions.isLiquidatable(t.address).call(
            block_identifier=block
        ):
            found.add(t.label)
    return found


def keeper_env(net: up.Devnet, urls: list[str], work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "KEEPER_PRIVATE_KEY": KEEPER_KEY,
        "KEEPER_RPC_URL": ",".join(urls),
        "KEEPER_METADATA": str(net.metadata_path),
        "KEEPER_STATE_DB": str(work / "keeper.sqlite"),
        "KEEPER_AUDIT_LOG": str(work / "audit.jsonl"),
        "KEEPER_METRICS_PORT": "0",
        "KEEPER_STALE_HEAD_SECONDS": "0",
        "KEEPER_RPC_TIMEOUT_SECONDS": str(RPC_TIMEOUT_SECONDS),
        "KEEPER_SHUTDOWN_GRACE_SECONDS": "10",
        "KEEPER_LOG_FORMAT": "json",
        "KEEPER_0X_API_KEY": API_KEY,  # an aggregator that is down: the key must never be printed
        "KEEPER_0X_API_URL": "http://127.0.0.1:1",
    }


def keeper_transactions(net: up.Devnet, first_block: int) -> list[tuple[str, str, str]]:
    """(hash, to, calldata) of every transaction the keeper sent that is on chain since `first_block`."""
    found = []
    for number in range(first_block, net.chain.w3.eth.block_number + 1):
        block: Any = net.chain.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if tx["from"].lower() == KEEPER_ADDRESS.lower():
                found.append((bytes(tx["hash"]).hex(), str(tx["to"]).lower(), bytes(tx["input"]).hex()))
    return found


def transaction_figures(db: Path, on_chain: list[tuple[str, str, str]]) -> dict[str, int]:
    """Duplicates: two of the keeper's transactions on chain with the same call (the same step signed
    twice); unjournaled: ones the journal never recorded before broadcast."""
    with sqlite3.connect(db) as conn:
        journaled = conn.execute("SELECT name FROM sqlite_master WHERE name = 'journal'").fetchall()
        rows = conn.execute("SELECT tx_hash, status FROM journal").fetchall() if journaled else []
    statuses = Counter(status for _, status in rows)
    calls = Counter((to, data) for _, to, data in on_chain)
    known = {tx_hash.lower().removeprefix("0x") for tx_hash, _ in rows}
    return {
        "transactions": len(on_chain),
        "reverted": statuses["reverted"],
        "replaced": statuses["replaced"],
        "pending_at_exit": statuses["pending"],
        "duplicates": sum(n - 1 for n in calls.values() if n > 1),
        "unjournaled": sum(tx_hash.removeprefix("0x") not in known for tx_hash, _, _ in on_chain),
    }


def secrets_in(texts: list[str]) -> int:
    needles = (KEEPER_KEY, KEEPER_KEY.removeprefix("0x"), API_KEY, *SECRET_PATHS)
    return sum(text.count(needle) for text in texts for needle in needles)


def run(target: int, seed: int, rate: float, timeout: float, from_start: bool = False) -> dict[str, Any]:
    toolchain.ensure()
    work = Path(tempfile.mkdtemp(prefix="perp-keeper-faults-"))
    net = up.start("all-kinds", out_dir=work / "devnet", log=False)
    try:
        before = waiting(net)
        first_block = net.chain.w3.eth.block_number + 1
        net.chain.rpc("evm_setAutomine", False)
        net.chain.rpc("evm_setIntervalMining", 2)
        with RpcProxy(net.url) as one, RpcProxy(net.url) as two:

            def chaos() -> None:
                for n, proxy in enumerate((one, two)):
                    proxy.chaos(seed + n, rate, KINDS, delay_seconds=RPC_TIMEOUT_SECONDS + 0.5)

            if from_start:
                chaos()
            urls = [DEAD_ENDPOINT, f"{one.url}/v2/{SECRET_PATHS[0]}", f"{two.url}/v2/{SECRET_PATHS[1]}"]
            outcome = _drive(net, keeper_env(net, urls, work), (one, two), target, timeout, chaos)
        outcome["liquidatable_before"] = len(before)
        outcome["liquidatable_after"] = len(waiting(net))
        on_chain = keeper_transactions(net, first_block)
        outcome.update(transaction_figures(work / "keeper.sqlite", on_chain))
        outcome["secrets"] += secrets_in([(work / "audit.jsonl").read_text()])
        outcome["keeper_positions"] = _positions(net)
    finally:
        net.stop()
    return outcome


def _drive(
    net: up.Devnet,
    env: dict[str, str],
    proxies: tuple[RpcProxy, ...],
    target: int,
    timeout: float,
    chaos: Callable[[], None],
) -> dict[str, Any]:
    """Run the keeper under chaos until `target` faults and nothing liquidatable (or `timeout`); the
    chaos starts once the keeper says it is running (if it has not already)."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "keeper.cli", "run"], env=env, stdout=out, stderr=err
        )
        try:
            exits = _watch(keeper, err, net, proxies, target, timeout, chaos)
            for proxy in proxies:
                proxy.calm()
            if exits == 0:
                _settle(net)
                keeper.send_signal(signal.SIGTERM)
            code = keeper.wait(timeout=60)
        finally:
            if keeper.poll() is None:
                keeper.kill()
        out.seek(0)
        err.seek(0)
        printed = [out.read(), err.read()]
    kinds: Counter[str] = Counter()
    for proxy in proxies:
        kinds.update(proxy.injected)
    return {
        "faults": sum(kinds.values()),
        "faults_by_kind": dict(sorted(kinds.items())),
        "requests": sum(p.http_requests for p in proxies),
        "seconds": round(time.monotonic() - started, 1),
        "exits": exits,
        "exit_code": code,
        "secrets": secrets_in(printed),
        "stderr_tail": printed[1][-3000:] if exits else "",
    }


def _watch(
    keeper: subprocess.Popen[bytes],
    err: IO[str],
    net: up.Devnet,
    proxies: tuple[RpcProxy, ...],
    target: int,
    timeout: float,
    chaos: Callable[[], None],
) -> int:
    """Wait for `target` faults and nothing liquidatable; 1 if the keeper exited on its own."""
    started, chaotic = time.monotonic(), False
    while time.monotonic() - started < timeout:
        time.sleep(1)
        if not chaotic:
            err.seek(0)
            if "perp-keeper live" in err.read():
                chaos()
                chaotic = True
        if keeper.poll() is not None:
            return 1
        injected = sum(sum(p.injected.values()) for p in proxies)
        if injected >= target and not waiting(net):
            return 0
    return 0


def _settle(net: up.Devnet, patience: float = 60.0) -> None:
    """Calm blocks until what the keeper took over last is closed (it closes from the chain, at the
    next heads), so the figures show what it left behind, not what was a block from done."""
    deadline = time.monotonic() + patience
    time.sleep(6)
    while _positions(net) and time.monotonic() < deadline:
        time.sleep(2)


def _positions(net: up.Devnet) -> int:
    """Markets where the keeper still holds a position it took over (target 0: closed)."""
    d = net.deployment
    balance = d["AccountBalance"].functions
    return sum(
        balance.getTakerPositionSize(KEEPER_ADDRESS, m.base_token.address).call() != 0
        for m in d.markets.values()
    )


def report(r: dict[str, Any]) -> None:
    print(f"faults injected {r['faults']:,} in {r['requests']:,} requests over {r['seconds']} s")
    for kind, n in r["faults_by_kind"].items():
        print(f"  {kind:<24}{n:>7,}")
    print(
        f"exits {r['exits']} (exit code after SIGTERM {r['exit_code']}), transactions {r['transactions']} "
        f"(reverted {r['reverted']}, replaced {r['replaced']}), duplicates {r['duplicates']}, "
        f"unjournaled {r['unjournaled']}"
    )
    print(
        f"liquidatable {r['liquidatable_before']} before, {r['liquidatable_after']} after; "
        f"positions left with the keeper {r['keeper_positions']}; secrets printed {r['secrets']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--faults", type=int, default=1_000, help="faults to inject, at least")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=0.4, help="fraction of requests faulted")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before giving up")
    parser.add_argument(
        "--from-start", action="store_true", help="faults during start-up too (default: once it runs)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.faults, args.seed, args.rate, args.timeout, args.from_start)
    report(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
