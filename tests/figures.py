"""Figures a test measured, printed at the end of the run (`pytest_terminal_summary` in conftest.py):
CI's output shows them without `-s`."""

from __future__ import annotations

from typing import Any

MEASURED: list[tuple[str, dict[str, Any]]] = []


def record(name: str, figures: dict[str, Any]) -> None:
    MEASURED.append((name, figures))
