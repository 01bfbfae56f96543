"""Start-up reconciliation: settle the journal's pending transactions against the chain.

Runs before anything new is signed. Per pending nonce of the sender (all its hashes: the first
signature and its replacements):

* a hash has a receipt → mined (or reverted): outcome recorded, the nonce's other hashes "replaced";
* none has, but the node knows one → still pending: its stored bytes are broadcast again, tracked;
* unknown to the node, and the sender's mined nonce is past it → another transaction used the nonce:
  "dropped" (the step may be planned again);
* unknown, nonce unused → the stored bytes are broadcast again (highest fee first); accepted → still
  pending; refused by the node (underpriced, expired, nonce too low) → one more receipt lookup (a
  refusal can race a mining), then "dropped", its nonce free.

The sender's nonce is read before the receipts: a transaction of ours mined in between then shows a
receipt, so "the nonce moved and there is no receipt of ours" really means another transaction used it.
Nothing is ever signed here: there is no key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keeper.errors import RpcError
from keeper.journal import DROPPED, PENDING, Entry, Journal, broadcast, receipt_outcome
from keeper.receipts import Pending, TxRequest
from keeper.rpc import Rpc


@dataclass(frozen=True)
class Reconciled:
    sender: str
    counts: dict[str, int]  # entries by outcome: mined, reverted, replaced, dropped, pending
    pending: tuple[Entry, ...]  # still pending, by nonce: the receipt tracker follows these
    next_nonce: int  # the smallest nonce not held by a pending entry, at least the node's pending count
    gaps: tuple[int, ...]  # free nonces below a pending one: until filled, the ones above cannot mine


@dataclass(frozen=True)
class _Seen:
    receipt: dict[str, Any] | None
    known: bool


async def reconcile(journal: Journal, rpc: Rpc, sender: str) -> Reconciled:
    """Settle `sender`'s pending journal entries with the chain (see the module docstring)."""
    groups = _by_nonce(journal.pending(sender))
    latest, pool = await _nonces(rpc, sender)
    seen = await _lookup(rpc, [e.tx_hash for group in groups for e in group])
    counts: Counter[str] = Counter()
    kept: list[Entry] = []
    refused: dict[int, str] = {}
    for group in groups:
        nonce = group[0].nonce
        if _record_mined(journal, group, seen, counts):
            continue
        if any(seen[e.tx_hash].known for e in group):
            await _rebroadcast(rpc, [e for e in group if seen[e.tx_hash].known])
            kept += group
        elif latest > nonce:
            _drop(journal, group, f"nonce {nonce} was used by another transaction", counts)
        elif (why := await _rebroadcast(rpc, group)) is None:
            kept += group
        else:
            refused[nonce] = why
    if refused:
        await _settle_refused(journal, rpc, [g for g in groups if g[0].nonce in refused], refused, counts)
    counts[PENDING] += len(kept)
    result = _result(sender, counts, kept, pool)
    if journal.audit is not None:
        for entry in result.pending:
            journal.audit.record(
                event="journal",
                action="tracked",
                tx_hash=entry.tx_hash,
                step=entry.step,
                sender=entry.sender,
                nonce=entry.nonce,
                status=PENDING,
            )
        journal.audit.record(
            event="journal",
            action="reconciled",
            sender=result.sender,
            counts=result.counts,
            next_nonce=result.next_nonce,
            gaps=list(result.gaps),
        )
    return result


def _by_nonce(entries: Sequence[Entry]) -> list[list[Entry]]:
    groups: dict[int, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.nonce, []).append(entry)
    return [groups[n] for n in sorted(groups)]


async def _nonces(rpc: Rpc, sender: str) -> tuple[int, int]:
    """The sender's mined nonce count and the node's pending one."""
    answers = await rpc.batch(
        [("eth_getTransactionCount", [sender, "latest"]), ("eth_getTransactionCount", [sender, "pending"])]
    )
    for answer in answers:
        if isinstance(answer, RpcError):
            raise answer
    return int(answers[0], 16), int(answers[1], 16)


