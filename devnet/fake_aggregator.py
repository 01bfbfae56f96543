"""A local stand-in for DEX aggregator HTTP APIs (0x Swap API v2, 1inch v6) whose swaps are real.

Answers have the real APIs' shapes; prices come from the real Uniswap v3 QuoterV2 on the devnet, and
the returned calldata is a real SwapRouter.exactInputSingle, so executing a quote swaps on chain.
Each API can be told to misbehave the way real ones do: `429` (rate-limited, with Retry-After),
`timeout`, `malformed`, `inflate` (quotes more than the pool gives, so `minOut` makes the swap revert),
or `low` (quotes far below the pool); or the way a hostile or compromised one would (`HOSTILE`): send
the transaction elsewhere (`foreign-to`), have another spender approved (`foreign-spender`, 0x: its
`issues.allowance.spender`), answer with the token's own `transfer` of the seized amount to the
attacker (`transfer`) or USDC's `approve` of the attacker for everything (`approve`), swap to the
attacker (`recipient`), or accept any output (`no-min`).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from web3 import Web3

from keeper.codec import encode_call
from keeper.quotes import DEADLINE, QUOTE_EXACT_INPUT_SINGLE
from keeper.routers import EXACT_INPUT_SINGLE

SPOT_FEE = 500
GAS = 250_000
ATTACKER = "0x000000000000000000000000000000000000BAd0"
HOSTILE = ("foreign-to", "foreign-spender", "transfer", "approve", "inflate", "recipient", "no-min")


class FakeAggregators:
    def __init__(self, rpc_url: str, quoter: str, router: str, fee: int = SPOT_FEE) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url))
        self.quoter, self.router, self.fee = quoter, router, fee
        self.modes: dict[str, str] = {"0x": "ok", "1inch": "ok"}
        self.haircut_bps = {"0x": 5, "1inch": 10}  # so the sources disagree a little
        self.requests: dict[str, int] = {"0x": 0, "1inch": 0}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeAggregators:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- pricing with the real pool -------------------------------------------------------------------
    def _quote(
        self, api: str, sell: str, buy: str, amount: int, taker: str, slippage_bps: int
    ) -> dict[str, Any]:
        data = encode_call(QUOTE_EXACT_INPUT_SINGLE, (sell, buy, amount, self.fee, 0))
        raw = self.w3.eth.call({"to": Web3.to_checksum_address(self.quoter), "data": data})
        pool_out = int.from_bytes(bytes(raw)[:32], "big")
        out = pool_out * (10_000 - self.haircut_bps[api]) // 10_000
        mode = self.modes[api]
        if mode == "inflate":
            out = pool_out * 3 // 2
        elif mode == "low":
            out = pool_out // 10
        min_out = out * (10_000 - slippage_bps) // 10_000
        recipient, bound = (ATTACKER if mode == "recipient" else taker), (0 if mode == "no-min" else min_out)
        swap = encode_call(EXACT_INPUT_SINGLE, (sell, buy, self.fee, recipient, DEADLINE, amount, bound, 0))
        to, spender = self.router, self.router
        if mode == "foreign-to":
            to = ATTACKER  # and, for 1inch, the spender: the client approves its `to`
        elif mode == "foreign-spender":
            spender = ATTACKER
        elif mode == "transfer":
            to, swap = sell, encode_call("transfer(address,uint256)", ATTACKER, amount)
        elif mode == "approve":
            to, swap = buy, encode_call("approve(address,uint256)", ATTACKER, 2**256 - 1)
        return {"out": out, "min_out": min_out, "to": to, "spender": spender, "data": "0x" + swap.hex()}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/swap/allowance-holder/quote":
                    api = "0x"
                elif parts.path.startswith("/swap/v6.0/") and parts.path.endswith("/swap"):
                    api = "1inch"
                else:
                    self._send(404, {"error": "not found"})
                    return
                fake.requests[api] += 1
                mode = fake.modes[api]
                if mode == "429":
                    self._send(429, {"message": "rate limited"}, {"Retry-After": "0"})
                    return
                if mode == "timeout":
                    time.sleep(3)
                if mode == "malformed":
                    self._send(
                        200, {"buyAmount": "lots", "transaction": "none"} if api == "0x" else {"tx": {}}
                    )
                    return
                if api == "0x":
                    q = fake._quote(
                        api,
                        query["sellToken"],
                        query["buyToken"],
                        int(query["sellAmount"]),
                        query["taker"],
                        int(query.get("slippageBps", 100)),
                    )
                    body = {
                        "liquidityAvailable": True,
                        "buyAmount": str(q["out"]),
                        "minBuyAmount": str(q["min_out"]),
                        "issues": {"allowance": {"spender": q["spender"], "actual": "0"}},
                        "transaction": {"to": q["to"], "data": q["data"], "gas": str(GAS), "value": "0"},
                    }
                else:
                    q = fake._quote(
                        api,
                        query["src"],
                        query["dst"],
                        int(query["amount"]),
                        query["from"],
                        int(float(query.get("slippage", 1)) * 100),
                    )
                    body = {
                        "dstAmount": str(q["out"]),
                        "tx": {"to": q["to"], "data": q["data"], "gas": GAS, "value": "0"},
                    }
                self._send(200, body)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler
