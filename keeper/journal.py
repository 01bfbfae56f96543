"""The durable transaction journal: every signed transaction is on disk before it is broadcast.

What the keeper has in flight must survive `kill -9`: a restarted keeper that forgot a transaction
could sign the same step again under a new nonce and pay twice. So the order is always
sign → `record_signed` (one committed database transaction, raw bytes included) → broadcast, and a
step whose transaction may still be mined (a `pending` entry) is never signed again: only replaced at
the same nonce. Outcomes are recorded as they become known; at start-up `keeper.reconcile` settles
what was pending against the chain. The rules and their reasons: docs/journal.md.

Addresses and hashes are stored lowercase; wei amounts are exact integers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keeper.audit import AuditLog
from keeper.errors import KeeperError, RpcError
from keeper.lease import Fence
from keeper.rpc import Rpc
from keeper.store import Store

PENDING, MINED, REVERTED, REPLACED, DROPPED = "pending", "mined", "reverted", "replaced", "dropped"
STATUSES = (PENDING, MINED, REVERTED, REPLACED, DROPPED)
# a node that already holds these exact bytes says so; the broadcast did its job
ALREADY_KNOWN = ("already known", "known transaction", "already imported", "already exists")


class JournalError(KeeperError, RuntimeError):
    """A journal rule was broken by the caller (a step signed again while its transaction may still
    be mined, an unknown hash or status): a bug in the executor, never something to retry."""


@dataclass(frozen=True)
class Entry:
    step: str  # the step key: opportunity key:round:label; one step, one nonce while pending
    account: str  # the liquidated account
    label: str  # "liquidate", "close", "sell via 0x", ...
    sender: str  # the signer's address
    nonce: int
    tx_hash: str
    raw: bytes  # the signed transaction: re-broadcast as is, never re-signed
    max_fee: int
    tip: int
    gas_limit: int
    status: str = PENDING
    block: int | None = None
    gas_used: int | None = None
    fee_wei: int | None = None  # L2 execution + the receipt's l1Fee
    reason: str = ""  # why it was dropped or replaced
    created_at: float = 0.0


@dataclass(frozen=True)
class Mined:
    """What a receipt says about a transaction."""

    status: str  # mined | reverted
    block: int
    gas_used: int
    fee_wei: int


def receipt_outcome(receipt: Mapping[str, Any]) -> Mined:
    """Status, block, gas used and fee (gasUsed × effectiveGasPrice, plus the OP-stack `l1Fee` when
    the receipt carries one) from a JSON-RPC receipt."""
    gas_used = int(receipt["gasUsed"], 16)
    fee = gas_used * int(receipt.get("effectiveGasPrice") or "0x0", 16)
    fee += int(receipt.get("l1Fee") or "0x0", 16)
    return Mined(
        MINED if receipt.get("status") == "0x1" else REVERTED,
        int(receipt["blockNumber"], 16),
        gas_used,
        fee,
    )


class Journal:
    """The journal over the state database; every record also goes to the audit trail
    (`event="journal"`) when one is given."""

    def __init__(self, store: Store, audit: AuditLog | None = None) -> None:
        self.store = store
        self.audit = audit

    def record_signed(self, *entries: Entry, fence: Fence | None = None) -> None:
        """Record signed transactions, all in one database transaction, BEFORE broadcasting them.

        Raises `JournalError` (recording nothing) when a step still has a pending transaction at
        another (sender, nonce): only a replacement (same sender and nonce) may be signed for it.
        With a `fence` (replicas: keeper/lease.py) the same transaction checks that its holder still
        holds the lease at its epoch, else `LeaseLostError` and nothing is recorded."""
        now = time.time()
        rows = [_row(dataclasses.replace(e, created_at=e.created_at or now)) for e in entries]
        steps: dict[str, tuple[str, int]] = {}
        for row in rows:
            if steps.setdefault(row["step"], (row["sender"], row["nonce"])) != (row["sender"], row["nonce"]):
                raise JournalError(f"step {row['step']}: two nonces in one batch")
            if row["status"] != PENDING:
                raise JournalError(f"{row['tx_hash']}: a signed transaction is recorded as pending")
        if conflicts := self.store.journal_insert(rows, fence):
            step, sender, nonce = conflicts[0]
            raise JournalError(
                f"step {step} may still be mined (nonce {nonce} of {sender} is pending): not signed again"
            )
        for row in rows:
            self._audit("signed", row)

    def record_outcome(
        self,
        tx_hash: str,
        status: str,
        *,
        block: int | None = None,
        gas_used: int | None = None,
        fee_wei: int | None = None,
        reason: str = "",
    ) -> None:
        """Record what became of a transaction. A mined one (mined or reverted) marks the other
        pending hashes of its (sender, nonce) "replaced": that nonce is spent."""
        if status not in STATUSES:
            raise JournalError(f"unknown journal status {status!r}")
        fields: dict[str, Any] = {"reason": reason}
        fields.update(
            {
                k: v
                for k, v in (("block", block), ("gas_used", gas_used), ("fee_wei", fee_wei))
                if v is not None
            }
        )
        try:
            replaced = self.store.journal_update(tx_hash.lower(), status, fields)
        except KeyError:
            raise JournalError(f"{tx_hash} is not in the journal") from None
        if self.audit is not None:
            for changed in (tx_hash.lower(), *replaced):
                self._audit("outcome", _row(self._one(changed)))

    def open_steps(self) -> dict[str, list[Entry]]:
        """Every step with a transaction that may still be mined, and those transactions."""
        steps: dict[str, list[Entry]] = {}
        for row in self.store.journal_rows(status=PENDING):
            steps.setdefault(row["step"], []).append(Entry(**row))
        return steps

    def may_be_mined(self, step: str) -> bool:
        """True while the step has a pending transaction: never sign it again (replace it)."""
        return bool(self.store.journal_rows(step=step, status=PENDING))

    def pending(self, sender: str) -> list[Entry]:
        """The sender's pending transactions by nonce (replacements of one nonce oldest first)."""
        rows = self.store.journal_rows(sender=sender.lower(), status=PENDING)
        return sorted((Entry(**row) for row in rows), key=lambda e: e.nonce)

    def entries(self, step: str) -> list[Entry]:
        """Every transaction ever signed for the step, oldest first."""
        return [Entry(**row) for row in self.store.journal_rows(step=step)]

    def entry(self, tx_hash: str) -> Entry | None:
        rows = self.store.journal_rows(tx_hash=tx_hash.lower())
        return Entry(**rows[0]) if rows else None

    def _one(self, tx_hash: str) -> Entry:
        found = self.entry(tx_hash)
        assert found is not None
        return found

    def _audit(self, action: str, row: Mapping[str, Any]) -> None:
        if self.audit is not None:
            fields = {k: v for k, v in row.items() if action == "signed" or k != "raw"}
            self.audit.record(event="journal", action=action, **fields)


async def broadcast(rpc: Rpc, raw: bytes) -> None:
    """Send signed bytes. A node that already holds them counts as sent; any other refusal raises
    `RpcError`. Either way the journal keeps the entry pending: a send whose answer was lost may
    well have reached the network, and only the chain can say (the tracker, or `reconcile`)."""
    try:
        await rpc.request("eth_sendRawTransaction", ["0x" + raw.hex()])
    except RpcError as exc:
        if not any(marker in exc.message.lower() for marker in ALREADY_KNOWN):
            raise


async def record_and_broadcast(journal: Journal, rpc: Rpc, *entries: Entry) -> None:
    """The one safe order: journal first (one commit), then broadcast each entry in order. The first
    refusal raises; the entries stay pending for the receipt tracker or `reconcile` to settle."""
    journal.record_signed(*entries)
    for entry in entries:
        await broadcast(rpc, entry.raw)


def _row(entry: Entry) -> dict[str, Any]:
    row = dataclasses.asdict(entry)
    for key in ("sender", "tx_hash", "account"):
        row[key] = row[key].lower()
    return row
