"""The HTTP client deliveries are made with: one pooled session per worker, guarded against
internal targets, and a POST that turns whatever the receiver or the network does into an
`AttemptResult` (it never raises for them)."""

from __future__ import annotations

import time

import aiohttp

from router.core import tracing
from router.core.outcome import AttemptResult
from router.core.retry import parse_retry_after
from router.core.targets import literal_host_refusal
from router.pipeline.targets import GuardedResolver, TargetRefused
from router.settings import Settings

RESPONSE_BODY_LIMIT = 4096


def open_session(settings: Settings, capacity: int) -> aiohttp.ClientSession:
    """One client session per worker: pooled connections, the SSRF guard on every resolve,
    no cookies kept between subscribers, redirects never followed (set per request).

    Answers are asked for uncompressed and never decompressed: the attempt log keeps the
    first 4 KiB of a receiver's answer as text, and decompressing would let a small answer
    expand without bound in memory.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(settings.allow_private_targets),
        limit=capacity,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.delivery_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept-Encoding": "identity"},  # not aiohttp's default "gzip, deflate"
        auto_decompress=False,
    )


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if resp.content.at_eof():  # the usual short answer: no second read to find the end
            break
    return b"".join(chunks)


async def post_event(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float,
) -> AttemptResult:
    """POST once; never raises for anything the receiver or the network does.

    Reads at most 4 KiB of the response, so a receiver answering with a huge body costs
    nothing more (the connection is dropped instead of drained).
    """
    if not allow_private and (reason := literal_host_refusal(url)):
        return AttemptResult(None, f"refused target: {reason}", 0.0, "", None)
    tracing.inject(headers)  # the attempt's span, so the receiver's spans join the trace
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    text = ""
    retry_after = None
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            text = (await _read_prefix(resp, RESPONSE_BODY_LIMIT)).decode("utf-8", "replace")
            if status in (429, 503):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if 300 <= status < 400:
                error = "redirects are not followed"
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except aiohttp.ClientConnectorError as exc:
        # aiohttp wraps the SSRF guard's refusal; say what was refused, not "cannot connect".
        refused = exc.os_error if isinstance(exc.os_error, TargetRefused) else None
        error = refused.strerror if refused else f"{type(exc).__name__}: {exc}"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration = (time.perf_counter() - started) * 1000
    return AttemptResult(status, error, round(duration, 2), text, retry_after)
