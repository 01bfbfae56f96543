"""The PostgreSQL store against a real server (tests/pg.py): the same behaviour as SQLite's, the
schema migrated once by concurrent openers, leases taken, renewed and fenced by the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing

import psycopg
import pytest

from keeper.errors import StoreError
from keeper.journal import Entry, Journal, JournalError
from keeper.lease import Fence, LeaseLostError
from keeper.store import SCHEMA_VERSION
from keeper.store_pg import PgStore, open_store, redact_dsn
from tests.pg import PgServer, pg_server, pg_url  # noqa: F401  (fixtures)


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:  # noqa: F811
    with closing(PgStore(pg_url)) as opened:
        yield opened


def signed(step: str, nonce: int, sender: str = "0xSENDER", fee: int = 10**10) -> Entry:
    return Entry(step, "0xAccount", "liquidate", sender, nonce, f"0x{step}{nonce}{fee}", b"\x02raw", fee,
                 10**9, 300_000)  # fmt: skip


def test_a_fresh_database_gets_the_whole_schema_and_a_second_open_changes_nothing(pg_url: str) -> None:  # noqa: F811
    with closing(PgStore(pg_url)) as first:
        assert first.schema_version() == SCHEMA_VERSION
        first.bind(31337, "0xANCHOR")
    with closing(PgStore(pg_url)) as again:
        assert again.schema_version() == SCHEMA_VERSION
        again.bind(31337, "0xanchor")
        with pytest.raises(StoreError, match="chain_id"):
            again.bind(10, "0xanchor")


def test_replicas_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:  # noqa: F811
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            PgStore(pg_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with closing(PgStore(pg_url)) as store:
        assert store.schema_version() == SCHEMA_VERSION


def test_the_account_index_and_checkpoint_as_on_sqlite(store: PgStore) -> None:
    assert store.checkpoint() is None
    store.advance(120, [("0xbbb", 110), ("0xaaa", 100)], {119: "0xh119", 120: "0xh120"})
    store.advance(130, [("0xaaa", 90), ("0xccc", 125)], {130: "0xh130"})
    assert store.accounts() == ["0xaaa", "0xbbb", "0xccc"]
    assert store.checkpoint() == 130
    store.forget_hashes_below(120)
    assert store.block_hashes() == {120: "0xh120", 130: "0xh130"}
    assert store.rollback(120) == 1  # 0xccc, first seen at 125
    assert store.accounts() == ["0xaaa", "0xbbb"]
    assert store.checkpoint() == 120


def test_the_journal_keeps_its_rules_and_exact_integers(store: PgStore) -> None:
    journal = Journal(store)
    big = 2**70  # past 64 bits: exact
    journal.record_signed(signed("s1", 7, fee=big))
    assert journal.may_be_mined("s1")
    with pytest.raises(JournalError, match="may still be mined"):
        journal.record_signed(signed("s1", 8))
    bumped = signed("s1", 7, fee=big + 1)
    journal.record_signed(bumped)  # a replacement at the same nonce is fine
    journal.record_outcome(bumped.tx_hash, "mined", block=5, gas_used=21_000, fee_wei=big)
    (first, second) = journal.entries("s1")
    assert (first.status, second.status) == ("replaced", "mined")
    assert first.max_fee == big
    assert second.fee_wei == big
    assert second.raw == b"\x02raw"
    assert not journal.may_be_mined("s1")


def test_a_lease_is_renewed_by_its_holder_and_taken_only_after_it_expires(store: PgStore) -> None:
    first = store.lease_claim("signer", "a", ttl=1)
    assert first is not None
    assert (first.holder, first.epoch) == ("a", 1)
    refused = store.lease_claim("signer", "b", ttl=1)
    assert refused is not None
    assert (refused.holder, refused.epoch) == ("a", 1)
    renewed = store.lease_claim("signer", "a", ttl=1)
    assert renewed is not None
    assert renewed.epoch == 1
    assert renewed.expires_at > first.expires_at
    time.sleep(1.1)
    taken = store.lease_claim("signer", "b", ttl=1)
    assert taken is not None
    assert (taken.holder, taken.epoch) == ("b", 2)
    assert [(e, h) for e, h, _ in store.lease_history("signer")] == [(1, "a"), (2, "b")]
    store.lease_release("signer", "b")
    assert store.lease_claim("signer", "a", ttl=1).epoch == 3  # type: ignore[union-attr]


def test_a_fenced_write_from_an_ex_holder_records_nothing(store: PgStore) -> None:
    journal = Journal(store)
    store.lease_claim("signer", "a", ttl=0.5)
    journal.record_signed(signed("s1", 0), fence=Fence("signer", "a", 1))
    time.sleep(0.6)
    with pytest.raises(LeaseLostError, match="expired"):  # lapsed, nobody took it yet
        journal.record_signed(signed("s2", 1), fence=Fence("signer", "a", 1))
    store.lease_claim("signer", "b", ttl=5)
    with pytest.raises(LeaseLostError, match="held by b at epoch 2"):
        journal.record_signed(signed("s3", 1), fence=Fence("signer", "a", 1))
    assert list(journal.open_steps()) == ["s1"]
    journal.record_signed(signed("s4", 1), fence=Fence("signer", "b", 2))


def test_a_take_over_waits_for_a_fenced_insert_in_progress(store: PgStore, pg_url: str) -> None:  # noqa: F811
    """The fence locks the lease row: a claim made meanwhile waits for the insert, then sees it."""
    store.lease_claim("signer", "a", ttl=0.3)
    with psycopg.connect(pg_url, autocommit=True) as holder:
        with holder.transaction():
            holder.execute("SELECT * FROM leases WHERE name = 'signer' FOR UPDATE")
            time.sleep(0.4)  # the lease lapses while "a" is inside its journal transaction
            started = time.monotonic()
            taker = threading.Thread(target=store.lease_claim, args=("signer", "b", 5))
            taker.start()
            taker.join(0.3)
            assert taker.is_alive()  # blocked on the row lock
        taker.join(5)
        assert time.monotonic() - started >= 0.3
    assert store.leases()[0].holder == "b"


def test_a_terminated_connection_fails_one_call_and_the_next_reconnects(store: PgStore, pg_url: str) -> None:  # noqa: F811
    store.lease_claim("signer", "a", ttl=5)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'perp-keeper' AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StoreError, match="state database"):
        store.lease_claim("signer", "a", ttl=5)
    renewed = store.lease_claim("signer", "a", ttl=5)
    assert renewed is not None
    assert renewed.epoch == 1


def test_the_password_is_never_shown() -> None:
    url = "postgresql://keeper:s3cret@db.example:5433/state?sslmode=require"
    assert redact_dsn(url) == "postgresql://keeper@db.example:5433/state"
    with pytest.raises(StoreError) as refused:
        open_store("postgresql://keeper:s3cret@127.0.0.1:1/state")
    assert "s3cret" not in str(refused.value)


def test_without_a_database_url_the_state_is_sqlite(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with closing(open_store(tmp_path / "k.sqlite")) as store:
        assert not isinstance(store, PgStore)
        assert store.schema_version() == SCHEMA_VERSION


def test_the_server_fixture_runs_as_the_postgres_user_when_root(pg_server: PgServer) -> None:  # noqa: F811
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    assert str(pg_server.data) == row[0]


def test_shard_leases_spread_over_the_live_replicas_and_move_when_one_stops(store: PgStore) -> None:
    """Four shard leases, two replicas renewing in turn (the database's clock judges expiry): the first
    takes all four, hands two over once the second is up, and gets them back once the second stops
    renewing; rows of replicas long gone are forgotten."""
    from keeper.fleet import ShardShare
    from keeper.lease import LeaseKeeper

    def replica(name: str) -> tuple[LeaseKeeper, list[LeaseKeeper]]:
        presence = LeaseKeeper(store, f"replica:{name}", name, ttl=1.0, renew=0.0)
        shards = [LeaseKeeper(store, f"shard:{i}", name, ttl=1.0, renew=0.0) for i in range(4)]
        ShardShare(store, presence, shards)
        return presence, shards

    def renew(*replicas: tuple[LeaseKeeper, list[LeaseKeeper]]) -> None:
        for presence, shards in replicas:
            presence.renew_once()
            for lease in shards:
                lease.renew_once()

    def held(shards: list[LeaseKeeper]) -> list[int]:
        return [i for i, lease in enumerate(shards) if lease.active]

    a, b = replica("a"), replica("b")
    renew(a)
    assert held(a[1]) == [0, 1, 2, 3]  # alone: every shard
    for _ in range(4):
        renew(b, a)
    assert held(a[1]) == [0, 1] and held(b[1]) == [2, 3]  # noqa: PT018  (a share each)
    assert store.live_replicas() == 2
    time.sleep(1.2)  # b stops renewing: its presence and its shards lapse together
    for _ in range(3):
        renew(a)
    assert held(a[1]) == [0, 1, 2, 3]
    assert store.live_replicas() == 1
    assert store.live_replicas(forget_after=0.0) == 1  # b's presence row is gone, a's is live
    assert [x.name for x in store.leases() if x.name.startswith("replica:")] == ["replica:a"]
