"""Where alerts go: Slack, Discord and Telegram webhooks, or a generic JSON POST, chosen by the URL.

A webhook URL is a secret (its path or query holds the token): it is never logged, and an error names
the target only by its kind and host. Delivery runs in one background task reading a bounded queue,
so a tick never waits on a webhook: when the queue is full the alert is dropped and counted. Each
delivery is retried with exponential backoff (tenacity), a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from keeper.errors import SettingError

LEVELS = ("info", "warning", "critical")
ICONS = {"info": "ℹ️", "warning": "⚠️", "critical": "🚨", "resolved": "✅"}


@dataclass(frozen=True)
class Alert:
    """One message: a condition firing (or resolved), or an event (started, stopped, the summary)."""

    key: str  # the condition instance, e.g. "low-gas" or "rpc-down:https://host"
    level: str  # info, warning, critical
    text: str
    resolved: bool = False

    def line(self, keeper: str) -> str:
        icon = ICONS["resolved" if self.resolved else self.level]
        state = "resolved: " if self.resolved else ""
        return f"{icon} perp-keeper {keeper[:10]}: {state}{self.text}"


@dataclass(frozen=True)
class Target:
    """A webhook: its kind (slack, discord, telegram, generic), the URL (secret) and a safe name."""

    kind: str
    url: str

    @property
    def name(self) -> str:
        parts = urlsplit(self.url)
        return f"{self.kind} {parts.scheme}://{parts.hostname}"

    def request(self, alert: Alert, keeper: str) -> tuple[str, dict[str, Any]]:
        """(URL to POST to, JSON body) in the target's own format."""
        text = alert.line(keeper)
        if self.kind == "slack":
            return self.url, {"text": text}
        if self.kind == "discord":
            return self.url, {"content": text}
        if self.kind == "telegram":  # chat_id moves from the query into the body with the text
            parts = urlsplit(self.url)
            query = dict(parse_qsl(parts.query))
            chat = query.pop("chat_id", "")
            return urlunsplit(parts._replace(query=urlencode(query))), {"chat_id": chat, "text": text}
        body = {
            "keeper": keeper,
            "key": alert.key,
            "level": alert.level,
            "resolved": alert.resolved,
            "text": alert.text,
        }
        return self.url, body


def target(url: str) -> Target:
    parts = urlsplit(url)
    host, path = (parts.hostname or "").lower(), parts.path
    if host == "hooks.slack.com":
        return Target("slack", url)
    if host in ("discord.com", "discordapp.com") and path.startswith("/api/webhooks/"):
        return Target("discord", url)
    if host == "api.telegram.org" and path.startswith("/bot") and path.endswith("/sendMessage"):
        if "chat_id" not in dict(parse_qsl(parts.query)):
            raise SettingError(
                "KEEPER_ALERT_WEBHOOKS: a Telegram URL needs ?chat_id=… (the URL is not shown)"
            )
        return Target("telegram", url)
    return Target("generic", url)


def targets(text: str) -> list[Target]:
    """KEEPER_ALERT_WEBHOOKS: comma-separated http(s) URLs. Errors name the place, never the URL."""
    found = []
    for n, url in enumerate(filter(None, (u.strip() for u in text.split(","))), start=1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingError(f"KEEPER_ALERT_WEBHOOKS: URL #{n} is not an http(s) URL (it is not shown)")
        found.append(target(url))
    return found


class DeliveryError(Exception):
    """A webhook answered badly or could not be reached; the message never holds the URL."""


Counter = Callable[[str], None]  # (outcome: sent, failed, dropped)


class Notifier:
    """A bounded queue of alerts and the one task that delivers them to every target."""

    def __init__(
        self,
        targets: Sequence[Target],
        keeper: str,
        *,
        queue_size: int = 100,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 5.0,
        count: Counter | None = None,
    ) -> None:
        self.targets, self.keeper = list(targets), keeper
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self.count = count or (lambda _outcome: None)
        self.delivered: list[Alert] = []  # what reached every target (newest last; for tests and logs)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def send(self, alert: Alert) -> bool:
        """Queue an alert without waiting; False (and counted) when the queue is full."""
        if not self.targets:
            return False
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.count("dropped")
            logging.getLogger(__name__).warning("alert queue full: dropped %s", alert.key)
            return False
        return True

    def start(self) -> None:
        if self.targets and self._task is None:
            # httpx logs every request with its URL at INFO: a webhook's URL is its token
            httpx_log = logging.getLogger("httpx")
            httpx_log.setLevel(max(logging.WARNING, httpx_log.getEffectiveLevel()))
            self._client = httpx.AsyncClient(timeout=self.timeout)
            self._task = asyncio.create_task(self._deliver_forever())

    async def close(self, flush_within: float = 5.0) -> None:
        """Deliver what is queued (the "stopped" alert) for at most `flush_within` seconds, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), flush_within)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._client is not None:
            await self._client.aclose()
        self._task = self._client = None

    async def _deliver_forever(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await asyncio.gather(*(self._deliver(t, alert) for t in self.targets))
                self.delivered.append(alert)
            finally:
                self.queue.task_done()

    async def _deliver(self, t: Target, alert: Alert) -> None:
        url, body = t.request(alert, self.keeper)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=self.backoff, max=30),
                retry=retry_if_exception_type(DeliveryError),
                reraise=True,
            ):
                with attempt:
                    await self._post(t, url, body)
        except DeliveryError as exc:
            self.count("failed")
            logging.getLogger(__name__).warning("alert %s not delivered: %s", alert.key, exc)
            return
        self.count("sent")

    async def _post(self, t: Target, url: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        try:
            answer = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:  # its message may quote the URL: only the type is kept
            raise DeliveryError(f"{t.name}: {type(exc).__name__}") from None
        if answer.status_code >= 300:
            raise DeliveryError(f"{t.name}: HTTP {answer.status_code}")