async def _lookup(rpc: Rpc, hashes: Sequence[str], *, by_hash: bool = True) -> dict[str, _Seen]:
    """Receipts (and, with `by_hash`, whether the node knows the transaction) in one JSON-RPC batch."""
    requests: list[tuple[str, list[Any]]] = [("eth_getTransactionReceipt", [h]) for h in hashes]
    if by_hash:
        requests += [("eth_getTransactionByHash", [h]) for h in hashes]
    answers = await rpc.batch(requests) if requests else []
    for answer in answers:
        if isinstance(answer, RpcError):
            raise answer
    n = len(hashes)
    return {h: _Seen(answers[i] or None, by_hash and bool(answers[n + i])) for i, h in enumerate(hashes)}


def _record_mined(journal: Journal, group: list[Entry], seen: dict[str, _Seen], counts: Counter[str]) -> bool:
    """Record the group's mined hash, if any (its siblings become "replaced")."""
    for entry in group:
        receipt = seen[entry.tx_hash].receipt
        if receipt is not None:
            mined = receipt_outcome(receipt)
            journal.record_outcome(
                entry.tx_hash, mined.status, block=mined.block, gas_used=mined.gas_used, fee_wei=mined.fee_wei
            )
            counts[mined.status] += 1
            counts["replaced"] += len(group) - 1
            return True
    return False


def _drop(journal: Journal, group: list[Entry], reason: str, counts: Counter[str]) -> None:
    for entry in group:
        journal.record_outcome(entry.tx_hash, DROPPED, reason=reason)
    counts[DROPPED] += len(group)


async def _rebroadcast(rpc: Rpc, group: list[Entry]) -> str | None:
    """Broadcast the stored bytes, highest fee first, until the node accepts one: None when one was
    accepted, else the node's last refusal."""
    why = "nothing to broadcast"
    for entry in sorted(group, key=lambda e: (e.max_fee, e.tip), reverse=True):
        try:
            await broadcast(rpc, entry.raw)
        except RpcError as exc:
            why = f"refused by the node: {exc.message}"
            continue
        return None
    return why


async def _settle_refused(
    journal: Journal, rpc: Rpc, groups: list[list[Entry]], refused: dict[int, str], counts: Counter[str]
) -> None:
    """A refusal ("nonce too low") may mean ours was mined a moment ago: look once more, then drop."""
    seen = await _lookup(rpc, [e.tx_hash for group in groups for e in group], by_hash=False)
    for group in groups:
        if not _record_mined(journal, group, seen, counts):
            _drop(journal, group, refused[group[0].nonce], counts)


def _result(sender: str, counts: Counter[str], kept: list[Entry], pool: int) -> Reconciled:
    held = {e.nonce for e in kept}
    next_nonce = pool
    while next_nonce in held:
        next_nonce += 1
    top = max(held, default=next_nonce)
    gaps = tuple(n for n in range(next_nonce, top) if n not in held)
    return Reconciled(
        sender.lower(), dict(+counts), tuple(sorted(kept, key=lambda e: e.nonce)), next_nonce, gaps
    )


def restored(found: Reconciled, head: int, now: float) -> dict[str, Pending]:
    """What the transaction manager follows after a restart: each pending step, with every hash of its
    nonce and the newest signed bytes (re-broadcast as they are: there is no re-signing)."""
    by_step: dict[str, list[Entry]] = {}
    for entry in found.pending:
        by_step.setdefault(entry.step, []).append(entry)
    pending = {}
    for step, entries in by_step.items():
        newest = max(entries, key=lambda e: e.max_fee)
        request = TxRequest(step, newest.account, "", b"", newest.label)
        hashes = [e.tx_hash for e in entries]
        pending[step] = Pending(
            request,
            newest.nonce,
            newest.gas_limit,
            newest.max_fee,
            newest.tip,
            hashes,
            newest.raw,
            head,
            now,
            restored=True,
        )
    return pending
