"""The one transaction manager: simulate, price, sign, send, replace, and read the receipt.

Safety rules it enforces for every strategy:
* simulate with `eth_call` immediately before each send; a failing simulation is never sent;
* one opportunity is never in flight twice (`key`), and an account that just failed cools down;
* nonces are tracked locally and resynced from the node after any doubt;
* a send answered "already known" / "nonce too low" may have reached the node (a retried request):
  the transaction is looked up by its hash, never re-signed blindly;
* a transaction not mined within `replace_after_blocks` is replaced with the same nonce and fees
  raised 12.5 % (the minimum replacement bump nodes accept), at most `max_replacements` times and
  never above the operator's max fee.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from keeper import gas
from keeper.codec import decode_revert
from keeper.errors import RpcError
from keeper.rpc import Rpc

log = logging.getLogger(__name__)

MAYBE_SENT = ("already known", "nonce too low", "known transaction", "already imported")
BUMP_BPS = 1_250  # +12.5 %


@dataclass(frozen=True)
class TxRequest:
    key: str  # identifies the opportunity step: the in-flight registry refuses duplicates
    account: str  # the liquidated account: cooldown after a failure
    to: str
    data: bytes
    label: str


@dataclass
class TxOutcome:
    request: TxRequest
    status: str  # "mined", "reverted", "simulation-failed", "skipped", "not-mined"
    reason: str = ""
    tx_hash: str | None = None
    gas_used: int = 0
    fee_wei: int = 0  # L2 execution (+ L1 data fee when the receipt reports one)
    block: int | None = None
    replacements: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "mined"


def revert_reason(error: RpcError) -> str:
    """The decoded revert reason of a failed eth_call / estimateGas (Perp's are codes like CH_EAV)."""
    data = error.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) > 2:
        return decode_revert(bytes.fromhex(data[2:]))
    text = error.message
    return text.split("execution reverted: ", 1)[-1] if "execution reverted" in text else text


