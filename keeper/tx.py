"""The one transaction manager: simulate, price, sign, journal, broadcast; a poller follows receipts.

`submit` does not wait for the receipt: many liquidations go out in one block, with consecutive
nonces, in the order they are submitted. `poll` looks up every pending transaction's receipt in one
batch, replaces what is stuck and re-broadcasts what a node forgot. `send` = submit + wait, for one-off
use. Safety rules it enforces for every strategy:
* simulate with `eth_call` immediately before each send; a failing simulation is never sent;
* one step (`key`) is never in flight twice, here or (through the journal) across restarts; an
  account whose transaction just failed cools down;
* a transaction is written to the journal, with its signed bytes, before it is broadcast;
* a send answered "already known" / "nonce too low" may have reached the node (a retried request):
  the transaction is looked up by its hash, never re-signed blindly;
* a transaction not mined within `replace_after_blocks` is replaced with the same nonce and fees
  raised 12.5 % (the minimum replacement bump nodes accept), at most `max_replacements` times and
  never above the fee ceiling; the ones behind it are not re-signed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from keeper import gas, preflight
from keeper.errors import RpcError, RpcMalformedError, RpcUnavailableError
from keeper.receipts import Journal, Pending, Prepared, Signed, TxOutcome, TxRequest, outcome_of
from keeper.rpc import BlockId, Rpc

log = logging.getLogger(__name__)

MAYBE_SENT = ("already known", "nonce too low", "known transaction", "already imported")
BUMP_BPS = 1_250  # +12.5 %
GAS_MARGIN = 25_000  # over 1.3x a simulated step's gas: state may move before it lands


class TxManager:
    def __init__(
        self,
        rpc: Rpc,
        signer: LocalAccount,
        chain_id: int,
        *,
        journal: Journal | None = None,
        max_fee_gwei: int | None = None,
        replace_after_blocks: int = 3,
        max_replacements: int = 3,
        cooldown_seconds: float = 60.0,
        receipt_timeout: float = 120.0,
        poll_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpc, self.signer, self.chain_id, self.journal = rpc, signer, chain_id, journal
        self.address = signer.address
        self.max_fee_gwei = max_fee_gwei
        self.replace_after_blocks = replace_after_blocks
        self.max_replacements = max_replacements
        self.cooldown_seconds = cooldown_seconds
        self.receipt_timeout = receipt_timeout
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.pending: dict[str, Pending] = {}  # by step key
        self.cooling: dict[str, float] = {}
        self._nonce: int | None = None
        self._signing = asyncio.Lock()  # sign, journal, broadcast: nonces stay consecutive and ordered
        self._polling = asyncio.Lock()

    # --- checks -------------------------------------------------------------------------------------
    def in_flight(self) -> set[str]:
        """The accounts every pending transaction acts on (restored from the journal at start-up)."""
        return {p.request.account for p in self.pending.values()}

    def blocked(self, request: TxRequest) -> str | None:
        if request.key in self.pending or (
            self.journal is not None and self.journal.may_be_mined(request.key)
        ):
            return "already in flight"
        now = self.clock()
        self.cooling = {a: until for a, until in self.cooling.items() if until > now}  # pruned
        until = self.cooling.get(request.account.lower())
        if until is not None:
            return f"account cooling down for {until - now:.0f} s after a failure"
        return None

    async def simulate(
        self, request: TxRequest, sender: str | None = None, block: BlockId = "latest"
    ) -> tuple[bool, str, bytes]:
        """eth_call of the transaction at `block`: (ok, reason, return data)."""
        return await preflight.simulate(self.rpc, sender or self.address, request, block)

    # --- sending ------------------------------------------------------------------------------------
    async def submit(
        self, request: TxRequest, *, block: BlockId = "latest", gas_limit: int | None = None
    ) -> Pending | TxOutcome:
        """Simulate at `block`, sign, journal and broadcast; the receipt is `poll`'s business."""
        prepared = await self.prepare(request, block=block, gas_limit=gas_limit)
        return prepared if isinstance(prepared, TxOutcome) else await self.dispatch(prepared)

    async def prepare(
        self, request: TxRequest, *, block: BlockId = "latest", gas_limit: int | None = None
    ) -> Prepared | TxOutcome:
        """Everything before signing, safe to run for many requests at once: the simulation at
        `block`, the gas limit and the fees."""
        if why := self.blocked(request):
            return TxOutcome(request, "skipped", why)
        ok, reason, _ = await self.simulate(request, block=block)
        if not ok:
            return self._failed(TxOutcome(request, "simulation-failed", reason))
        limit = gas_limit or await preflight.estimate_gas(self.rpc, self.address, request) * 12 // 10
        max_fee, tip = await preflight.fees(self.rpc, self.max_fee_gwei)
        return Prepared(request, limit, max_fee, tip)

    async def prepare_plan(
        self, requests: Sequence[TxRequest], *, block: BlockId
    ) -> list[Prepared] | TxOutcome:
        """A plan's steps, proven together on top of `block` (`eth_simulateV1`): all of them, ready to go
        out in one block. Where the node cannot simulate a sequence, only the first step (the others
        go out one a block, each simulated just before)."""
        if len(requests) > 1:
            for request in requests:
                if why := self.blocked(request):
                    return TxOutcome(request, "skipped", why)
            simulated = await preflight.simulate_sequence(self.rpc, self.address, requests, block)
            if simulated is not None:
                for request, (ok, reason, _) in zip(requests, simulated, strict=True):
                    if not ok:
                        return self._failed(TxOutcome(request, "simulation-failed", reason))
                max_fee, tip = await preflight.fees(self.rpc, self.max_fee_gwei)
                return [
                    Prepared(r, used * 13 // 10 + GAS_MARGIN, max_fee, tip)
                    for r, (_, _, used) in zip(requests, simulated, strict=True)
                ]
        first = await self.prepare(requests[0], block=block)
        return first if isinstance(first, TxOutcome) else [first]

    async def dispatch(self, prepared: Prepared) -> Pending | TxOutcome:
        """Sign with the next nonce, journal, broadcast: in the order dispatches are called."""
        (sent,) = await self.dispatch_all([prepared])
        return sent

    async def dispatch_all(self, prepared: Sequence[Prepared]) -> list[Pending | TxOutcome]:
        """Consecutive nonces for these, in this order; stops at the first one that could not go out."""
        sent: list[Pending | TxOutcome] = []
        async with self._signing:
            for ready in prepared:
                sent.append(outcome := await self._dispatch_one(ready))
                if isinstance(outcome, TxOutcome):
                    break
        return sent

    async def _dispatch_one(self, prepared: Prepared) -> Pending | TxOutcome:
        request = prepared.request
        if why := self.blocked(request):  # another task took it while this one was prepared
            return TxOutcome(request, "skipped", why)
        nonce = await self._next_nonce()
        head = await self.rpc.block_number()
        pending = Pending(
            request, nonce, prepared.gas_limit, prepared.max_fee, prepared.tip, [], b"", head, self.clock()
        )
        try:
            await self._sign_and_broadcast(pending)
        except (RpcUnavailableError, RpcMalformedError) as exc:
            # the node may have it (the answer was lost): track it by its hash, never re-sign
            log.warning("%s: no answer to the send (%s); tracking %s", request.label, exc, pending.hashes[-1])
        except RpcError as exc:  # a real refusal: it is not in the node's pool
            self._nonce = None  # unknown: resync before the next send
            self.pending.pop(request.key, None)
            if pending.hashes and self.journal is not None:
                self.journal.outcome(pending.hashes[-1], "dropped", None, 0, 0)
            return self._failed(TxOutcome(request, "send-failed", exc.message, pending.hashes[-1]))
        self._nonce = nonce + 1
        return pending

    async def send(self, request: TxRequest, gas_limit: int | None = None) -> TxOutcome:
        """Submit and wait for the receipt (replacing a stuck transaction)."""
        submitted = await self.submit(request, gas_limit=gas_limit)
        if isinstance(submitted, TxOutcome):
            return submitted
        return await self.wait(submitted)

    async def wait(self, pending: Pending, within: float | None = None) -> TxOutcome:
        deadline = self.clock() + (self.receipt_timeout if within is None else within)
        while pending.outcome is None and self.clock() < deadline:
            await self.poll()
            if pending.outcome is None:
                await asyncio.sleep(self.poll_seconds)
        if pending.outcome is not None:
            return pending.outcome
        hash_ = pending.hashes[-1] if pending.hashes else None
        return TxOutcome(
            pending.request, "not-mined", f"no receipt within {self.receipt_timeout:.0f} s", hash_
        )

    async def _sign_and_broadcast(self, pending: Pending) -> str:
        """Sign for the pending nonce at its fees, journal it, then broadcast. Under `_signing`."""
        request = pending.request
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": pending.nonce,
            "to": to_checksum_address(request.to),
            "data": request.data,
            "value": 0,
            "gas": pending.gas_limit,
            "maxFeePerGas": pending.max_fee,
            "maxPriorityFeePerGas": pending.tip,
        }
        signed = self.signer.sign_transaction(tx)
        tx_hash, raw = "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)
        if self.journal is not None:
            self.journal.signed(
                Signed(
                    request,
                    self.address,
                    pending.nonce,
                    tx_hash,
                    raw,
                    pending.gas_limit,
                    pending.max_fee,
                    pending.tip,
                )
            )
        pending.hashes.append(tx_hash)
        pending.raw = raw
        self.pending[request.key] = pending
        await self._broadcast(raw, tx_hash)
        return tx_hash

    async def _broadcast(self, raw: bytes, tx_hash: str) -> None:
        try:
            await self.rpc.request("eth_sendRawTransaction", ["0x" + raw.hex()])
        except RpcError as exc:
            # maybe our own earlier attempt (a retried request) got through: look it up
            maybe_sent = any(marker in exc.message.lower() for marker in MAYBE_SENT)
            if maybe_sent and await self.rpc.request("eth_getTransactionByHash", [tx_hash]):
                return
            raise

    async def _next_nonce(self) -> int:
        if self._nonce is None:
            node = int(await self.rpc.request("eth_getTransactionCount", [self.address, "pending"]), 16)
            ours = [p.nonce + 1 for p in self.pending.values()]
            self._nonce = max([node, *ours])
        return self._nonce

    def _failed(self, outcome: TxOutcome) -> TxOutcome:
        self.cooling[outcome.request.account.lower()] = self.clock() + self.cooldown_seconds
        return outcome

    # --- following what is in flight --------------------------------------------------------------
    async def poll(self) -> list[TxOutcome]:
        """Receipts of everything in flight in one batch; stuck ones replaced, forgotten ones re-sent."""
        async with self._polling:
            if not self.pending:
                return []
            flights = list(self.pending.values())
            # the mined nonce first: a nonce used *before* the receipts were read, with no receipt of
            # ours, was used by another transaction (read after, it would race our own mining)
            head, mined_nonce = await self._chain_position()
            lookups = [(p, h) for p in flights for h in p.hashes]
            answers = await self.rpc.batch([("eth_getTransactionReceipt", [h]) for _, h in lookups])
            done: list[TxOutcome] = []
            unknown = set()  # a failed look-up says nothing
            for (p, _), receipt in zip(lookups, answers, strict=True):
                if isinstance(receipt, RpcError):
                    unknown.add(p.request.key)
                elif p.outcome is None and isinstance(receipt, dict) and receipt:
                    done.append(await self._settle(p, receipt))
            waiting = [p for p in flights if p.outcome is None and p.request.key not in unknown]
            if waiting:
                await self._nudge(waiting, head, mined_nonce)
            return done

    async def _chain_position(self) -> tuple[int, int]:
        """(head, the sender's mined nonce), in one batch."""
        head, count = await self.rpc.batch(
            [("eth_blockNumber", []), ("eth_getTransactionCount", [self.address, "latest"])]
        )
        for answer in (head, count):
            if isinstance(answer, RpcError):
                raise answer
        return int(head, 16), int(count, 16)

    async def _settle(self, pending: Pending, receipt: dict[str, Any]) -> TxOutcome:
        pending.outcome = outcome = await outcome_of(self.rpc, pending.request, receipt, pending.replacements)
        self.pending.pop(pending.request.key, None)
        if self.journal is not None:
            self.journal.outcome(
                str(receipt["transactionHash"]),
                outcome.status,
                outcome.block,
                outcome.gas_used,
                outcome.fee_wei,
            )
        if not outcome.ok:
            self._failed(outcome)
        return outcome

    async def _nudge(self, waiting: list[Pending], head: int, mined_nonce: int) -> None:
        """Replace what waited `replace_after_blocks`; a nonce used by another transaction is dropped."""
        for p in waiting:
            if p.nonce < mined_nonce:  # no receipt for any of its hashes, yet its nonce is used
                p.outcome = TxOutcome(
                    p.request, "dropped", "its nonce was used by another transaction", p.hashes[-1]
                )
                self.pending.pop(p.request.key, None)
                if self.journal is not None:
                    for tx_hash in p.hashes:
                        self.journal.outcome(tx_hash, "dropped", None, 0, 0)
                continue
            if head - p.sent_block >= self.replace_after_blocks:
                async with self._signing:
                    await self._replace(p, head)

    async def _replace(self, p: Pending, head: int) -> None:
        bumped_fee = p.max_fee * (10_000 + BUMP_BPS) // 10_000 + 1
        ceiling = None if self.max_fee_gwei is None else self.max_fee_gwei * gas.GWEI
        p.sent_block = head
        if p.replacements >= self.max_replacements or (ceiling is not None and bumped_fee > ceiling):
            await self._rebroadcast(p)  # no higher fee allowed: make sure the node still has it
            return
        p.max_fee, p.tip = bumped_fee, min(p.tip * (10_000 + BUMP_BPS) // 10_000 + 1, bumped_fee)
        p.replacements += 1
        try:
            tx_hash = await self._sign_and_broadcast(p)
        except (RpcError, RpcUnavailableError) as exc:  # the earlier hashes may still be mined: keep all
            log.warning("%s: replacing nonce %d: %s", p.request.label, p.nonce, exc)
            return
        log.info("%s: replaced with %s (fees +12.5 %%, #%d)", p.request.label, tx_hash, p.replacements)

    async def _rebroadcast(self, p: Pending) -> None:
        try:
            await self._broadcast(p.raw, p.hashes[-1])
        except (RpcError, RpcUnavailableError) as exc:
            log.warning("%s: re-broadcasting %s: %s", p.request.label, p.hashes[-1], exc)
