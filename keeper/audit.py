"""The audit trail: one JSON line per decision, with everything it was made from.

Auditors run the keeper in dry-run and read this file; operators keep it for post-mortems. Integers
stay integers (exact 18-decimal amounts); bytes are 0x-hex. A keeper runs for months, so the file
rotates by size (`audit.jsonl` → `audit.jsonl.1` → ... → `audit.jsonl.N`, the oldest dropped): the
disk it takes is bounded by `max_bytes × (backups + 1)` plus one record.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

DEFAULT_MAX_BYTES = 100_000_000  # 100 MB a file
DEFAULT_BACKUPS = 5  # rotated files kept beside the current one


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


class AuditLog:
    def __init__(
        self,
        path: Path | str | None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
    ) -> None:
        self.path = Path(path) if path else None
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[str] | None = None
        self._size = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        self.records = 0
        self.rotations = 0

    def record(self, **fields: Any) -> None:
        self.records += 1
        if self._file is None:
            return
        entry = {"time": round(time.time(), 3), **fields}
        line = json.dumps(_jsonable(entry), sort_keys=False) + "\n"
        size = len(line.encode())
        if self._size and self._size + size > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        self._size += size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        assert self.path is not None
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self.path.stat().st_size

    def _rotate(self) -> None:
        """Shift `path.i` to `path.i+1` (the last one is overwritten), `path` to `path.1`; reopen."""
        assert self.path is not None
        assert self._file is not None
        self._file.close()
        if self.backups == 0:
            self.path.unlink()
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._open()
