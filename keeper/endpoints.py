"""Several RPC endpoints: each one's health record, and the pure policy that picks where a read goes.

One provider is a single point of failure, and providers fail in ways a keeper must route around: they
rate-limit (429, often with `Retry-After`), answer 5xx or garbage, time out, or sit behind a load
balancer whose nodes lag. `keeper.rpc.Rpc` keeps one `Endpoint` record per URL and asks the functions
here, which do no I/O and read the clock only through their `now` argument, where each request goes:

* a read goes to the healthiest endpoint: answering the right chain, not in a back-off or
  `Retry-After` window, not lagging the best head by more than `max_lag` blocks, holding the block the
  read is pinned to, and then the fewest recent errors and the lowest latency (the endpoint in use is
  kept unless another is clearly better, so reads do not flap);
* a failed attempt puts its endpoint in a window (`Retry-After`, capped, or an exponential back-off)
  and the next attempt goes elsewhere, or waits for the earliest window to end;
* a head survey (every endpoint asked at once) sets each endpoint's lag behind the best head: an
  endpoint whose head stops advancing falls behind and is avoided until it catches up.
"""

from __future__ import annotations

import email.utils
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from keeper.errors import SettingError

MAX_LAG_BLOCKS = 3  # an endpoint further behind the best head is avoided
MAX_BACKOFF_SECONDS = 8.0
ERROR_PENALTY_SECONDS = 1.0  # one recent error weighs like one second of latency
ERROR_HALF_LIFE_SECONDS = 30.0
LATENCY_WEIGHT = 0.3  # of the newest sample in the moving average
STICKY_FACTOR, STICKY_SECONDS = 1.25, 0.005  # switch only to one better than current / 1.25 - 5 ms

# = keeper.tx.MAYBE_SENT (checked by a test): a send refused with these may have got through elsewhere
ALREADY_SENT = ("already known", "nonce too low", "known transaction", "already imported")
INTERNAL_ERROR = -32603
# JSON-RPC errors worth another endpoint or another try: what providers answer when the node behind
# their load balancer is behind, restarting or overloaded. None contains "range", "limit", "timeout",
# "too many" or "more than": the indexer reads those in an eth_getLogs error as "ask for fewer blocks".
TRANSIENT_MESSAGES = (
    "internal error",
    "header not found",
    "unknown block",
    "block not found",
    "blockoutofrangeerror",
    "upstream",
    "temporarily unavailable",
    "try again",
    "overloaded",
    "busy",
)
PINNED_LAST = frozenset({"eth_call", "eth_getBalance", "eth_getCode", "eth_getTransactionCount"})


@dataclass
class Endpoint:
    """One RPC URL and what has been seen of it. `name` is redacted: it is what logs and metrics show."""

    url: str
    name: str
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by kind, answers that were errors included
    latency: float | None = None  # moving average of answered requests, seconds
    failures: int = 0  # transient failures in a row
    error_score: float = 0.0  # recent transient failures, decaying (see `recent_errors`)
    scored_at: float = 0.0
    avoid_until: float = 0.0  # back-off or Retry-After window (monotonic seconds)
    rate_limited_until: float = 0.0  # the Retry-After part of it
    head: int | None = None  # the newest block number it reported
    lag: int = 0  # blocks behind the best head at the last survey
    chain_id: int | None = None  # verified to be the expected chain
    wrong_chain: int | None = None  # answered this other chain id: never used
    last_error: str = ""


@dataclass(frozen=True)
class Sighting:
    """One endpoint's answer to a survey: its chain id and head, or what went wrong."""

    name: str
    chain_id: int | None = None
    head: int | None = None
    latency: float | None = None
    error: str = ""


# --- URLs -----------------------------------------------------------------------------------------
def redact(url: str) -> str:
    """scheme://host[:port] only (each, for a comma-separated list): hosted RPC URLs carry API keys in
    the path or query."""
    if "," in url:
        return ",".join(redact(part.strip()) for part in url.split(","))
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def split_urls(text: str) -> list[str]:
    """A comma-separated list of URLs, blanks around the commas ignored (empty items kept, as "")."""
    return [part.strip() for part in text.split(",")] if text.strip() else []


