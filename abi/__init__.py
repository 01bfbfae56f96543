"""Minimal JSON ABIs: only the functions and events the keeper uses.

Generated from the real artifacts by `python -m devnet.abi_gen`; tests/test_abi.py proves each entry
is identical to the artifact's.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


@cache
def load(name: str) -> list[dict[str, Any]]:
    path = _HERE / f"{name}.json"
    if not path.exists():
        raise KeyError(f"no ABI named {name!r} in {_HERE}")
    abi: list[dict[str, Any]] = json.loads(path.read_text())
    return abi


def names() -> list[str]:
    return sorted(p.stem for p in _HERE.glob("*.json"))
