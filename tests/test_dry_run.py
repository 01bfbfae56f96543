"""A dry-run never touches a key: nothing is read, decrypted or required, whatever the environment holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from devnet import up
from devnet.chain import DevChain
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper import config
from keeper.run import DRY_RUN_LIQUIDATOR
from tests.helpers import run_once


def _forbidden(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("a dry-run touched the key")


def _hostile_key_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed key, a keystore with the wrong password and an unreadable key file, all at once:
    any of them would stop a live run with exit 2."""
    keystore = tmp_path / "ks.json"
    keystore.write_text(json.dumps(Account.encrypt(bytes.fromhex(KEEPER_KEY[2:]), "right", iterations=2)))
    (tmp_path / "pw").write_text("wrong")
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", "not-a-key")
    monkeypatch.setenv("KEEPER_PRIVATE_KEY_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("KEEPER_KEYSTORE", str(keystore))
    monkeypatch.setenv("KEEPER_KEYSTORE_PASSWORD_FILE", str(tmp_path / "pw"))


@pytest.mark.parametrize("from_address", [None, KEEPER_ADDRESS])
def test_dry_run_reads_no_key_whatever_the_environment_holds(
    devnet: up.Devnet,
    chain: DevChain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    from_address: str | None,
) -> None:
    _hostile_key_environment(tmp_path, monkeypatch)
    monkeypatch.setattr(config, "signer", _forbidden)
    monkeypatch.setattr(Account, "decrypt", _forbidden)
    monkeypatch.setattr(Account, "from_key", _forbidden)
    head = chain.w3.eth.block_number
    extra = ("--from", from_address) if from_address else ()
    code, out = run_once(devnet.url, devnet.metadata_path, tmp_path / "k.sqlite", "--dry-run", *extra)
    assert code == 0, out
    assert chain.w3.eth.block_number == head  # nothing sent
    err = capsys.readouterr().err
    assert f"liquidator {from_address or DRY_RUN_LIQUIDATOR}" in err
    assert "not-a-key" not in out + err


def test_a_live_run_with_the_same_environment_still_refuses(
    devnet: up.Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hostile_key_environment(tmp_path, monkeypatch)
    code, _ = run_once(devnet.url, devnet.metadata_path, tmp_path / "k.sqlite")
    assert code == 2
    assert "KEEPER_PRIVATE_KEY: not a 32-byte hex private key" in capsys.readouterr().err
