"""Keys and run settings: every mistake names the setting, and no secret is ever echoed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from eth_account import Account

from keeper import config
from keeper.config import X18
from keeper.errors import SettingError

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def test_key_from_env_file_and_keystore(tmp_path: Path) -> None:
    assert config.signer({"KEEPER_PRIVATE_KEY": KEY}).address == ADDRESS  # type: ignore[union-attr]
    key_file = tmp_path / "key"
    key_file.write_text(KEY.removeprefix("0x") + "\n")
    assert config.signer({"KEEPER_PRIVATE_KEY_FILE": str(key_file)}).address == ADDRESS  # type: ignore[union-attr]
    keystore = tmp_path / "keystore.json"
    keystore.write_text(json.dumps(Account.encrypt(bytes.fromhex(KEY[2:]), "correct horse", iterations=2)))
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    env = {"KEEPER_KEYSTORE": str(keystore), "KEEPER_KEYSTORE_PASSWORD_FILE": str(password)}
    assert config.signer(env).address == ADDRESS  # type: ignore[union-attr]
    assert config.signer({}) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KEEPER_PRIVATE_KEY": KEY[:-2]}, "KEEPER_PRIVATE_KEY: not a 32-byte hex private key"),
        ({"KEEPER_PRIVATE_KEY": "0x" + "0" * 64}, "KEEPER_PRIVATE_KEY: not a valid secp256k1 private key"),
        ({"KEEPER_PRIVATE_KEY_FILE": "/nonexistent/key"}, "KEEPER_PRIVATE_KEY_FILE: cannot read"),
        ({"KEEPER_KEYSTORE": "/nonexistent/ks"}, "KEEPER_KEYSTORE_PASSWORD_FILE is required"),
    ],
)
def test_bad_keys_name_the_setting_and_hide_the_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as caught:
        config.signer(env)
    assert message in str(caught.value)
    assert KEY[4:-4] not in str(caught.value)


def test_wrong_keystore_password(tmp_path: Path) -> None:
    keystore = tmp_path / "keystore.json"
    keystore.write_text(json.dumps(Account.encrypt(bytes.fromhex(KEY[2:]), "right", iterations=2)))
    password = tmp_path / "password"
    password.write_text("wrong")
    env = {"KEEPER_KEYSTORE": str(keystore), "KEEPER_KEYSTORE_PASSWORD_FILE": str(password)}
    with pytest.raises(SettingError, match="KEEPER_KEYSTORE: wrong password"):
        config.signer(env)


def test_run_settings_defaults_and_money_in_exact_units() -> None:
    settings = config.run_settings({})
    assert settings.min_profit == X18
    assert settings.max_keeper_fee is None
    assert settings.inherited == "close"
    assert not settings.dry_run
    capped = config.run_settings(
        {"KEEPER_MAX_KEEPER_FEE": "1000.5", "KEEPER_DRY_RUN": "1", "KEEPER_MAX_FEE_GWEI": "3"}
    )
    assert capped.max_keeper_fee == 1_000_500_000_000_000_000_000
    assert capped.dry_run
    assert capped.max_fee_gwei == 3


def test_every_setting_the_code_reads_is_in_the_example_env_and_documented() -> None:
    """.env.example says it lists every setting: a new one must land there and in README/docs too."""
    root = Path(__file__).resolve().parent.parent
    sources = [p for d in ("keeper", "strategies", "devnet") for p in (root / d).rglob("*.py")]
    read = {m for p in sources for m in re.findall(r"\"((?:PERP_)?KEEPER_[A-Z0-9_]+)\"", p.read_text())}
    assert {"KEEPER_RPC_URL", "KEEPER_SHARDS", "KEEPER_DATABASE_URL"} <= read  # the finder finds
    example = (root / ".env.example").read_text()
    docs = "\n".join(p.read_text() for p in [root / "README.md", *(root / "docs").glob("*.md")])
    assert sorted(v for v in read if v not in example) == []
    assert sorted(v for v in read if v not in docs) == []
