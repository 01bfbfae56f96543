"""Settings from flags and `KEEPER_*` environment variables (a flag wins), validated into one object.

Every problem is a `SettingError` whose message names the setting and what is wrong with it, and never
contains a secret (keys, passwords, the path or query of an RPC URL).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address

from keeper.audit import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES
from keeper.errors import SettingError

X18 = 10**18


@dataclass(frozen=True)
class RunSettings:
    min_profit: int  # X18 USD
    max_keeper_fee: int | None  # X18 USD
    max_fee_gwei: int | None
    inherited: str
    slippage_bps: int
    dry_run: bool
    metrics_port: int = 9464
    block_interval: float = 2.0
    stale_head_seconds: int = 120
    log_format: str = "auto"
    log_level: str = "INFO"
    susd_usd: int | None = None  # X18: sUSD's USD price when no quote can be had (Synthetix)
    gas_budget: int | None = None  # gas units sent per block; None: half the block's gas limit
    shutdown_grace: float = 20.0  # seconds SIGTERM keeps following what is in flight
    max_in_flight: int | None = None  # plans in flight at once; None: as many as the gas budget allows
    audit_max_bytes: int = DEFAULT_MAX_BYTES  # the audit log rotates past this size
    audit_backups: int = DEFAULT_BACKUPS  # rotated audit files kept (audit.jsonl.1 ... .N)


def load_dotenv(path: Path = Path(".env"), env: dict[str, str] | None = None) -> int:
    """KEY=VALUE lines of `path` into the environment, never over a variable already set (the
    environment wins over .env, flags win over both). Returns how many were taken."""
    target = os.environ if env is None else env
    if not path.is_file():
        return 0
    taken = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise SettingError(f"{path}: line {number} is not NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if name not in target:
            target[name] = value
            taken += 1
    return taken


def usd(env: Mapping[str, str], name: str, default: str | None) -> int | None:
    text = env.get(name, default)
    if text is None or text == "":
        return None
    return usd_amount(text, name)


def usd_amount(text: str, setting: str) -> int:
    """A non-negative decimal USD amount ("250000", "1234.56") as an X18 integer, exactly."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise SettingError(f"{setting}: not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise SettingError(f"{setting}: must be a non-negative number of USD, got {text!r}")
    return int(value * X18)


def integer(
    env: Mapping[str, str], name: str, default: int | None, low: int = 0, high: int = 10**9
) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"{name}: not a whole number: {text!r}") from None
    if not low <= value <= high:
        raise SettingError(f"{name}: must be between {low} and {high}, got {value}")
    return value


def choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    text = env.get(name, default).strip()
    match = next((a for a in allowed if a.lower() == text.lower()), None)
    if match is None:
        raise SettingError(f"{name}: expected one of {', '.join(allowed)}, got {text!r}")
    return match


