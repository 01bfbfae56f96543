"""Shards: a stable split of accounts by address, the engine's filter, one key per shard."""

from __future__ import annotations

from collections import Counter

import pytest
from eth_account import Account

from keeper.config import shard_count, shard_signers
from keeper.errors import SettingError
from keeper.shards import lease_name, shard_filter, shard_of

ADDRESSES = [Account.create(f"seed {i}").address for i in range(400)]


def test_an_account_has_one_stable_shard_whatever_its_case() -> None:
    taker, maker = "0x48348B9445234f2942C96d86504708bea7e4B9A0", "0x82c7B0Ae2aFFc2a865405a444ED88f9cB974cA4B"
    # keccak256(b"0x48348b...") mod 2, 3, 7: fixed forever (documented in docs/replicas.md)
    assert [shard_of(taker, n) for n in (1, 2, 3, 7)] == [0, 0, 0, 1]
    assert [shard_of(maker, n) for n in (2, 3, 7)] == [0, 2, 4]
    assert shard_of(maker.lower(), 7) == shard_of(maker, 7) == 4
    counts = Counter(shard_of(a, 4) for a in ADDRESSES)
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 60  # an even split, roughly
    assert lease_name(1) == "shard:1"


def test_the_filter_splits_accounts_and_keeps_inventory_everywhere() -> None:
    filters = [shard_filter(i, 3) for i in range(3)]
    for address in ADDRESSES[:50]:
        assert sum(f(address.lower()) for f in filters) == 1  # exactly one shard takes it
    inventory = "close:0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert all(f(inventory) for f in filters)


def test_one_key_per_shard() -> None:
    keys = ["0x" + f"{i + 1:064x}" for i in range(3)]
    env = {"KEEPER_SHARDS": "3", **{f"KEEPER_PRIVATE_KEY_{i}": k for i, k in enumerate(keys)}}
    assert shard_count(env) == 3
    assert [s.address for s in shard_signers(env)] == [Account.from_key(k).address for k in keys]
    assert shard_count({}) == 1
    with pytest.raises(SettingError, match="no key for shard 2"):
        shard_signers({**env, "KEEPER_PRIVATE_KEY_2": ""})
    with pytest.raises(SettingError, match="shard 1 has the key of another shard"):
        shard_signers({**env, "KEEPER_PRIVATE_KEY_1": keys[0]})
    with pytest.raises(SettingError, match="shard 0: KEEPER_PRIVATE_KEY: not a 32-byte hex") as bad:
        shard_signers({**env, "KEEPER_PRIVATE_KEY_0": "0xnothex"})
    assert "nothex" not in str(bad.value)
    with pytest.raises(SettingError, match="KEEPER_SHARDS: must be between 1 and 64"):
        shard_count({"KEEPER_SHARDS": "0"})
