"""`/ui/`: the web console, static files shipped inside the package (`router/http/ui/`).

The files need no token (they hold no data): the page asks for an API token and calls the
same `/v1` API as the CLI with it, so every action is authorised there. They are declared
like any route, undocumented, since they are no API. Every file is read once, when this
module is imported; only those names are served, so no request can reach another path.

The headers confine the page: scripts and styles only from this origin, no inline script,
requests only to this origin, never framed (clickjacking), no MIME sniffing, no referrer.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from router.http.errors import not_found
from router.http.operations import Resource

resource = Resource("ui")

UI_ROOT = "/ui/"
INDEX = "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Small files, revalidated on each load, so an upgraded router never serves a stale UI.
    "Cache-Control": "no-cache",
}
# The types of the files shipped; stated, not guessed, since module scripts are refused
# without a JavaScript type and the host's MIME table may not know `.js`.
CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}


def _load() -> dict[str, tuple[bytes, str]]:
    """Every file of the UI directory with its content type. Raises KeyError for a file of a
    type not in CONTENT_TYPES (a packaging mistake, found at start-up)."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in files("router.http").joinpath("ui").iterdir():
        if entry.is_file():
            kind = CONTENT_TYPES[entry.name.rsplit(".", 1)[-1]]
            found[entry.name] = (entry.read_bytes(), kind)
    return found


FILES = _load()


def _file(name: str) -> web.Response:
    if name not in FILES:
        raise not_found(f"UI file {name!r}")
    body, content_type = FILES[name]
    headers = {**SECURITY_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    return web.Response(body=body, headers=headers)


@resource.get("/ui", summary="The web console (redirects to /ui/)", scope=None, documented=False)
async def ui_redirect(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={**SECURITY_HEADERS, "Location": UI_ROOT})


@resource.get(UI_ROOT, summary="The web console", scope=None, documented=False)
async def ui_index(request: web.Request) -> web.Response:
    return _file(INDEX)


@resource.get(UI_ROOT + "{name}", summary="A file of the web console", scope=None, documented=False)
async def ui_file(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])
