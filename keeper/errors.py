"""The keeper's own exceptions, under one root.

`ConfigurationError`s are operator mistakes found at start-up (a bad flag, metadata, state database):
the CLI prints them as one line and exits 2. Everything else under `KeeperError` is something the
running keeper survives: the engine records it against the opportunity or tick it happened in and
goes on (see `keeper/engine.py` and `keeper/loop.py`).
"""

from __future__ import annotations

from typing import Any

from keeper.codec import decode_revert


class KeeperError(Exception):
    """The root of every error the keeper raises on purpose."""


class ConfigurationError(KeeperError):
    """Bad operator input: the message names the setting or file and the problem, never a secret."""


class SettingError(ConfigurationError, ValueError):
    """A flag, environment variable or key is missing or malformed."""


class MetadataError(ConfigurationError, ValueError):
    """The metadata file is missing or malformed; the message names the file and field."""


class StoreError(ConfigurationError, RuntimeError):
    """The state database belongs to another chain or deployment, or cannot be opened."""


class RpcError(KeeperError, RuntimeError):
    """The node answered with a JSON-RPC error (a real answer, not a transport failure)."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method, self.code, self.message, self.data = method, code, message, data


class RpcUnavailableError(KeeperError, RuntimeError):
    """The node could not be reached (after retries). The message never shows the URL's secrets."""


class RpcMalformedError(RpcError):
    """The node's answer was not valid JSON-RPC (not JSON, cut short, not an object, a batch answer
    missing an element or with an unknown id). Flaky providers and load balancers produce these, so
    they are retried like HTTP 5xx; it stays an `RpcError` so that callers catching those still do.
    """

    def __init__(self, method: str, description: str) -> None:
        super().__init__(method, -32700, description)


class CallFailedError(KeeperError, RuntimeError):
    """A view read through Multicall3 reverted (or answered nothing decodable)."""

    def __init__(self, revert_data: bytes) -> None:
        super().__init__(f"call reverted: {decode_revert(revert_data)}")
        self.revert_data = revert_data


class QuoteError(KeeperError, RuntimeError):
    """A source could not quote: unreachable, rate-limited past its retries, or a malformed answer."""


class ReorgDuringSyncError(KeeperError, RuntimeError):
    """Logs came from a block that is no longer the head's ancestor; the next sync heals it."""


def error_kind(exc: BaseException) -> str:
    """A short label for metrics and audit records: what kind of failure this was."""
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (RpcUnavailableError, "rpc-unavailable"),
        (RpcError, "rpc-error"),
        (CallFailedError, "view-reverted"),
        (QuoteError, "quote"),
        (ReorgDuringSyncError, "reorg"),
        (ConfigurationError, "configuration"),
    )
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind
    return "internal"
