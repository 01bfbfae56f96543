"""The one ABI codec: calldata from a signature string, revert reasons, event topics.

Hot paths encode and decode with eth_abi directly (web3's contract objects cost ~200 ms of Python per
1,000 calls). Every signature string the keeper uses is checked against the real contract artifacts
by `tests/test_signatures.py`; `abi/` holds exactly those entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.abi import event_signature_to_log_topic, function_signature_to_4byte_selector

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")


def encode_call(signature: str, *args: Any) -> bytes:
    """Calldata of `signature` like "liquidate(address,address,int256)" with `args`."""
    inputs = signature[signature.index("(") + 1 : -1]
    types = list(split_types(inputs)) if inputs else []
    return function_signature_to_4byte_selector(signature) + encode(types, list(args))


def selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature)


def topic(signature: str) -> str:
    """An event's topic0 as 0x-hex, e.g. topic("Transfer(address,address,uint256)")."""
    return "0x" + event_signature_to_log_topic(signature).hex().removeprefix("0x")


def decode_revert(data: bytes) -> str:
    """`Error(string)` reasons as text (Perp's are codes like CH_EAV); anything else as hex."""
    if data[:4] == ERROR_STRING_SELECTOR:
        try:
            (reason,) = decode(["string"], data[4:])
            return str(reason)
        except Exception:
            pass
    return "0x" + data.hex() if data else "no reason"


def split_types(inputs: str) -> Iterator[str]:
    """Split "address,(uint256,bool),bytes" at top-level commas."""
    depth, start = 0, 0
    for i, char in enumerate(inputs):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            yield inputs[start:i]
            start = i + 1
    yield inputs[start:]
