"""Shards: accounts split among signers so that nonces never contend (docs/replicas.md).

An account belongs to shard `keccak256(lowercase hex address, as ASCII) mod N`: stable across
processes, restarts and versions, and independent of the order accounts are found in. Each shard has
its own lease (`shard:<i>`) and its own key; a replica signs for the shards whose leases it holds. What
is not an account (the keeper's own inventory: a market or a token to close or sell) belongs to every
shard's engine: each signer closes and sells only what it holds itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from eth_utils.crypto import keccak

ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def shard_of(address: str, shards: int) -> int:
    """The shard of an account address (any case), 0 <= shard < shards."""
    return int.from_bytes(keccak(address.lower().encode("ascii")), "big") % shards


def lease_name(shard: int) -> str:
    return f"shard:{shard}"


def shard_filter(shard: int, shards: int) -> Callable[[str], bool]:
    """The engine's "is this opportunity mine?" for one shard, on `Opportunity.exclusive`: accounts by
    their shard, anything else (inventory) always."""

    def mine(exclusive: str) -> bool:
        return not ADDRESS.match(exclusive) or shard_of(exclusive, shards) == shard

    return mine