def parse_urls(text: str | None, setting: str, schemes: tuple[str, str] = ("http", "https")) -> list[str]:
    """A setting holding one URL or a comma-separated list: each with one of `schemes` and a host, none
    empty, none twice. Messages name the setting and the URL's place, never the URL (keys live in it)."""
    urls = split_urls(text or "")
    if not urls:
        raise SettingError(f"{setting} is required")
    for n, url in enumerate(urls, start=1):
        where = f" (URL {n} of {len(urls)})" if len(urls) > 1 else ""
        if not url:
            raise SettingError(f"{setting}: an empty URL in the list{where}")
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            article = "an" if schemes[0] == "http" else "a"
            raise SettingError(
                f"{setting}: expected {article} {schemes[0]}(s):// URL, "
                f"got {parts.scheme or 'no'} scheme{where}"
            )
    if len(set(urls)) < len(urls):
        raise SettingError(f"{setting}: a URL is listed twice")
    return urls


def endpoint_names(urls: Sequence[str]) -> list[str]:
    """Redacted names, made unique with `#n` (two keys at one provider share scheme and host)."""
    names = [redact(url) for url in urls]
    counts = Counter(names)
    return [f"{name}#{i + 1}" if counts[name] > 1 else name for i, name in enumerate(names)]


# --- recording what happened ------------------------------------------------------------------------
def recent_errors(ep: Endpoint, now: float) -> float:
    decay: float = 0.5 ** (max(0.0, now - ep.scored_at) / ERROR_HALF_LIFE_SECONDS)
    return ep.error_score * decay


def answered(ep: Endpoint, latency: float) -> None:
    """A real answer (a result, or a genuine JSON-RPC error): the endpoint works."""
    ep.latency = latency if ep.latency is None else ep.latency + LATENCY_WEIGHT * (latency - ep.latency)
    ep.failures = 0
    ep.avoid_until = ep.rate_limited_until = 0.0


def failed(
    ep: Endpoint,
    kind: str,
    now: float,
    backoff: float,
    retry_after: float | None = None,
    max_wait: float = 30.0,
) -> None:
    """A transient failure: avoid the endpoint for `Retry-After` (capped) or an exponential back-off."""
    ep.failures += 1
    ep.error_score = recent_errors(ep, now) + 1.0
    ep.scored_at = now
    if retry_after is not None:
        ep.avoid_until = ep.rate_limited_until = now + min(max(retry_after, 0.0), max_wait)
    else:
        ep.avoid_until = now + min(backoff * 2 ** (ep.failures - 1), MAX_BACKOFF_SECONDS, max_wait)
    ep.last_error = kind


def surveyed(endpoints: Sequence[Endpoint], heads: Sequence[int | None]) -> None:
    """Heads asked of every endpoint at once: each answering endpoint's lag behind the best of them.
    One that did not answer keeps its lag (its failure already put it in a back-off window)."""
    known = [h for h in heads if h is not None]
    if not known:
        return
    best = max(known)
    for ep, head in zip(endpoints, heads, strict=True):
        if head is not None:
            ep.head, ep.lag = head, best - head


def saw_head(ep: Endpoint, number: int) -> None:
    """A head this endpoint reported in a read. It may go back (a reset, or another node behind the
    provider's load balancer): reads pinned to newer blocks then go elsewhere. Only a survey, which
    asks every endpoint at once, judges lag."""
    ep.head = number


def verify_chain(
    endpoints: Sequence[Endpoint], sightings: Sequence[Sighting], expected: int
) -> list[Endpoint]:
    """Mark each endpoint that answered a chain id as verified, or as serving another chain; the
    endpoints newly found on another chain."""
    newly_wrong = []
    for ep, seen in zip(endpoints, sightings, strict=True):
        if seen.chain_id is None:
            continue
        if seen.chain_id == expected:
            ep.chain_id, ep.wrong_chain = expected, None
        else:
            if ep.wrong_chain is None:
                newly_wrong.append(ep)
            ep.wrong_chain = seen.chain_id
    return newly_wrong


# --- choosing -----------------------------------------------------------------------------------------
def usable(ep: Endpoint, expected: int | None) -> bool:
    """May serve reads at all: not another chain, and verified once a chain is expected."""
    return ep.wrong_chain is None and (expected is None or ep.chain_id == expected)


