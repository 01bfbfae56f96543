"""Deployment metadata: the generic reading and validation every protocol's loader is built on.

Each protocol (a package under `strategies/`) parses its own format with `Parser`, so every missing or
malformed entry is a `MetadataError` naming the file and the field. A file says which protocol it
describes with a top-level `"protocol"`; a file without one is claimed by the protocol that recognises
its shape (Perp's own published files have none).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import is_hex_address, to_checksum_address

from keeper.errors import MetadataError

# Multicall3 lives at this address on Optimism and most chains; the devnet installs it there too.
DEFAULT_MULTICALL3 = to_checksum_address("0xcA11bde05977b3631167028862bE2a173976CA11")


@dataclass(frozen=True)
class ContractRef:
    address: ChecksumAddress
    created_block: int


def read_json(source: Path) -> Any:
    try:
        text = source.read_text()
    except FileNotFoundError:
        raise MetadataError(f"metadata file {source} does not exist") from None
    except OSError as exc:
        raise MetadataError(f"metadata file {source} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"metadata file {source} is not JSON: {exc.msg} at line {exc.lineno}") from None
    return data


class Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> MetadataError:
        return MetadataError(f"{self.source}: {message}")

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(f"{where} must be an object, got {kind_of(value)}")
        return value

    def sequence(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{where} must be a list, got {kind_of(value)}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where} must be a non-empty string, got {kind_of(value)}")
        return value

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{where} must be a non-negative integer, got {kind_of(value)}")
        return value

    def address(self, value: Any, where: str) -> ChecksumAddress:
        if value is None:
            raise self.fail(f"{where} is missing")
        if not isinstance(value, str) or not is_hex_address(value):
            raise self.fail(f"{where} is not an address: {value!r}")
        return to_checksum_address(value)

    def optional_address(self, section: Mapping[str, Any], name: str, where: str) -> ChecksumAddress | None:
        value = section.get(name)
        return None if value is None else self.address(value, f"{where}.{name}")

    def contract(self, section: Mapping[str, Any], name: str) -> ContractRef:
        if name not in section:
            raise self.fail(f"contracts.{name} is missing")
        entry = self.mapping(section[name], f"contracts.{name}")
        return ContractRef(
            address=self.address(entry.get("address"), f"contracts.{name}.address"),
            created_block=self.integer(
                entry.get("createdBlockNumber", 0), f"contracts.{name}.createdBlockNumber"
            ),
        )


def kind_of(value: Any) -> str:
    """How a wrong value is named in an error: its repr for scalars, else its type."""
    if value is None:
        return "nothing"
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return repr(value)
    return type(value).__name__