class TxManager:
    def __init__(
        self,
        rpc: Rpc,
        signer: LocalAccount,
        chain_id: int,
        *,
        max_fee_gwei: int | None = None,
        replace_after_blocks: int = 3,
        max_replacements: int = 3,
        cooldown_seconds: float = 60.0,
        receipt_timeout: float = 120.0,
        poll_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpc, self.signer, self.chain_id = rpc, signer, chain_id
        self.address = signer.address
        self.max_fee_gwei = max_fee_gwei
        self.replace_after_blocks = replace_after_blocks
        self.max_replacements = max_replacements
        self.cooldown_seconds = cooldown_seconds
        self.receipt_timeout = receipt_timeout
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.in_flight: set[str] = set()
        self.cooling: dict[str, float] = {}
        self._nonce: int | None = None
        self._lock = asyncio.Lock()  # one send at a time: nonces stay in order

    # --- checks -------------------------------------------------------------------------------------
    def blocked(self, request: TxRequest) -> str | None:
        if request.key in self.in_flight:
            return "already in flight"
        until = self.cooling.get(request.account.lower())
        if until is not None and self.clock() < until:
            return f"account cooling down for {until - self.clock():.0f} s after a failure"
        return None

    async def simulate(self, request: TxRequest, sender: str | None = None) -> tuple[bool, str, bytes]:
        """eth_call of the transaction at the latest block: (ok, reason, return data)."""
        tx = {"from": sender or self.address, "to": request.to, "data": "0x" + request.data.hex()}
        try:
            out = await self.rpc.request("eth_call", [tx, "latest"])
        except RpcError as exc:
            return False, revert_reason(exc), b""
        return True, "", bytes.fromhex(str(out).removeprefix("0x"))

    async def estimate_gas(self, request: TxRequest) -> int:
        tx = {"from": self.address, "to": request.to, "data": "0x" + request.data.hex()}
        return int(await self.rpc.request("eth_estimateGas", [tx]), 16)

    # --- sending ------------------------------------------------------------------------------------
    async def send(self, request: TxRequest, gas_limit: int | None = None) -> TxOutcome:
        """Simulate, sign, send and wait for the receipt (replacing a stuck transaction)."""
        if why := self.blocked(request):
            return TxOutcome(request, "skipped", why)
        self.in_flight.add(request.key)
        try:
            async with self._lock:
                outcome = await self._send(request, gas_limit)
        finally:
            self.in_flight.discard(request.key)
        if not outcome.ok and outcome.status != "skipped":
            self.cooling[request.account.lower()] = self.clock() + self.cooldown_seconds
        return outcome

    async def _send(self, request: TxRequest, gas_limit: int | None) -> TxOutcome:
        ok, reason, _ = await self.simulate(request)
        if not ok:
            return TxOutcome(request, "simulation-failed", reason)
        limit = gas_limit or await self.estimate_gas(request) * 12 // 10
        price = await gas.gas_price(self.rpc, self.max_fee_gwei)
        ceiling = price.max_fee if price.max_fee is not None else None
        max_fee = (
            2 * price.base_fee + price.tip
            if ceiling is None
            else min(ceiling, 2 * price.base_fee + price.tip)
        )
        tip = min(price.tip, max_fee)
        nonce = await self._next_nonce()
        hashes: list[str] = []
        replacements = 0
        sent_at = await self.rpc.block_number()
        tx_hash = await self._sign_and_send(request, nonce, limit, max_fee, tip)
        hashes.append(tx_hash)
        deadline = self.clock() + self.receipt_timeout
        while self.clock() < deadline:
            for candidate in hashes:
                receipt = await self.rpc.request("eth_getTransactionReceipt", [candidate])
                if receipt:
                    self._nonce = nonce + 1
                    return await self._outcome(request, receipt, replacements)
            head = await self.rpc.block_number()
            if head - sent_at >= self.replace_after_blocks and replacements < self.max_replacements:
                bumped_fee = max_fee * (10_000 + BUMP_BPS) // 10_000 + 1
                bumped_tip = tip * (10_000 + BUMP_BPS) // 10_000 + 1
                if ceiling is not None and bumped_fee > ceiling:
                    log.warning(
                        "%s: not replacing %s, the fee would pass the ceiling", request.label, tx_hash
                    )
                else:
                    max_fee, tip = bumped_fee, min(bumped_tip, bumped_fee)
                    replacements += 1
                    sent_at = head
                    tx_hash = await self._sign_and_send(request, nonce, limit, max_fee, tip)
                    hashes.append(tx_hash)
                    log.info(
                        "%s: replaced with %s (fees +12.5 %%, #%d)", request.label, tx_hash, replacements
                    )
            await asyncio.sleep(self.poll_seconds)
        self._nonce = None  # unknown: resync before the next send
        return TxOutcome(request, "not-mined", f"no receipt within {self.receipt_timeout:.0f} s", tx_hash)

    async def _sign_and_send(self, request: TxRequest, nonce: int, limit: int, max_fee: int, tip: int) -> str:
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": to_checksum_address(request.to),
            "data": request.data,
            "value": 0,
            "gas": limit,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
        }
        signed = self.signer.sign_transaction(tx)
        tx_hash = "0x" + bytes(signed.hash).hex()
        raw = "0x" + bytes(signed.raw_transaction).hex()
        try:
            await self.rpc.request("eth_sendRawTransaction", [raw])
        except RpcError as exc:
            if any(marker in exc.message.lower() for marker in MAYBE_SENT):
                # maybe our own earlier attempt (a retried request) got through: look it up
                known = await self.rpc.request("eth_getTransactionByHash", [tx_hash])
                if known:
                    return tx_hash
                self._nonce = None
            raise
        return tx_hash

    async def _next_nonce(self) -> int:
        if self._nonce is None:
            self._nonce = int(
                await self.rpc.request("eth_getTransactionCount", [self.address, "pending"]), 16
            )
        return self._nonce

    async def _outcome(self, request: TxRequest, receipt: dict[str, Any], replacements: int) -> TxOutcome:
        gas_used = int(receipt["gasUsed"], 16)
        fee = gas_used * int(receipt.get("effectiveGasPrice", "0x0"), 16) + int(
            receipt.get("l1Fee", "0x0"), 16
        )
        outcome = TxOutcome(
            request,
            "mined" if receipt["status"] == "0x1" else "reverted",
            tx_hash=receipt["transactionHash"],
            gas_used=gas_used,
            fee_wei=fee,
            block=int(receipt["blockNumber"], 16),
            replacements=replacements,
            logs=list(receipt.get("logs", [])),
        )
        if not outcome.ok:
            outcome.reason = await self._mined_revert_reason(receipt["transactionHash"])
        return outcome

    async def _mined_revert_reason(self, tx_hash: str) -> str:
        """A receipt has no reason: ask the node's call tracer (anvil, geth with debug enabled)."""
        try:
            trace = await self.rpc.request("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
        except RpcError:
            return "reverted (no trace available)"
        if isinstance(trace, dict):
            if trace.get("revertReason"):
                return str(trace["revertReason"])
            output = trace.get("output")
            if isinstance(output, str) and len(output) > 2:
                return decode_revert(bytes.fromhex(output[2:]))
        return "reverted"