def healthy(ep: Endpoint, now: float, expected: int | None, max_lag: int = MAX_LAG_BLOCKS) -> bool:
    """Reads may go to it: the right chain, its last request answered, not lagging."""
    return usable(ep, expected) and ep.failures == 0 and ep.avoid_until <= now and ep.lag <= max_lag


def score(ep: Endpoint, now: float) -> float:
    """Lower is better: latency plus a penalty per recent error (an untried endpoint scores 0)."""
    return (ep.latency or 0.0) + ERROR_PENALTY_SECONDS * recent_errors(ep, now)


def rank(
    endpoints: Sequence[Endpoint],
    now: float,
    *,
    needed: int | None = None,
    expected: int | None = None,
    current: int | None = None,
    max_lag: int = MAX_LAG_BLOCKS,
) -> list[int]:
    """Indices in the order to try them: healthy endpoints holding block `needed` first, then healthy
    ones that may not hold it, then those in a window (soonest out first). Never empty."""
    pool = [i for i, ep in enumerate(endpoints) if usable(ep, expected)]
    pool = (
        pool or [i for i, ep in enumerate(endpoints) if ep.wrong_chain is None] or list(range(len(endpoints)))
    )

    def tier(i: int) -> int:
        ep = endpoints[i]
        if ep.avoid_until > now:
            return 2
        holds = needed is None or (ep.head is not None and ep.head >= needed)
        return 0 if holds and ep.lag <= max_lag else 1

    def key(i: int) -> tuple[int, float, int]:
        t = tier(i)
        return (t, endpoints[i].avoid_until if t == 2 else score(endpoints[i], now), i)

    order = sorted(pool, key=key)
    if current in order and current != order[0] and tier(current) == tier(order[0]) == 0:
        best = score(endpoints[order[0]], now)
        if score(endpoints[current], now) <= best * STICKY_FACTOR + STICKY_SECONDS:
            order.remove(current)
            order.insert(0, current)
    return order


def wait_seconds(endpoints: Sequence[Endpoint], now: float, expected: int | None = None) -> float:
    """How long until some usable endpoint is out of its window (0: one is available now)."""
    pool = [ep for ep in endpoints if usable(ep, expected)] or list(endpoints)
    return max(0.0, min(ep.avoid_until for ep in pool) - now)


def rate_limit_wait(endpoints: Sequence[Endpoint], now: float, expected: int | None = None) -> float:
    """When every usable endpoint asked us to wait (`Retry-After`), how long until the first may be
    asked again: a new request honours it too, not only a retry."""
    pool = [ep for ep in endpoints if usable(ep, expected)] or list(endpoints)
    return max(0.0, min(ep.rate_limited_until for ep in pool) - now)


# --- reading requests and answers ------------------------------------------------------------------------
def retry_after_seconds(value: str | None, now_epoch: float) -> float | None:
    """A `Retry-After` header: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_epoch)


def transient_answer(code: int, message: str) -> bool:
    """A JSON-RPC error that another try (or another endpoint) may not repeat. A revert never is."""
    text = message.lower()
    if code == 3 or "revert" in text:
        return False
    return code == INTERNAL_ERROR or any(marker in text for marker in TRANSIENT_MESSAGES)


def already_sent(message: str) -> bool:
    text = message.lower()
    return any(marker in text for marker in ALREADY_SENT)


def _block_number(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def pinned_block(method: str, params: Sequence[Any]) -> int | None:
    """The block number a read is pinned to (an endpoint must hold it), None for "latest" and such."""
    if method in PINNED_LAST and params:
        return _block_number(params[-1])
    if method == "eth_getBlockByNumber" and params:
        return _block_number(params[0])
    if method == "eth_getLogs" and params and isinstance(params[0], dict):
        return _block_number(params[0].get("toBlock"))
    return None


def head_of(method: str, params: Sequence[Any], result: Any) -> int | None:
    """The head an answer reports: `eth_blockNumber`, or the block of `eth_getBlockByNumber("latest")`."""
    if method == "eth_blockNumber":
        return _block_number(result)
    if method == "eth_getBlockByNumber" and params and params[0] == "latest" and isinstance(result, dict):
        return _block_number(result.get("number"))
    return None
