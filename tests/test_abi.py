"""abi/ holds exactly the functions and events the keeper uses, each identical to the artifact's entry."""

import pytest
from eth_utils.abi import function_signature_to_4byte_selector

import abi
from devnet import artifacts, signatures
from devnet.abi_gen import SELECTION
from devnet.published import PUBLISHED


def test_every_abi_file_is_generated_from_a_known_artifact() -> None:
    assert abi.names() == sorted(SELECTION)


@pytest.mark.parametrize("name", sorted(SELECTION))
def test_entries_match_the_real_artifact(name: str) -> None:
    artifact_name, chosen = SELECTION[name]
    real = {
        signatures.canonical(e): e
        for e in artifacts.load(artifact_name).abi
        if e.get("type") in ("function", "event")
    }
    ours = abi.load(name)
    assert [signatures.canonical(e) for e in ours] == list(chosen)
    for entry in ours:
        assert entry == real[signatures.canonical(entry)], (
            f"{name}.{entry['name']} differs from {artifact_name}"
        )


def test_abi_documents_exactly_what_the_keeper_uses() -> None:
    found, _ = signatures.keeper()
    resolved, _ = signatures.resolve(found)  # hard-coded selectors named by their signature
    used: dict[str, list[str]] = {}
    for f in resolved:
        # the aggregators' routers have no artifact here: their selectors are checked against the
        # published ones instead (devnet/published.py, tests/test_signatures.py)
        if f.signature not in signatures.BUILTIN and f.signature not in PUBLISHED:
            used.setdefault(f.signature, []).append(f.where)
    documented = {signatures.canonical(e) for name in abi.names() for e in abi.load(name)}
    known = signatures.defined()
    missing = [
        f"  {s}  (defined by {', '.join(known.get(s, ('?',)))}; used at {', '.join(used[s])})"
        for s in sorted(set(used) - documented)
    ]
    assert not missing, (
        "used by the keeper but missing from abi/: add each to SELECTION in devnet/abi_gen.py, under the "
        "contract the keeper calls, and run `python -m devnet.abi_gen`:\n" + "\n".join(missing)
    )
    unused = sorted(documented - set(used))
    assert not unused, (
        "in abi/ but no longer used by the keeper: drop from SELECTION in devnet/abi_gen.py:\n"
        + ("\n".join(f"  {s}" for s in unused))
    )


def _selectors(name: str) -> set[str]:
    return {
        "0x" + function_signature_to_4byte_selector(signatures.canonical(e)).hex()
        for e in abi.load(name)
        if e["type"] == "function"
    }


def test_selectors_match_the_verified_table() -> None:
    assert {"0x65d461bd", "0xcc3606dc", "0x5ae80951"} <= _selectors("ClearingHouse")
    assert {"0x08511abb", "0x042e02cf", "0xa9b786b2"} <= _selectors("Vault")
    assert {"0xf75c266d", "0xcb3c7b8e", "0x5d6f9c14"} <= _selectors("AccountBalance")
    assert "0x82ad56cb" in _selectors("Multicall3")
