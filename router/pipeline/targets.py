"""Where a delivery may connect: the SSRF guard on the network, and the router's own address.

The rules are `router.core.targets`'. They are applied twice: when a URL is registered
(`url_refusal`), on the addresses its host resolves to then, and when a delivery connects
(`GuardedResolver`, and `literal_host_refusal` for hosts that are addresses), so a name
re-pointed at an internal address after registration (DNS rebinding) is still refused.
Independently of `ROUTER_ALLOW_PRIVATE_TARGETS`, a URL may not point at the router itself
(`OwnAddress`): one event posted back to its own ingest would come back as another, without end.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from router.core.targets import (
    IPAddress,
    address_refusal,
    host_address,
    public_url_refusal,
    unmapped,
    url_shape_refusal,
)


def _is_local(ip: IPAddress) -> bool:
    """True if `ip` is an address of this machine (binding to it succeeds only then)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


# A lookup the system resolver never answers must not hold an API request (or a test) for
# ever; a name that cannot be resolved in time is treated as one that does not resolve.
RESOLVE_TIMEOUT = 5.0  # seconds


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to now; empty if it does not resolve (in time)."""
    lookup = asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.wait_for(lookup, RESOLVE_TIMEOUT)
    except (OSError, UnicodeError, TimeoutError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True)
class OwnAddress:
    """Where this router can be reached, so that subscriber URLs cannot point back at it.

    `host`/`port` are where it listens (`ROUTER_HOST`/`ROUTER_PORT`; a wildcard host means
    every address of this machine); `public_urls` are the base URLs it is reachable under
    from elsewhere (`ROUTER_PUBLIC_URLS`), compared by origin.
    """

    host: str
    port: int
    public_urls: tuple[str, ...] = ()

    def public_origin_of(self, url: URL) -> str | None:
        """The public URL whose origin (scheme, host, port) `url` has, or None."""
        for public in self.public_urls:
            base = URL(public)
            if (base.scheme, base.raw_host, base.port) == (url.scheme, url.raw_host, url.port):
                return public
        return None

    async def listens_on(self, addresses: Iterable[IPAddress]) -> IPAddress | None:
        """The first of `addresses` on which a connection reaches the router's listener."""
        candidates = [unmapped(ip) for ip in addresses]
        listen = host_address(self.host)
        if self.host in ("", "*") or (listen is not None and listen.is_unspecified):
            return next(
                (ip for ip in candidates if ip.is_unspecified or ip.is_loopback or _is_local(ip)),
                None,
            )
        own = {listen} if listen is not None else set(await _resolve(self.host, self.port))
        own = {unmapped(ip) for ip in own}
        # Connecting to 0.0.0.0 or :: reaches this machine, whichever address it listens on.
        return next((ip for ip in candidates if ip.is_unspecified or ip in own), None)


async def url_refusal(url: str, allow_private: bool, own: OwnAddress | None = None) -> str | None:
    """Why `url` may not be a subscriber URL, or None.

    Checks its spelling (`url_shape_refusal`); then that it does not point at the router
    itself (`own`: its listen address, or an origin of its public URLs), whatever
    `allow_private` says; then (unless `allow_private`) that none of the addresses its host
    resolves to is internal, and that the host is a name other than `localhost`
    (`public_url_refusal`). A name that does not resolve now is allowed: delivery re-checks
    at connect time.
    """
    if reason := url_shape_refusal(url):
        return reason
    target = URL(url)
    host, port = target.raw_host or "", target.port or 0
    if own is not None and (public := own.public_origin_of(target)):
        return f"points at this router itself (its public URL {public})"
    literal = host_address(host)
    checks_self = own is not None and port == own.port
    if literal is not None:
        addresses = [literal]
    elif checks_self or not allow_private:
        addresses = await _resolve(host, port)
    else:
        addresses = []
    if checks_self and own is not None and (hit := await own.listens_on(addresses)):
        return f"points at this router itself (it listens on port {port} of {hit})"
    if allow_private:
        return None
    for address in addresses:
        if reason := address_refusal(str(address)):
            return reason if literal is not None else f"host {host} resolves to {reason}"
    return public_url_refusal(url)


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