def flag(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise SettingError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {text!r}")


def run_settings(env: Mapping[str, str] | None = None, dry_run_flag: bool = False) -> RunSettings:
    env = os.environ if env is None else env
    inherited = env.get("KEEPER_INHERITED_POSITIONS", "close").strip().lower()
    if inherited not in ("close", "hold"):
        raise SettingError(f"KEEPER_INHERITED_POSITIONS: expected close or hold, got {inherited!r}")
    min_profit = usd(env, "KEEPER_MIN_PROFIT_USD", "1")
    assert min_profit is not None
    return RunSettings(
        min_profit=min_profit,
        max_keeper_fee=usd(env, "KEEPER_MAX_KEEPER_FEE", None),
        max_fee_gwei=integer(env, "KEEPER_MAX_FEE_GWEI", None, low=1),
        inherited=inherited,
        slippage_bps=integer(env, "KEEPER_SLIPPAGE_BPS", 100, low=1, high=5_000) or 100,
        dry_run=dry_run_flag or flag(env, "KEEPER_DRY_RUN"),
        metrics_port=integer(env, "KEEPER_METRICS_PORT", 9464, low=0, high=65535) or 0,
        block_interval=(integer(env, "KEEPER_BLOCK_INTERVAL_MS", 2000, low=100, high=600_000) or 2000) / 1000,
        stale_head_seconds=integer(env, "KEEPER_STALE_HEAD_SECONDS", 120, low=0, high=86_400) or 0,
        log_format=choice(env, "KEEPER_LOG_FORMAT", "auto", ("auto", "json", "text")),
        log_level=choice(env, "KEEPER_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        susd_usd=usd(env, "KEEPER_SUSD_USD", None),
        gas_budget=integer(env, "KEEPER_GAS_BUDGET", None, low=21_000, high=10**10),
        shutdown_grace=float(integer(env, "KEEPER_SHUTDOWN_GRACE_SECONDS", 20, low=0, high=3_600) or 0),
        max_in_flight=integer(env, "KEEPER_MAX_IN_FLIGHT", None, low=1, high=10_000),
        audit_max_bytes=integer(env, "KEEPER_AUDIT_MAX_BYTES", DEFAULT_MAX_BYTES, low=10_000, high=10**13)
        or DEFAULT_MAX_BYTES,
        audit_backups=integer(env, "KEEPER_AUDIT_BACKUPS", DEFAULT_BACKUPS, low=0, high=1_000) or 0,
    )


@dataclass(frozen=True)
class ReplicaSettings:
    """Replicas sharing one PostgreSQL database (docs/replicas.md)."""

    ttl: float  # seconds a lease lasts without renewal: the longest a dead holder delays the others
    renew: float  # seconds between renewals
    replica_id: str | None  # the holder name in the lease rows; None: host:pid:random


def replica_settings(env: Mapping[str, str] | None = None) -> ReplicaSettings:
    env = os.environ if env is None else env
    ttl = integer(env, "KEEPER_LEASE_TTL_SECONDS", 5, low=1, high=300) or 5
    renew_ms = integer(env, "KEEPER_LEASE_RENEW_MS", 1000, low=50, high=60_000) or 1000
    if renew_ms * 2 > ttl * 1000:
        raise SettingError(
            f"KEEPER_LEASE_RENEW_MS: {renew_ms} ms must be at most half of KEEPER_LEASE_TTL_SECONDS ({ttl} s)"
        )
    return ReplicaSettings(float(ttl), renew_ms / 1000, env.get("KEEPER_REPLICA_ID") or None)


def database_url(flag_value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """--database-url, else KEEPER_DATABASE_URL: a postgresql:// URL, or None for SQLite."""
    env = os.environ if env is None else env
    url = (flag_value or env.get("KEEPER_DATABASE_URL") or "").strip()
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        scheme = url.split("://", 1)[0] if "://" in url else "no scheme"
        raise SettingError(
            f"--database-url / KEEPER_DATABASE_URL: expected postgresql://..., got {scheme} "
            "(the value is not shown)"
        )
    return url


AGGREGATORS = ("0x", "1inch")


def aggregator_contracts(env: Mapping[str, str] | None = None) -> dict[str, frozenset[str]]:
    """KEEPER_AGGREGATOR_CONTRACTS="0x:0xADDR,1inch:0xADDR": contracts the operator adds to an
    aggregator's published ones on this chain (keeper/routers.py), as its router, allowance target and
    (0x) Settler."""
    env = os.environ if env is None else env
    name = "KEEPER_AGGREGATOR_CONTRACTS"
    listed: dict[str, set[str]] = {}
    for entry in filter(None, (e.strip() for e in env.get(name, "").split(","))):
        aggregator, sep, text = entry.partition(":")
        if not sep or aggregator.strip() not in AGGREGATORS:
            raise SettingError(f"{name}: expected AGGREGATOR:ADDRESS, AGGREGATOR 0x or 1inch; got {entry!r}")
        listed.setdefault(aggregator.strip(), set()).add(address(text.strip(), name))
    return {aggregator: frozenset(addresses) for aggregator, addresses in listed.items()}


def address(text: str, setting: str) -> str:
    if not is_address(text):
        raise SettingError(f"{setting}: not an address: {text!r}")
    return str(to_checksum_address(text))


def signer(env: Mapping[str, str] | None = None) -> LocalAccount | None:
    """The keeper's key from KEEPER_PRIVATE_KEY, KEEPER_PRIVATE_KEY_FILE or an encrypted keystore."""
    env = os.environ if env is None else env
    if key := env.get("KEEPER_PRIVATE_KEY"):
        return _from_key(key.strip(), "KEEPER_PRIVATE_KEY")
    if path := env.get("KEEPER_PRIVATE_KEY_FILE"):
        return _from_key(_read(path, "KEEPER_PRIVATE_KEY_FILE").strip(), "KEEPER_PRIVATE_KEY_FILE")
    if keystore := env.get("KEEPER_KEYSTORE"):
        password_file = env.get("KEEPER_KEYSTORE_PASSWORD_FILE")
        if not password_file:
            raise SettingError("KEEPER_KEYSTORE_PASSWORD_FILE is required with KEEPER_KEYSTORE")
        password = _read(password_file, "KEEPER_KEYSTORE_PASSWORD_FILE").rstrip("\r\n")
        try:
            key_bytes = Account.decrypt(_read(keystore, "KEEPER_KEYSTORE"), password)
        except ValueError:
            raise SettingError("KEEPER_KEYSTORE: wrong password or not a keystore file") from None
        account: LocalAccount = Account.from_key(key_bytes)
        return account
    return None


def _from_key(text: str, setting: str) -> LocalAccount:
    body = text.removeprefix("0x")
    if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise SettingError(f"{setting}: not a 32-byte hex private key (the value is not shown)")
    try:
        account: LocalAccount = Account.from_key("0x" + body)
    except (ValueError, TypeError):
        raise SettingError(f"{setting}: not a valid secp256k1 private key (the value is not shown)") from None
    return account


def _read(path: str, setting: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SettingError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def shard_count(env: Mapping[str, str] | None = None) -> int:
    """KEEPER_SHARDS: how many signers split the accounts (1: one signer, the usual keys)."""
    return integer(os.environ if env is None else env, "KEEPER_SHARDS", 1, low=1, high=64) or 1


def shard_signers(env: Mapping[str, str] | None = None) -> list[LocalAccount]:
    """One key per shard, in the usual key settings suffixed with the shard: KEEPER_PRIVATE_KEY_<i>,
    KEEPER_PRIVATE_KEY_FILE_<i>, or KEEPER_KEYSTORE_<i> + KEEPER_KEYSTORE_PASSWORD_FILE_<i>. Two shards
    on one key would contend for its nonces: refused."""
    env = os.environ if env is None else env
    names = (
        "KEEPER_PRIVATE_KEY",
        "KEEPER_PRIVATE_KEY_FILE",
        "KEEPER_KEYSTORE",
        "KEEPER_KEYSTORE_PASSWORD_FILE",
    )
    signers: list[LocalAccount] = []
    for i in range(shard_count(env)):
        try:
            account = signer({name: env[f"{name}_{i}"] for name in names if f"{name}_{i}" in env})
        except SettingError as exc:
            raise SettingError(f"KEEPER_SHARDS: shard {i}: {exc}") from None
        if account is None:
            raise SettingError(
                f"KEEPER_SHARDS: no key for shard {i}: set KEEPER_PRIVATE_KEY_{i} (or _FILE_{i})"
            )
        if any(s.address == account.address for s in signers):
            raise SettingError(f"KEEPER_SHARDS: shard {i} has the key of another shard: one key per shard")
        signers.append(account)
    return signers
