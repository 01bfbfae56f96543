"""What the transaction manager sends and what came of it: requests, prepared and pending
transactions, outcomes read from receipts, revert reasons in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keeper.codec import decode_revert
from keeper.errors import RpcError
from keeper.rpc import Rpc


@dataclass(frozen=True)
class TxRequest:
    key: str  # identifies the step: the in-flight registry and the journal refuse duplicates
    account: str  # the account it acts on: cooldown after a failure
    to: str
    data: bytes
    label: str


@dataclass
class TxOutcome:
    request: TxRequest
    status: str  # "mined", "reverted", "simulation-failed", "skipped", "not-mined", "dropped", "send-failed"
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


@dataclass(frozen=True)
class Prepared:
    """A request simulated and priced, ready to be signed."""

    request: TxRequest
    gas_limit: int
    max_fee: int
    tip: int
    fee_cap: int | None = None  # the most wei per gas this plan may ever pay (its gas ceiling)


@dataclass
class Pending:
    """A transaction in flight: every hash signed for its nonce (replacements), newest last."""

    request: TxRequest
    nonce: int
    gas_limit: int
    max_fee: int
    tip: int
    hashes: list[str]
    raw: bytes  # the newest signed bytes: re-broadcast as they are if a node forgets them
    sent_block: int
    started: float
    replacements: int = 0
    outcome: TxOutcome | None = None
    restored: bool = False  # from the journal after a restart: re-broadcast as is, never re-signed
    unseen: int = 0  # polls in a row that found its nonce used and no receipt of ours
    fee_cap: int | None = None  # replacements never raise the max fee above it


def revert_reason(error: RpcError) -> str:
    """The decoded revert reason of a failed eth_call / estimateGas (Perp's are codes like CH_EAV)."""
    data = error.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) > 2:
        return decode_revert(bytes.fromhex(data[2:]))
    text = error.message
    return text.split("execution reverted: ", 1)[-1] if "execution reverted" in text else text


async def outcome_of(rpc: Rpc, request: TxRequest, receipt: dict[str, Any], replacements: int) -> TxOutcome:
    """What a receipt says happened, with the revert reason of a mined revert."""
    gas_used = int(receipt["gasUsed"], 16)
    fee = gas_used * int(receipt.get("effectiveGasPrice", "0x0"), 16) + int(receipt.get("l1Fee", "0x0"), 16)
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
        outcome.reason = await mined_revert_reason(rpc, receipt["transactionHash"])
    return outcome


async def mined_revert_reason(rpc: Rpc, tx_hash: str) -> str:
    """A receipt has no reason: ask the node's call tracer (anvil, geth with debug enabled)."""
    try:
        trace = await rpc.request("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
    except RpcError:
        return "reverted (no trace available)"
    if isinstance(trace, dict):
        if trace.get("revertReason"):
            return str(trace["revertReason"])
        output = trace.get("output")
        if isinstance(output, str) and len(output) > 2:
            return decode_revert(bytes.fromhex(output[2:]))
    return "reverted"
