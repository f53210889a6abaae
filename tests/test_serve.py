"""`serve` without ROUTER_ADMIN_TOKEN generates one, and that token works."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from router.commands.serve import with_admin_token
from router.http.app import create_app
from tests.conftest import make_settings


async def test_generated_admin_token_opens_the_operator_api(
    aiohttp_client, redis: Redis, key_prefix: str
) -> None:
    settings, token = with_admin_token(make_settings(key_prefix, admin_token=None))
    assert token is not None and token.startswith("wra_")
    client: TestClient = await aiohttp_client(create_app(settings, redis=redis))

    answer = await client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"})

    assert answer.status == 200


def test_a_configured_admin_token_is_kept(key_prefix: str) -> None:
    settings, token = with_admin_token(
        make_settings(key_prefix, admin_token="mine-0123456789abcdef")
    )
    assert token is None
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "mine-0123456789abcdef"
