"""`perp-keeper history` over a long range at scale: a devnet of --blocks blocks with N real accounts.

    python bench/history.py --accounts 10000 [--blocks 100000] [--rtt-ms 20] [--lateness-blocks 30]
        [--hardfork cancun] [--json]

The chain runs on the Cancun rules (`--hardfork`): anvil 1.7.1 mines a block under its default rules
(Prague) in time growing with the chain's length (2,000 empty blocks: 3.5 s on a fresh chain, 10 s at
2,000 more, minutes past 80,000: a 100,000-block chain took hours), under Cancun in a fraction of a
second per 2,000 at any length measured. Nothing the keeper reads differs between the two.

Builds the chain (nothing cached): a fresh devnet (scenario `empty`), empty blocks (`anvil_mine`)
first - anvil mines an empty block several times faster on a small state than once it holds
thousands of accounts - then N real accounts with bench/scan.py's builder, an ETH crash that makes
many liquidatable, up to --liquidations of them liquidated by the devnet keeper (direct `liquidate`
transactions, many to a block as in a crash), and empty blocks until the chain has --blocks blocks
after the deployment.
It measures through a proxy adding --rtt-ms per HTTP request:

* cold: `history --json` over the last --blocks blocks with a fresh state database (every log read);
* warm: the same again (the cache answers all but the reorg window);
* lateness: `history --lateness` over the first --lateness-blocks blocks of the crash (every account
  probed at every block of that window, KEEPER_LATENESS_STEP=1), measured right after it, before the
  filler blocks: anvil keeps the state of recent blocks only.

Prints its figures, and a JSON object on the last line with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from scan import BATCH, Driver, bench_address, selector_call, truth

from devnet import toolchain, units, up
from devnet.chain import DEPLOYER, DevChain
from devnet.deploy import UINT256_MAX, attach
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_ADDRESS, ScenarioBuilder
from keeper import cli
from keeper.rpc import Rpc
from strategies.perp_v2.metadata import Deployment, load_metadata


def history(url: str, metadata: Path, db: Path, *extra: str) -> tuple[list[dict[str, Any]], float]:
    out = io.StringIO()
    started = time.monotonic()
    with redirect_stdout(out):
        code = cli.main(
            [
                "history",
                "--json",
                "--rpc-url",
                url,
                "--metadata",
                str(metadata),
                "--state-db",
                str(db),
                *extra,
            ]
        )
    seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"history exited {code}")
    rows: list[dict[str, Any]] = json.loads(out.getvalue())
    return rows, seconds


def crash_and_liquidate(url: str, metadata: Path, d: Deployment, n: int, limit: int) -> tuple[int, int]:
    """ETH -25 %, BTC +20 %; the keeper liquidates up to `limit` liquidatable accounts.
    Returns the first and last block of it."""
    chain = DevChain(url)
    builder = ScenarioBuilder(attach(chain, json.loads(metadata.read_text())))
    mover = builder.trader("price-mover")
    first = chain.w3.eth.block_number + 1
    builder.move_market("vETH", "1335", mover)
    builder.move_market("vBTC", "36000", mover)
    builder.settle_twaps()
    accounts = [bench_address(i) for i in range(n)]
    liquidatable = sorted(asyncio.run(_truth(url, d, accounts, chain.w3.eth.block_number)))
    driver = Driver(url, d)
    keeper = chain.w3.to_checksum_address(KEEPER_ADDRESS)
    chain.set_balance(keeper, units.ether(10_000))
    usdc = units.usdc(10**9)
    driver.send_all(
        [
            {
                "from": DEPLOYER,
                "to": d.vault,
                "data": selector_call("depositFor(address,address,uint256)", keeper, d.usdc, usdc),
            }
        ]
    )
    bases = [driver.base("vETH"), driver.base("vBTC")]
    txs = [
        {
            "from": keeper,
            "to": d.clearing_house,
            "data": selector_call("liquidate(address,address,int256)", a, base, 0),
        }
        for a in liquidatable[:limit]
        for base in bases
    ]
    send_in_full_blocks(chain, driver, txs)
    return first, chain.w3.eth.block_number


def send_in_full_blocks(chain: DevChain, driver: Driver, txs: list[dict[str, str]]) -> None:
    """Many liquidations to a block, as in a crash: automine off, every transaction in the pool, then
    blocks mined until it is empty. One block per transaction would spread 1,000 liquidations over 1,000
    blocks, past the states the node keeps (`devnet/anvil.py`), which --lateness reads."""
    keeper = txs[0]["from"] if txs else None
    if keeper is None:
        return
    nonce = int(chain.rpc("eth_getTransactionCount", keeper, "pending"), 16)
    chain.rpc("evm_setAutomine", False)
    try:
        for start in range(0, len(txs), BATCH):
            chunk = txs[start : start + BATCH]
            numbered = [{**tx, "gas": hex(3_000_000), "nonce": hex(nonce + i)} for i, tx in enumerate(chunk)]
            nonce += len(chunk)
            driver.batch([("eth_sendTransaction", [tx]) for tx in numbered])
        while int(chain.rpc("txpool_status")["pending"], 16):
            chain.rpc("evm_mine")  # as many as the block's gas limit holds; reverts (no position) too
    finally:
        chain.rpc("evm_setAutomine", True)
    blocks = chain.w3.eth.block_number
    print(f"  {len(txs)} liquidation transactions mined by block {blocks}", file=sys.stderr)


async def _truth(url: str, d: Deployment, accounts: list[str], block: int) -> set[str]:
    rpc = Rpc(url)
    try:
        return await truth(rpc, d, accounts, block)
    finally:
        await rpc.close()


RESERVE_PER_ACCOUNT = 2  # blocks the account builder mines per account (about 1.6)


def mine_to(chain: DevChain, target: int) -> None:
    """Empty blocks until the head is `target`, in chunks the node answers within its timeout."""
    started = time.monotonic()
    while (head := chain.w3.eth.block_number) < target:
        chain.rpc("anvil_mine", hex(min(2_000, target - head)))
        print(f"  mined to {chain.w3.eth.block_number} ({time.monotonic() - started:.0f} s)", file=sys.stderr)


def build(args: argparse.Namespace, out: Path) -> tuple[up.Devnet, int, int]:
    """The chain up to the crash and its liquidations (see the module doc); with its first and last block."""
    net = up.start(scenario="empty", out_dir=out, log=False, anvil_args=("--hardfork", args.hardfork))
    d = load_metadata(net.metadata_path)
    mine_to(net.chain, d.start_block + args.blocks - RESERVE_PER_ACCOUNT * args.accounts - 1_000)
    usdc = net.deployment["USDC"]
    net.chain.send(usdc.functions.mint(DEPLOYER, units.usdc(10**12)))
    net.chain.send(usdc.functions.approve(d.vault, UINT256_MAX))
    driver = Driver(net.url, d)
    started = time.monotonic()
    for first in range(0, args.accounts, BATCH):
        driver.create_accounts(first, min(BATCH, args.accounts - first))
        print(
            f"  {min(args.accounts, first + BATCH)} accounts ({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
        )
    net.chain.advance_time(3600)  # marks settle
    return net, *crash_and_liquidate(net.url, net.metadata_path, d, args.accounts, args.liquidations)


def run(args: argparse.Namespace) -> dict[str, Any]:
    toolchain.ensure()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        net, crash_from, crash_to = build(args, Path(tmp))
        try:
            metadata = net.metadata_path
            with RpcProxy(net.url, rtt_ms=args.rtt_ms) as proxy:
                late_rows: list[dict[str, Any]] = []
                late_seconds = 0.0
                if args.lateness_blocks:  # now: anvil keeps the state of recent blocks only
                    os.environ["KEEPER_LATENESS_STEP"] = "1"
                    window = (
                        "--from-block",
                        str(crash_from),
                        "--to-block",
                        str(crash_from + args.lateness_blocks - 1),
                    )
                    late_rows, late_seconds = history(
                        proxy.url, metadata, Path(tmp) / "l.sqlite", *window, "--lateness"
                    )
                late_requests, proxy.http_requests = proxy.http_requests, 0
                mine_to(net.chain, load_metadata(metadata).start_block + args.blocks)
                built = time.monotonic() - started - late_seconds
                head = net.chain.w3.eth.block_number
                span = ("--from-block", str(head - args.blocks + 1), "--to-block", str(head))
                db = Path(tmp) / "h.sqlite"
                rows, cold = history(proxy.url, metadata, db, *span)
                cold_requests, proxy.http_requests = proxy.http_requests, 0
                again, warm = history(proxy.url, metadata, db, *span)
                warm_requests = proxy.http_requests
                assert again == rows
        finally:
            net.stop()
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return {
        "accounts": args.accounts,
        "blocks": args.blocks,
        "hardfork": args.hardfork,
        "rtt_ms": args.rtt_ms,
        "build_seconds": round(built),
        "events": len(rows),
        "kinds": kinds,
        "cold_seconds": round(cold, 2),
        "cold_requests": cold_requests,
        "warm_seconds": round(warm, 2),
        "warm_requests": warm_requests,
        "crash_blocks": [crash_from, crash_to],
        "lateness_blocks": args.lateness_blocks,
        "lateness_seconds": round(late_seconds, 2),
        "lateness_requests": late_requests,
        "lateness_positions": sum(1 for r in late_rows if r["kind"] == "position"),
        "lateness_missed_windows": sum(1 for r in late_rows if r["kind"] == "missed"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--liquidations", type=int, default=500)
    parser.add_argument("--lateness-blocks", type=int, default=0)
    parser.add_argument("--hardfork", default="cancun", help="anvil's rules (see the module doc)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(f"\n{result['accounts']} accounts, {result['blocks']:,} blocks, RTT {result['rtt_ms']} ms")
    print(f"events {result['events']} {result['kinds']}")
    print(
        f"history cold {result['cold_seconds']} s ({result['cold_requests']} requests), "
        f"warm {result['warm_seconds']} s ({result['warm_requests']} requests)"
    )
    if args.lateness_blocks:
        print(
            f"lateness over {args.lateness_blocks} blocks: {result['lateness_seconds']} s "
            f"({result['lateness_requests']} requests), {result['lateness_missed_windows']} missed windows"
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
