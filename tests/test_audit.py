"""The audit log rotates by size: the disk it takes is bounded, no record is split or lost in between."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keeper import config
from keeper.audit import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, AuditLog
from keeper.errors import SettingError


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_log_rotates_past_its_size_and_keeps_only_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=2_000, backups=2)
    for n in range(200):
        log.record(event="decision", n=n, reason="x" * 50)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2_000
    newest = [r["n"] for r in _lines(path)]
    older = [r["n"] for r in _lines(tmp_path / "audit.jsonl.1")]
    oldest = [r["n"] for r in _lines(tmp_path / "audit.jsonl.2")]
    kept = oldest + older + newest
    assert kept == list(range(kept[0], 200))  # in order, contiguous, ending with the last record
    assert log.rotations > 2
    assert log.records == 200


def test_a_reopened_log_counts_what_is_already_there(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, max_bytes=1_000, backups=1)
    first.record(event="a", pad="y" * 600)
    first.close()
    second = AuditLog(path, max_bytes=1_000, backups=1)
    second.record(event="b", pad="y" * 600)  # would pass 1,000 bytes: rotates first
    second.close()
    assert [r["event"] for r in _lines(tmp_path / "audit.jsonl.1")] == ["a"]
    assert [r["event"] for r in _lines(path)] == ["b"]


def test_no_backups_means_the_log_starts_anew(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=500, backups=0)
    for n in range(20):
        log.record(event="decision", n=n, pad="z" * 100)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["audit.jsonl"]
    assert _lines(path)[-1]["n"] == 19
    assert path.stat().st_size <= 500


def test_a_record_larger_than_the_limit_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=100, backups=1)
    log.record(event="big", pad="w" * 500)
    log.record(event="next")
    log.close()
    assert [r["event"] for r in _lines(tmp_path / "audit.jsonl.1")] == ["big"]
    assert [r["event"] for r in _lines(path)] == ["next"]


def test_the_settings_and_their_defaults() -> None:
    defaults = config.run_settings({})
    assert (defaults.audit_max_bytes, defaults.audit_backups) == (DEFAULT_MAX_BYTES, DEFAULT_BACKUPS)
    assert (DEFAULT_MAX_BYTES, DEFAULT_BACKUPS) == (100_000_000, 5)
    set_ = config.run_settings({"KEEPER_AUDIT_MAX_BYTES": "50000", "KEEPER_AUDIT_BACKUPS": "0"})
    assert (set_.audit_max_bytes, set_.audit_backups) == (50_000, 0)
    with pytest.raises(SettingError, match="KEEPER_AUDIT_MAX_BYTES"):
        config.run_settings({"KEEPER_AUDIT_MAX_BYTES": "10"})
    with pytest.raises(SettingError, match="KEEPER_AUDIT_BACKUPS"):
        config.run_settings({"KEEPER_AUDIT_BACKUPS": "-1"})
