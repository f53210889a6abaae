"""The SSRF guard: subscriber URLs may not reach loopback, private, link-local, multicast,
unspecified or reserved addresses unless `ROUTER_ALLOW_PRIVATE_TARGETS` is set.

It is applied twice: when a URL is registered (`url_refusal`), and when a delivery connects
(`GuardedResolver`), on the addresses the name resolves to at that moment, so a name that
is re-pointed at an internal address after registration (DNS rebinding) is still refused.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_refusal(address: str) -> str | None:
    """Why a literal IP address is not a permitted target, or None if it is public."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
    checks = (
        ("loopback", ip.is_loopback),
        ("private", ip.is_private),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
        # Catches what the names above miss, e.g. 100.64.0.0/10 (carrier-grade NAT, where
        # some clouds put their metadata service).
        ("non-global", not ip.is_global),
    )
    for label, hit in checks:
        if hit:
            return f"{ip} is a {label} address"
    return None


async def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why `url` may not be a subscriber URL, or None.

    Checks it is an absolute http(s) URL with a host, then (unless `allow_private`) that none
    of the addresses its host resolves to is internal. A name that does not resolve now is
    allowed: delivery re-checks at connect time.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    if allow_private:
        return None
    host = parts.hostname
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return address_refusal(host)
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port or 443, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        return None
    for info in infos:
        reason = address_refusal(str(info[4][0]))
        if reason:
            return f"host {host} resolves to {reason}"
    return None


@lru_cache(maxsize=16_384)  # asked before every attempt, of a few URLs, and costs 4 µs
def literal_host_refusal(url: str) -> str | None:
    """Why a URL whose host is an IP literal may not be connected to (aiohttp does not ask the
    resolver for literals, so `GuardedResolver` alone would not see them)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return address_refusal(host)


class TargetRefused(OSError):
    """Every address of the target host is internal; the delivery attempt fails with this."""


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that drops internal addresses from every answer it gives."""

    def __init__(self, allow_private: bool = False) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        allowed = [r for r in results if address_refusal(r["host"]) is None]
        if not allowed:
            reason = address_refusal(results[0]["host"]) if results else "no address"
            raise TargetRefused(errno.EACCES, f"refused target {host}: {reason}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
