"""The SSRF rules: where a subscriber URL may point (pure; the network side is
`router.pipeline.targets`).

A subscriber URL has one spelling, decided at registration the way the HTTP client (aiohttp,
through yarl) will read it at delivery: ASCII only (an internationalised host is given as
punycode, `xn--…`), an http(s) scheme, no credentials, no fragment, a port from 1 to 65535,
and a host that is a DNS name of letter-digit-hyphen labels, a dotted-quad IPv4 address, or a
bracketed IPv6 address in its canonical form. Anything the client would rewrite into another
host is refused rather than normalised: `127.0.0.<U+1FBF1>` and fullwidth digits (yarl applies
NFKC and IDNA), `0x7f.1`, `0177.0.0.1`, `2130706433` and `127.1` (the C library reads them as
127.0.0.1), `[::ffff:7f00:1]` (the dotted quad is the one spelling of an IPv4 address), zone
ids, a trailing dot. `URL_PATTERN` is that rule as one regex, published in the OpenAPI document;
`url_shape_refusal` explains a refusal and ends by applying the same regex. The URL is stored in
the client's normal form (`canonical_url`), so what is delivered to is exactly what was checked.
Loopback, private, link-local and other non-global addresses are refused by `address_refusal`
unless `ROUTER_ALLOW_PRIVATE_TARGETS` is set.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------- the one spelling of a URL

_HEX = "[0-9a-fA-F]"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# The last label may not be a number (decimal, or 0x hex): the C library and browsers would
# read the whole name as an IPv4 address in one of its odd spellings.
_END_OF_HOST = "(?:[:/?]|$)"
MAX_HOST = 253
_DNS_NAME = (
    rf"(?=[^:/?]{{1,{MAX_HOST}}}{_END_OF_HOST})"  # no name resolves beyond DNS's 253
    rf"(?:{_LABEL}\.)*(?![0-9]+{_END_OF_HOST})(?!0[xX]{_HEX}*{_END_OF_HOST}){_LABEL}"
)
# RFC 6761: `localhost` and every name under it are loopback, whatever DNS says.
_LOCALHOST = "[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt]"
_NOT_LOCALHOST = rf"(?!(?:[^:/?]*\.)?{_LOCALHOST}{_END_OF_HOST})"
# An IPv6 address as Python's `ipaddress` (and so yarl) writes it: lower-case hex groups
# without leading zeros, and the longest run of two or more zero groups (the leftmost on a
# tie) written as "::". Exactly those spellings match, so none is rewritten by the client.
_NONZERO_GROUP = f"[1-9a-fA-F]{_HEX}{{0,3}}"
_GROUP = f"(?:0|{_NONZERO_GROUP})"
_GROUPS_FROM_START = f":*(?:{_HEX}+:+)"  # whole groups, each with the colons after it


def _at_least_groups(count: int) -> str:
    return f"(?={_GROUPS_FROM_START}{{{count - 1}}}{_HEX})"


def _zero_run_before_gap(length: int) -> str:
    return f"(?:{_HEX}+:)*" + ":".join(["0"] * length) + ":"


def _zero_run_after_gap(length: int) -> str:
    return rf"[^\]]*::(?:{_HEX}+:)*" + ":".join(["0"] * length) + r"(?::|\])"


_IPV6_FULL = rf"(?!(?:{_HEX}+:)*0:0(?::|\]))(?:{_GROUP}:){{7}}{_GROUP}"
_IPV6_COMPRESSED = (
    rf"(?!::[fF]{{4}}:{_HEX}{{1,4}}:{_HEX}{{1,4}}\])"  # IPv4-mapped: the dotted quad instead
    f"(?!{_GROUPS_FROM_START}{{6}}{_HEX})"  # at most six groups beside the "::"
    # With six groups "::" stands for two zeros: no written run may be as long before it, or
    # longer after it; with five, for three.
    f"(?!{_at_least_groups(6)}(?:{_zero_run_before_gap(2)}|{_zero_run_after_gap(3)}))"
    f"(?!{_at_least_groups(5)}(?:{_zero_run_before_gap(3)}|{_zero_run_after_gap(4)}))"
    f"(?:(?:{_GROUP}:){{0,5}}{_NONZERO_GROUP})?::(?:{_NONZERO_GROUP}(?::{_GROUP}){{0,5}})?"
)
_IPV6 = rf"\[(?:{_IPV6_FULL}|{_IPV6_COMPRESSED})\]"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# RFC 3986 path and query characters; anything else must be percent-encoded.
_URI_CHAR = "[A-Za-z0-9._~!$&'()*+,;=:@/-]"
_PERCENT_ESCAPE = f"%{_HEX}{{2}}"
_PATH = f"/(?:{_URI_CHAR}|{_PERCENT_ESCAPE})*"
_QUERY = rf"\?(?:{_URI_CHAR}|\?|{_PERCENT_ESCAPE})*"


def _url_with_host(host: str) -> str:
    return f"^[Hh][Tt][Tt][Pp][Ss]?://(?:{host})(?::{_PORT})?(?:{_PATH})?(?:{_QUERY})?$"


URL_PATTERN = _url_with_host(f"{_IPV4}|{_DNS_NAME}|{_IPV6}")
"""Every subscriber URL the router accepts with `ROUTER_ALLOW_PRIVATE_TARGETS` matches this
(ECMA-262 and Python alike), and every string that matches is accepted unless its host
resolves to the router itself (which no pattern can know)."""

PUBLIC_URL_PATTERN = _url_with_host(f"{_NOT_LOCALHOST}{_DNS_NAME}")
"""The same with private targets refused (the default): the host is a DNS name, not
`localhost` or a name under it. An address literal is refused then, public or not: which
addresses are internal cannot be told in a pattern a client can check, and a receiver has a
name. Every matching URL is accepted unless its host resolves to an internal address or to
the router itself."""

_URL = re.compile(URL_PATTERN)
_PUBLIC_URL = re.compile(PUBLIC_URL_PATTERN)


def url_pattern(allow_private: bool) -> str:
    """The subscriber URL rule for a router with `allow_private` targets, as a regex."""
    return URL_PATTERN if allow_private else PUBLIC_URL_PATTERN


_PORT_RE = re.compile(_PORT)
_LABEL_RE = re.compile(_LABEL)
_NUMERIC_LABEL = re.compile(f"[0-9]+|0[xX]{_HEX}*")
_URI_TEXT = re.compile(f"(?:{_URI_CHAR}|[?]|{_PERCENT_ESCAPE})*")


def url_shape_refusal(url: str) -> str | None:
    """Why `url` is not a subscriber URL in its one accepted spelling, or None.

    None exactly when `URL_PATTERN` matches and the client's normal form of the URL is stable
    and keeps the host as given (case aside); the reasons before that are explanations.
    """
    if not url.isascii():
        return (
            "must be ASCII: give an internationalised host name in punycode (xn--…) and "
            "percent-encode other characters"
        )
    if any(char <= " " or char == "\x7f" for char in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not url[len(parts.scheme) :].startswith(
        "://"
    ):
        return "must be an absolute http:// or https:// URL"
    if "#" in url:
        return "must not have a #fragment (a fragment is never sent)"
    if "@" in parts.netloc:
        return "must not carry credentials (user@ or user:password@)"
    host, port = _host_and_port(parts.netloc)
    if port is not None and not _PORT_RE.fullmatch(port):
        return "port must be a number from 1 to 65535, without leading zeros"
    if not host:
        return "must have a host"
    if reason := _host_refusal(host):
        return reason
    rest = url[len(parts.scheme) + 3 + len(parts.netloc) :]  # the path and query
    if not _URI_TEXT.fullmatch(rest):
        return "path and query may hold only RFC 3986 characters; percent-encode the others"
    try:
        normal = URL(url)
        canonical = str(normal)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    given = host[1:-1] if host.startswith("[") else host
    # Guaranteed by the checks above for today's yarl; kept so that a client that learns a
    # new rewrite cannot silently connect somewhere other than what was checked.
    if normal.raw_host != given.lower():
        return f"host {host} would be sent as {normal.raw_host}"
    if str(URL(canonical)) != canonical or not _URL.fullmatch(url):
        return "is not in a form the router can deliver to unchanged"
    return None


def _host_and_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = (netloc, "") if end < 0 else (netloc[: end + 1], netloc[end + 1 :])
    else:
        host, colon, port = netloc.partition(":")
        rest = colon + port
    if not rest:
        return host, None
    return host, rest[1:] if rest.startswith(":") else rest


def _host_refusal(host: str) -> str | None:
    if host.startswith("["):
        return _ipv6_refusal(host)
    if host.endswith("."):
        return f"host {host} must not end with a dot"
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return _ipv4_refusal(host)
    if len(host) > MAX_HOST:
        return f"host must be a DNS name of at most {MAX_HOST} characters"
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            return (
                f"host {host} must be a DNS name of letters, digits and hyphens "
                f"({label!r} is not such a label)"
            )
    return None


def _ipv4_refusal(host: str) -> str | None:
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    try:
        address = socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return f"host {host} is neither a DNS name nor a dotted-quad IPv4 address"
    return f"host {host} is an unusual spelling of {address}: write {address}"


def _ipv6_refusal(host: str) -> str | None:
    if not host.endswith("]"):
        return f"host {host} lacks its closing ]"
    literal = host[1:-1]
    if "%" in literal:
        return f"host {host} must not carry a zone id"
    try:
        ip = ipaddress.IPv6Address(literal)
    except ValueError:
        return f"host {host} is not an IPv6 address"
    if ip.ipv4_mapped is not None:
        return f"host {host} is the IPv4 address {ip.ipv4_mapped}: write {ip.ipv4_mapped}"
    if "." in literal or ip.compressed != literal.lower():
        return f"host {host} must be written in its canonical form [{ip.compressed}]"
    return None


def public_url_refusal(url: str) -> str | None:
    """Why `url` (one `url_shape_refusal` accepts) is not a target when private targets are
    refused, before asking DNS: its host is an internal address, any other address literal,
    or `localhost`. None exactly when `PUBLIC_URL_PATTERN` matches."""
    host = URL(url).raw_host or ""
    address = host_address(host)
    if address is not None:
        return address_refusal(str(address)) or (
            f"host {host} is an IP address: name the receiver by DNS (address literals are "
            "taken only with ROUTER_ALLOW_PRIVATE_TARGETS)"
        )
    if host == "localhost" or host.endswith(".localhost"):
        return f"host {host} is loopback (so is every name under localhost)"
    if not _PUBLIC_URL.fullmatch(url):
        return "is not in a form the router can deliver to unchanged"
    return None


def canonical_url(url: str) -> str:
    """The URL as the client will send it (yarl's normal form): what the router stores.

    For a URL `url_shape_refusal` accepts, this is stable and keeps the host unchanged.
    """
    return str(URL(url))


# ---------------------------------------------------------------- addresses


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


def host_address(host: str) -> IPAddress | None:
    """The address the C library connects to for `host` without asking DNS: an IP literal,
    or a numeric spelling `inet_aton` reads (`0x7f.1`, `2130706433`); None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=16_384)  # asked before every attempt, of a few URLs
def literal_host_refusal(url: str) -> str | None:
    """Why the client may not connect to a URL whose host is an address, or None.

    The host is read as aiohttp reads it (yarl's normal form, then the C library's numeric
    spellings), so a URL stored before its spelling was refused is still judged by the
    address the connection would go to. aiohttp does not ask the resolver for an address,
    so `GuardedResolver` alone would not see these.
    """
    try:
        host = URL(url).raw_host or ""
    except ValueError:
        return "not a valid URL"
    address = host_address(host)
    return None if address is None else address_refusal(str(address))
