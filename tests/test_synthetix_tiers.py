"""Which Synthetix pairs are read at a head (pure): open, dirty, new, and a rotating sweep."""

from __future__ import annotations

from strategies.synthetix_perps_v2.tiers import Tiers, pair_of

M = "0xmarket"


def pairs(*accounts: str) -> list[tuple[str, str]]:
    return [(M, a) for a in accounts]


def test_new_pairs_are_read_then_only_open_dirty_and_the_sweep() -> None:
    tiers = Tiers(sweep_blocks=3)
    known = pairs("a", "b", "c", "d", "e", "f", "g")
    assert tiers.to_read(known, []) == sorted(known)  # all new
    tiers.update(known, pairs("a", "b"))  # only a and b hold a position
    read = tiers.to_read(known, pairs("f"))
    assert set(pairs("a", "b", "f")) <= set(read)  # open and dirty
    swept = set(read) - set(pairs("a", "b", "f"))
    assert len(swept) <= 2  # ceil(5 closed / 3 blocks)
    assert len(read) < len(known)


def test_every_closed_pair_is_swept_within_sweep_blocks() -> None:
    tiers = Tiers(sweep_blocks=4)
    known = pairs(*"abcdefgh")
    tiers.update(known, [])  # all closed
    seen: set[tuple[str, str]] = set()
    for _ in range(4):
        seen |= set(tiers.to_read(known, []))
    assert seen == set(known)


def test_a_pair_that_closes_or_reopens_moves_between_the_tiers() -> None:
    tiers = Tiers()
    tiers.update(pairs("a"), pairs("a"))
    assert tiers.open == set(pairs("a"))
    tiers.update(pairs("a"), [])  # liquidated
    assert tiers.closed == set(pairs("a"))
    tiers.update(pairs("a"), pairs("a"))  # a trade reopened it (its log made it dirty)
    assert tiers.open == set(pairs("a"))
    assert not tiers.closed
    assert pair_of("0xm:0xacc") == ("0xm", "0xacc")
