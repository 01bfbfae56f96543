"""How long the devnet takes to come up, fresh and from a state dump, in one run.

    python bench/devnet_startup.py [--scenario all-kinds] [--json]

Prints seconds for: deploying the real contracts, building the scenario, and starting anvil from
the dumped state until the first view answers; and the ratio fresh / from-dump.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from devnet import toolchain, up
from devnet.anvil import Anvil
from devnet.chain import DevChain


def main() -> None:
    parser = argparse.ArgumentParser(description="Devnet start-up time, fresh and from a state dump.")
    parser.add_argument("--scenario", default="all-kinds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    toolchain.ensure()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        net = up.start(scenario=args.scenario, out_dir=Path(tmp), log=False)
        fresh = time.perf_counter() - started
        blocks = net.chain.w3.eth.block_number
        state = Path(tmp) / "state.json"
        up.dump_state(net, state)
        state_bytes = state.stat().st_size
        clearing_house = net.deployment["ClearingHouse"].address
        probe = next(iter(net.scenario.traders.values())).address
        expected = net.deployment["ClearingHouse"].functions.getAccountValue(probe).call()
        net.stop()

        started = time.perf_counter()
        with Anvil(load_state=state) as node:
            chain = DevChain(node.url)
            chain.resume_clock()
            value = chain.contract("ClearingHouse", clearing_house).functions.getAccountValue(probe).call()
            loaded = time.perf_counter() - started
        assert value == expected, "the reloaded state differs"

    result = {
        "scenario": args.scenario,
        "accounts": len(net.scenario.traders),
        "blocks": blocks,
        "fresh_seconds": round(fresh, 3),
        "load_state_seconds": round(loaded, 3),
        "state_bytes": state_bytes,
        "fresh_over_load": round(fresh / loaded, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"scenario {args.scenario}: {result['accounts']} accounts, {blocks} blocks")
        print(f"  fresh deploy + scenario : {fresh:8.2f} s")
        print(f"  anvil --load-state      : {loaded:8.2f} s")
        print(f"  ratio fresh / load      : {fresh / loaded:8.1f} x")


if __name__ == "__main__":
    main()
