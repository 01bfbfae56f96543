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
from keeper.journal import Entry, Journal
from keeper.lease import Fence, LeaseLostError
from keeper.receipts import Pending, Prepared, TxOutcome, TxRequest, outcome_of
from keeper.reconcile import Reconciled, reconcile, restored
from keeper.rpc import BlockId, Rpc

log = logging.getLogger(__name__)

MAYBE_SENT = ("already known", "nonce too low", "known transaction", "already imported")
BUMP_BPS = 1_250  # +12.5 %
DROPPED_AFTER_POLLS = 3
GAS_MARGIN = 50_000  # over 1.5x a simulated step's gas: state may move before it lands (other steps first)


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
        fence: Callable[[], Fence | None] | None = None,
    ) -> None:
        self.rpc, self.signer, self.chain_id, self.journal = rpc, signer, chain_id, journal
        # replicas (keeper/lease.py): every journal write is checked against the lease, in its transaction
        self.fence = fence
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

    async def start(self) -> Reconciled | None:
        """Before anything new is signed: settle the journal with the chain; follow what may still be
        mined (re-broadcast from its stored bytes, never re-signed) and take the next free nonce."""
        if self.journal is None:
            return None
        found = await reconcile(self.journal, self.rpc, self.address)
        self.pending.update(restored(found, await self.rpc.block_number(), self.clock()))
        self._nonce = found.next_nonce
        if found.gaps:
            log.warning("nonces %s are free below pending ones: those wait until they are used", found.gaps)
        log.info("journal reconciled: %s", found.counts)
        return found

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

    async def prepare_batch(
        self, plans: Sequence[Sequence[TxRequest]], *, block: BlockId
    ) -> list[list[Prepared] | TxOutcome]:
        """Every plan of a head proven as the one sequence it will be mined as (`preflight.prove_batch`);
        one plan at a time where the node cannot simulate a sequence."""
        blocked = {
            i: TxOutcome(r, "skipped", why)
            for i, p in enumerate(plans)
            for r in p
            if (why := self.blocked(r))
        }
        live = [i for i in range(len(plans)) if i not in blocked]
        proven = await preflight.prove_batch(self.rpc, self.address, [plans[i] for i in live], block)
        if proven is None:  # no eth_simulateV1: each plan's first step alone, the next ones a block later
            return [blocked.get(i) or await self._first(p, block) for i, p in enumerate(plans)]
        gas_by, failures = proven
        max_fee, tip = await preflight.fees(self.rpc, self.max_fee_gwei) if gas_by else (0, 0)
        out: list[list[Prepared] | TxOutcome] = []
        for i, steps in enumerate(plans):
            if i in blocked:
                out.append(blocked[i])
            elif (j := live.index(i)) in failures:
                request, reason = failures[j]
                out.append(self._failed(TxOutcome(request, "simulation-failed", reason)))
            else:
                out.append(
                    [
                        Prepared(r, g * 3 // 2 + GAS_MARGIN, max_fee, tip)
                        for r, g in zip(steps, gas_by[j], strict=True)
                    ]
                )
        return out

    async def _first(self, steps: Sequence[TxRequest], block: BlockId) -> list[Prepared] | TxOutcome:
        prepared = await self.prepare(steps[0], block=block)
        return prepared if isinstance(prepared, TxOutcome) else [prepared]

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
        pending.fee_cap = prepared.fee_cap
        try:
            await self._sign_and_broadcast(pending)
        except (RpcUnavailableError, RpcMalformedError) as exc:
            # the node may have it (the answer was lost): track it by its hash, never re-sign
            log.warning("%s: no answer to the send (%s); tracking %s", request.label, exc, pending.hashes[-1])
        except RpcError as exc:  # a real refusal: it is not in the node's pool
            self._nonce = None  # unknown: resync before the next send
            self.pending.pop(request.key, None)
            if pending.hashes and self.journal is not None:
                self.journal.record_outcome(pending.hashes[-1], "dropped", reason=f"refused: {exc.message}")
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
        fence = None if self.fence is None else self.fence()
        if self.fence is not None and fence is None:
            raise LeaseLostError(f"{request.label}: this replica does not hold the lease: not signed")
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
            self.journal.record_signed(
                Entry(
                    request.key,
                    request.account,
                    request.label,
                    self.address,
                    pending.nonce,
                    tx_hash,
                    raw,
                    pending.max_fee,
                    pending.tip,
                    pending.gas_limit,
                ),
                fence=fence,
            )
        if self.fence is not None and self.fence() != fence:
            # paused between the fenced write and here, past the TTL: the new holder reconciles the
            # journal and broadcasts these bytes itself; a resumed ex-holder sends nothing
            raise LeaseLostError(f"{request.label}: the lease lapsed once {tx_hash} was journaled: not sent")
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
            self.journal.record_outcome(
                str(receipt["transactionHash"]),
                "mined" if outcome.ok else "reverted",
                block=outcome.block,
                gas_used=outcome.gas_used,
                fee_wei=outcome.fee_wei,
            )
        if not outcome.ok:
            self._failed(outcome)
        return outcome

    async def _nudge(self, waiting: list[Pending], head: int, mined_nonce: int) -> None:
        """Replace what waited `replace_after_blocks`; a nonce used by another transaction is dropped."""
        for p in waiting:
            # no receipt for any of its hashes, yet its nonce is used: by another transaction, once a
            # few polls agree (a node may count the nonce a moment before it serves the receipt)
            p.unseen = p.unseen + 1 if p.nonce < mined_nonce else 0
            if p.unseen >= DROPPED_AFTER_POLLS:
                p.outcome = TxOutcome(
                    p.request, "dropped", "its nonce was used by another transaction", p.hashes[-1]
                )
                self.pending.pop(p.request.key, None)
                if self.journal is not None:
                    for tx_hash in p.hashes:
                        self.journal.record_outcome(tx_hash, "dropped", reason="nonce used by another tx")
                continue
            if not p.unseen and head - p.sent_block >= self.replace_after_blocks:
                async with self._signing:
                    await self._replace(p, head)

    async def _replace(self, p: Pending, head: int) -> None:
        bumped_fee = p.max_fee * (10_000 + BUMP_BPS) // 10_000 + 1
        caps = [
            c for c in (p.fee_cap, None if self.max_fee_gwei is None else self.max_fee_gwei * gas.GWEI) if c
        ]
        ceiling = min(caps) if caps else None
        p.sent_block = head
        if (
            p.restored
            or p.replacements >= self.max_replacements
            or (ceiling is not None and bumped_fee > ceiling)
        ):
            await self._rebroadcast(p)  # no higher fee allowed: make sure the node still has it
            return
        p.max_fee, p.tip = bumped_fee, min(p.tip * (10_000 + BUMP_BPS) // 10_000 + 1, bumped_fee)
        p.replacements += 1
        try:
            tx_hash = await self._sign_and_broadcast(p)
        except (RpcError, RpcUnavailableError, LeaseLostError) as exc:
            # the earlier hashes may still be mined: keep all (a lost lease: the new holder follows them)
            log.warning("%s: replacing nonce %d: %s", p.request.label, p.nonce, exc)
            return
        log.info("%s: replaced with %s (fees +12.5 %%, #%d)", p.request.label, tx_hash, p.replacements)

    async def _rebroadcast(self, p: Pending) -> None:
        if self.fence is not None and self.fence() is None:
            return  # not the holder (any more): the holder follows the journal's pending rows
        try:
            await self._broadcast(p.raw, p.hashes[-1])
        except (RpcError, RpcUnavailableError) as exc:
            log.warning("%s: re-broadcasting %s: %s", p.request.label, p.hashes[-1], exc)
