"""The web UI's files at /ui/: served without a token, only the shipped names, each with the
headers that confine the page (no inline or third-party script, never framed, no sniffing)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from router.http.routes.ui import FILES


async def test_index_is_served_without_a_token_with_a_strict_policy(client: TestClient) -> None:
    resp = await client.get("/ui/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert 'label for="token">API token</label>' in await resp.text()
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in resp.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no other origin
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "Set-Cookie" not in resp.headers


async def test_every_shipped_file_is_served_with_its_type(client: TestClient) -> None:
    assert {"index.html", "app.js", "api.js", "dom.js", "chart.js", "style.css"} <= set(FILES)
    for name, (body, content_type) in FILES.items():
        resp = await client.get(f"/ui/{name}")
        assert resp.status == 200, name
        assert resp.content_type == content_type
        assert await resp.read() == body


async def test_ui_without_slash_redirects_to_the_index(client: TestClient) -> None:
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Location"] == "/ui/"


async def test_other_paths_are_404_with_the_error_envelope(client: TestClient) -> None:
    for path in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/%2e%2e/%2e%2e/pyproject.toml"):
        resp = await client.get(path)
        assert resp.status == 404, path
        body = await resp.json()
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_the_page_runs_no_inline_script_and_loads_nothing_from_elsewhere() -> None:
    index = FILES["index.html"][0].decode()
    assert "<script>" not in index and "onclick=" not in index and "style=" not in index
    for body, _ in FILES.values():
        text = body.decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
