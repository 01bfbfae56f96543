"""Every entry of abi/ is identical to the real artifact's entry (name, inputs, outputs, mutability)."""

from typing import Any

import pytest

import abi
from devnet import artifacts
from devnet.abi_gen import SELECTION


def _key(entry: dict[str, Any]) -> tuple[str, str, str]:
    inputs = ",".join(i["type"] for i in entry.get("inputs", []))
    return entry["type"], entry.get("name", ""), inputs


def test_every_abi_file_is_generated_from_a_known_artifact() -> None:
    assert abi.names() == sorted(SELECTION)


@pytest.mark.parametrize("name", sorted(SELECTION))
def test_entries_match_the_real_artifact(name: str) -> None:
    artifact_name, functions, events = SELECTION[name]
    real = {_key(e): e for e in artifacts.load(artifact_name).abi if e.get("type") in ("function", "event")}
    ours = abi.load(name)
    assert {e["name"] for e in ours} == set(functions) | set(events)
    for entry in ours:
        assert entry == real[_key(entry)], f"{name}.{entry['name']} differs from {artifact_name}"


def test_selectors_match_the_verified_table() -> None:
    from eth_utils.abi import abi_to_signature, function_signature_to_4byte_selector

    def selectors(name: str) -> set[str]:
        return {
            "0x" + function_signature_to_4byte_selector(abi_to_signature(e)).hex()  # type: ignore[arg-type]
            for e in abi.load(name)
            if e["type"] == "function"
        }

    assert {"0x65d461bd", "0x86b9d81f", "0xcc3606dc", "0x80a98332", "0x5ae80951"} <= selectors(
        "ClearingHouse"
    )
    assert {"0x08511abb", "0x042e02cf", "0xa9b786b2", "0x5ae80951"} <= selectors("Vault")
    assert {"0xf75c266d", "0x10485bec", "0xcb3c7b8e", "0x5d6f9c14"} <= selectors("AccountBalance")
    assert "0x82ad56cb" in selectors("Multicall3")
