"""Prices for selling seized collateral: DEX aggregators over HTTP, and Uniswap v3 on chain.

Every source answers the same question, "what do I get for `amount` of `sell` in `buy`, and with
which transaction", as a `Quote`. Aggregators (0x Swap API v2, 1inch v6) are called with httpx, with
timeouts, bounded retries that honour `Retry-After`, and validation of every field used; a malformed
answer is an error, never a guess. Uniswap v3's QuoterV2 is the on-chain fallback that needs no API.
The best quote *net of its gas* wins; a quote older than `max_age` seconds is fetched again before use.

A quote is only a claim: each source lists the contracts its transactions may name (`contracts`,
`keeper/routers.py`); `keeper/swaps.py` ranks the quotes and drops every one whose transaction is not
what it claims.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
from eth_abi.abi import decode
from eth_utils.address import is_address, to_checksum_address
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from keeper import routers
from keeper.codec import encode_call
from keeper.config import address, aggregator_contracts
from keeper.errors import QuoteError, RpcError
from keeper.routers import EXACT_INPUT_SINGLE, QuoteRejectedError
from keeper.rpc import Rpc

log = logging.getLogger(__name__)

QUOTE_EXACT_INPUT_SINGLE = "quoteExactInputSingle((address,address,uint256,uint24,uint160))"
UNISWAP_FEE_TIERS = (100, 500, 3_000, 10_000)
# Uniswap v3 on OP Mainnet, used when neither the config nor the metadata names them
OPTIMISM_QUOTER_V2 = "0x61fFE014bA17989E743c5F6cB21bF9697530B21e"
OPTIMISM_SWAP_ROUTER = "0xE592427A0AEce92De3Edee1F18E0157C05861564"
DEADLINE = 2**64 - 1
MAX_RETRY_AFTER = 10.0


@dataclass(frozen=True)
class Quote:
    source: str
    sell_token: str
    buy_token: str
    sell_amount: int
    buy_amount: int  # what the source says the sale returns
    gas: int  # gas units of the swap transaction
    spender: str  # who must be approved for `sell_token`
    to: str  # the swap transaction
    data: bytes
    fetched_at: float
    fee_tier: int | None = None  # Uniswap v3 only

    def age(self) -> float:
        return time.monotonic() - self.fetched_at

    def min_out(self, slippage_bps: int) -> int:
        return self.buy_amount * (10_000 - slippage_bps) // 10_000


class QuoteSource(Protocol):
    name: str
    contracts: frozenset[str]  # what its transactions may name as `to` and spender (checksummed)

    async def quote(
        self, sell_token: str, buy_token: str, amount: int, taker: str, slippage_bps: int
    ) -> Quote: ...


# --- HTTP aggregators -----------------------------------------------------------------------------


class _RetryAfter(wait_base):
    """Honour a 429's Retry-After (capped); otherwise a short exponential wait."""

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, httpx.HTTPStatusError):
            header = exc.response.headers.get("Retry-After")
            if header and header.replace(".", "", 1).isdigit():
                return min(MAX_RETRY_AFTER, float(header))
        return float(min(2.0, 0.2 * 2 ** (retry_state.attempt_number - 1)))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class HttpAggregator:
    name = "aggregator"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        chain_id: int,
        timeout: float = 5.0,
        attempts: int = 3,
        contracts: Iterable[str] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.chain_id = chain_id
        # the published ones on this chain unless told otherwise (configured_sources adds the operator's)
        self.contracts = frozenset(
            routers.listed(self.name, chain_id, {}) if contracts is None else map(_checksum, contracts)
        )
        self.attempts = attempts
        self.client = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self.client.aclose()

    async def _get(self, path: str, params: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        try:
            async for trial in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(self.attempts),
                wait=_RetryAfter(),
                reraise=True,
            ):
                with trial:
                    response = await self.client.get(self.base_url + path, params=params, headers=headers)
                    response.raise_for_status()
                    body = response.json()
        except httpx.HTTPStatusError as exc:
            raise QuoteError(f"{self.name}: HTTP {exc.response.status_code}") from None
        except httpx.TimeoutException:
            raise QuoteError(f"{self.name}: timed out") from None
        except httpx.TransportError as exc:
            raise QuoteError(f"{self.name}: unreachable ({type(exc).__name__})") from None
        except ValueError:
            raise QuoteError(f"{self.name}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise QuoteError(f"{self.name}: the answer is not a JSON object")
        return body


class ZeroEx(HttpAggregator):
    """0x Swap API v2, AllowanceHolder flow: one call gives the price and the transaction."""

    name = "0x"

    async def quote(
        self, sell_token: str, buy_token: str, amount: int, taker: str, slippage_bps: int
    ) -> Quote:
        params = {
            "chainId": self.chain_id,
            "sellToken": sell_token,
            "buyToken": buy_token,
            "sellAmount": str(amount),
            "taker": taker,
            "slippageBps": slippage_bps,
        }
        headers = {"0x-version": "v2", **({"0x-api-key": self.api_key} if self.api_key else {})}
        body = await self._get("/swap/allowance-holder/quote", params, headers)
        if body.get("liquidityAvailable") is False:
            raise QuoteError("0x: no liquidity for this pair")
        tx = _mapping(body.get("transaction"), "0x", "transaction")
        _no_value(tx, "0x", "transaction.value")
        spender = (body.get("issues") or {}).get("allowance") or {}
        return Quote(
            source=self.name,
            sell_token=sell_token,
            buy_token=buy_token,
            sell_amount=amount,
            buy_amount=_amount(body.get("buyAmount"), "0x", "buyAmount"),
            gas=_amount(tx.get("gas"), "0x", "transaction.gas"),
            spender=_address(
                spender.get("spender") if isinstance(spender, dict) else None, tx.get("to"), "0x"
            ),
            to=_address(tx.get("to"), None, "0x"),
            data=_hex_bytes(tx.get("data"), "0x", "transaction.data"),
            fetched_at=time.monotonic(),
        )


class OneInch(HttpAggregator):
    """1inch Swap API v6.0: `/swap` gives the price and the transaction; its router is the spender."""

    name = "1inch"

    async def quote(
        self, sell_token: str, buy_token: str, amount: int, taker: str, slippage_bps: int
    ) -> Quote:
        params = {
            "src": sell_token,
            "dst": buy_token,
            "amount": str(amount),
            "from": taker,
            "slippage": slippage_bps / 100,
            "disableEstimate": "true",
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = await self._get(f"/swap/v6.0/{self.chain_id}/swap", params, headers)
        tx = _mapping(body.get("tx"), "1inch", "tx")
        _no_value(tx, "1inch", "tx.value")
        router = _address(tx.get("to"), None, "1inch")
        return Quote(
            source=self.name,
            sell_token=sell_token,
            buy_token=buy_token,
            sell_amount=amount,
            buy_amount=_amount(body.get("dstAmount"), "1inch", "dstAmount"),
            gas=_amount(tx.get("gas"), "1inch", "tx.gas"),
            spender=router,
            to=router,
            data=_hex_bytes(tx.get("data"), "1inch", "tx.data"),
            fetched_at=time.monotonic(),
        )


# --- on chain -----------------------------------------------------------------------------------------


class UniswapV3:
    """QuoterV2 across the fee tiers; the sale goes through SwapRouter.exactInputSingle."""

    name = "uniswap-v3"
    SWAP_GAS = 200_000

    def __init__(self, rpc: Rpc, quoter: str, router: str, fee_tiers: Sequence[int] = UNISWAP_FEE_TIERS):
        self.rpc, self.quoter, self.router, self.fee_tiers = rpc, quoter, router, tuple(fee_tiers)
        self.contracts = frozenset({_checksum(router)})

    async def quote(
        self, sell_token: str, buy_token: str, amount: int, taker: str, slippage_bps: int
    ) -> Quote:
        answers = await self.rpc.calls_at(
            [
                (self.quoter, encode_call(QUOTE_EXACT_INPUT_SINGLE, (sell_token, buy_token, amount, fee, 0)))
                for fee in self.fee_tiers
            ],
            "latest",
        )
        best: tuple[int, int, int] | None = None  # (amount out, gas, fee)
        for fee, answer in zip(self.fee_tiers, answers, strict=True):
            if isinstance(answer, RpcError):
                continue  # no pool at this tier
            out, _, _, gas_estimate = decode(["uint256", "uint160", "uint32", "uint256"], answer)
            if best is None or out > best[0]:
                best = (int(out), int(gas_estimate), fee)
        if best is None:
            raise QuoteError(f"uniswap-v3: no pool for {sell_token}/{buy_token}")
        out, gas_estimate, fee = best
        quote = Quote(
            source=self.name,
            sell_token=sell_token,
            buy_token=buy_token,
            sell_amount=amount,
            buy_amount=out,
            gas=gas_estimate + self.SWAP_GAS // 2,
            spender=self.router,
            to=self.router,
            data=b"",
            fetched_at=time.monotonic(),
            fee_tier=fee,
        )
        return replace(quote, data=self.swap_calldata(quote, taker, slippage_bps))

    @classmethod
    def configured(
        cls, rpc: Rpc, quoter_v2: str | None, swap_router: str | None, env: Mapping[str, str]
    ) -> UniswapV3:
        """KEEPER_QUOTER_V2 / KEEPER_SWAP_ROUTER, else the deployment's, else OP Mainnet's."""
        quoter = env.get("KEEPER_QUOTER_V2") or quoter_v2 or OPTIMISM_QUOTER_V2
        router = env.get("KEEPER_SWAP_ROUTER") or swap_router or OPTIMISM_SWAP_ROUTER
        return cls(rpc, address(quoter, "KEEPER_QUOTER_V2"), address(router, "KEEPER_SWAP_ROUTER"))

    def swap_calldata(self, quote: Quote, recipient: str, slippage_bps: int) -> bytes:
        assert quote.fee_tier is not None
        params = (
            quote.sell_token,
            quote.buy_token,
            quote.fee_tier,
            recipient,
            DEADLINE,
            quote.sell_amount,
            quote.min_out(slippage_bps),
            0,
        )
        return encode_call(EXACT_INPUT_SINGLE, params)


def configured_sources(
    rpc: Rpc, chain_id: int, quoter_v2: str | None, swap_router: str | None, env: Mapping[str, str]
) -> list[QuoteSource]:
    """Uniswap v3 on chain always; an aggregator when its API key or URL is configured, trusting its
    published contracts on this chain and those KEEPER_AGGREGATOR_CONTRACTS adds (checked even when no
    aggregator is on: a malformed setting is an operator mistake either way)."""
    sources: list[QuoteSource] = [UniswapV3.configured(rpc, quoter_v2, swap_router, env)]
    aggregator_contracts(env)
    for name, kind, default_url in (
        ("0X", ZeroEx, "https://api.0x.org"),
        ("1INCH", OneInch, "https://api.1inch.dev"),
    ):
        key, url = env.get(f"KEEPER_{name}_API_KEY"), env.get(f"KEEPER_{name}_API_URL")
        if key or url:
            contracts = routers.listed(kind.name, chain_id, env)
            if not contracts:
                log.warning(
                    "%s: no published contracts for chain %d: every quote will be refused until "
                    "KEEPER_AGGREGATOR_CONTRACTS lists its router",
                    kind.name,
                    chain_id,
                )
            sources.append(kind(url or default_url, key, chain_id, contracts=contracts))
    return sources


async def close_sources(sources: Sequence[QuoteSource]) -> None:
    for source in sources:
        if isinstance(source, HttpAggregator):
            await source.close()


# --- validation ------------------------------------------------------------------------------------------


def _mapping(value: Any, source: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise QuoteError(f"{source}: missing or malformed `{field}`")
    return value


def _amount(value: Any, source: str, field: str) -> int:
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise QuoteError(f"{source}: `{field}` is not a whole number: {value!r}")


def _address(value: Any, fallback: Any, source: str) -> str:
    for candidate in (value, fallback):
        if isinstance(candidate, str) and is_address(candidate):
            return str(to_checksum_address(candidate))
    raise QuoteError(f"{source}: no valid address for the spender / router")


def _hex_bytes(value: Any, source: str, field: str) -> bytes:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise QuoteError(f"{source}: `{field}` is not hex calldata")


def _no_value(tx: dict[str, Any], source: str, field: str) -> None:
    """The keeper sells tokens and sends no ETH: a transaction asking for some is not a token sale."""
    if str(tx.get("value", "0")) not in ("0", "0x0", "0x"):
        raise QuoteRejectedError(f"{source}: `{field}` asks for ETH ({tx.get('value')!r}); a sale sends none")


def _checksum(text: str) -> str:
    return str(to_checksum_address(text))
