"""The audit trail: one JSON line per decision, with everything it was made from.

Auditors run the keeper in dry-run and read this file; operators keep it for post-mortems. Integers
stay integers (exact 18-decimal amounts); bytes are 0x-hex.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


class AuditLog:
    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path else None
        self._file: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self.records = 0

    def record(self, **fields: Any) -> None:
        self.records += 1
        if self._file is None:
            return
        entry = {"time": round(time.time(), 3), **fields}
        self._file.write(json.dumps(_jsonable(entry), sort_keys=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
