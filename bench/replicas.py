"""Chaos rounds for replicas: no liquidation missed while the lease holder is down, none sent twice.

    python bench/replicas.py --rounds 50 [--ttl 3] [--block 2] [--seed S] [--json]

One PostgreSQL server (a real one, started on loopback in a temporary directory, as the tests do), one
devnet with `--block`-second blocks and liquidatable accounts (scenario all-kinds), three `perp-keeper
run` replicas with one key. Each round starts from the same chain state (evm_revert to a snapshot
taken before the first round: every liquidatable account is liquidatable again) with a fresh database;
the holder is killed (-9), SIGSTOPped past the TTL and resumed, or cut off from the database (its
backends terminated with pg_terminate_backend, no new connection until it is restored), the kinds in
turn, at a random moment: right after its first `journal`/`signed` audit record (between signing and
broadcasting), or a random 0-4 s after it was elected.

Measured per round, printed as a table (and with --json the last line is one JSON object):
* takeover: from the fault until another replica holds the lease (database clock judges expiry), in
  seconds and in blocks mined meanwhile; the target is TTL + 1 block;
* duplicates: mined transactions of a step signed while another of that step was still pending;
* ex_holder_sends: `signed` records in the ex-holder's own audit trail after another replica took the
  lease, plus mined transactions of the keeper that no journal row accounts for (from the chain);
* missed: accounts still liquidatable when the round ends (every one must be liquidated).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devnet import toolchain, up  # noqa: E402
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY  # noqa: E402
from keeper import cli  # noqa: E402
from tests.pg import PgServer  # noqa: E402
from tests.replica_group import FAULTS, Replicas, duplicates, wait_for  # noqa: E402

LEASE = f"signer:{KEEPER_ADDRESS.lower()}"
REPLICAS = 3


def liquidatable(net: up.Devnet, tmp: Path) -> list[str]:
    """The accounts the keeper's own scan finds liquidatable now (a fresh index each time)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(
            ["scan", "--json", "--rpc-url", net.url, "--metadata", str(net.metadata_path),
             "--state-db", str(tmp / f"scan-{time.monotonic_ns()}.sqlite")]
        )  # fmt: skip
    if code != 0:
        raise RuntimeError(f"scan exited {code}")
    return [o["account"] for o in json.loads(out.getvalue()) if o["liquidatable"]]


def unjournaled(net: up.Devnet, group: Replicas, first_block: int) -> int:
    """Mined transactions from the keeper since `first_block` that no journal row names: a send that
    bypassed the fenced journal."""
    known = {"0x" + r["tx_hash"].lower().removeprefix("0x") for r in group.store.journal_rows()}
    w3, count = net.chain.w3, 0
    for number in range(first_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if isinstance(tx, bytes | str) or tx["from"].lower() != KEEPER_ADDRESS.lower():
                continue
            if "0x" + tx["hash"].hex().lower().removeprefix("0x") not in known:
                count += 1
    return count


def one_round(
    n: int, kind: str, net: up.Devnet, pg: PgServer, tmp: Path, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    logs = tmp / f"round-{n}"
    logs.mkdir()
    first_block = net.chain.w3.eth.block_number + 1
    expected = len(liquidatable(net, logs))
    group = Replicas(net.url, net.metadata_path, pg.new_database(), logs, KEEPER_KEY, LEASE, args.ttl)
    try:
        group.start(REPLICAS)
        wait_for("a holder", lambda: group.holder() is not None, 90)
        holder = group.holder()
        assert holder is not None
        moment = rng.choice(["signed", "random"])
        if moment == "signed":
            try:
                wait_for("the holder signs", lambda: group.signed(holder), 30)
            except AssertionError:
                moment = "random (nothing signed)"
        else:
            time.sleep(rng.uniform(0, 4))
        block_at_fault = net.chain.w3.eth.block_number
        group.fault(holder, kind)
        faulted = time.monotonic()
        took = wait_for("a standby takes over", lambda: group.holder() not in (None, holder), 60)
        took_at = time.time()
        blocks = net.chain.w3.eth.block_number - block_at_fault
        if kind != "kill":
            time.sleep(max(0.0, args.ttl + 1 - (time.monotonic() - faulted)))
            group.recover(holder, kind)
        missed = 0
        try:
            wait_for("every account liquidated", lambda: not liquidatable(net, logs), 180)
            wait_for("nothing pending", lambda: not group.store.journal_rows(status="pending"), 60)
        except AssertionError:
            missed = len(liquidatable(net, logs))
        time.sleep(2 * args.block)  # a resumed ex-holder has heads to act on
        return {
            "round": n,
            "fault": kind,
            "moment": moment,
            "liquidatable": expected,
            "takeover_seconds": round(took - faulted, 3),
            "takeover_blocks": blocks,
            "duplicates": duplicates(group.db_url, [group.audit_path(i) for i in range(REPLICAS)]),
            "ex_holder_signed": len(group.signed(holder, since=took_at)),
            "unjournaled": unjournaled(net, group, first_block),
            "missed": missed,
        }
    finally:
        group.stop()
        # what a replica broadcast as it was stopped must not be mined in the next round (whose journal
        # is a fresh database): the revert rewinds the nonce, and a pooled transaction would fit again
        net.chain.rpc("anvil_dropAllTransactions")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Replica chaos rounds: take-over, duplicates, ex-holder sends."
    )
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--ttl", type=int, default=3, help="KEEPER_LEASE_TTL_SECONDS")
    parser.add_argument("--block", type=int, default=2, help="block interval, seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)

    toolchain.ensure()
    pg = PgServer()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        net = up.start(scenario="all-kinds", out_dir=tmp / "devnet", log=False)
        try:
            net.chain.rpc("evm_setIntervalMining", args.block)
            start = net.chain.snapshot()
            rows = []
            for n in range(args.rounds):
                net.chain.revert(start)
                start = net.chain.snapshot()  # a snapshot is used up by one revert
                row = one_round(n, FAULTS[n % len(FAULTS)], net, pg, tmp, args, rng)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr if args.json else sys.stdout, flush=True)
        finally:
            net.stop()
            pg.stop()
    summary = {
        "rounds": len(rows),
        "seed": seed,
        "replicas": REPLICAS,
        "ttl_seconds": args.ttl,
        "block_seconds": args.block,
        "faults": {kind: sum(r["fault"] == kind for r in rows) for kind in FAULTS},
        "duplicates": sum(r["duplicates"] for r in rows),
        "ex_holder_sends": sum(r["ex_holder_signed"] + r["unjournaled"] for r in rows),
        "takeover_max_seconds": max(r["takeover_seconds"] for r in rows),
        "takeover_max_blocks": max(r["takeover_blocks"] for r in rows),
        "takeover_target_seconds": args.ttl + args.block,
        "liquidatable_per_round": max(r["liquidatable"] for r in rows),
        "missed": sum(r["missed"] for r in rows),
    }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
