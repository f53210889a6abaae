"""The event loop every benchmark process runs on: uvloop when installed, as the router's
CLI does, so the baselines and the router are measured on the same loop."""

from __future__ import annotations

import asyncio


def use_uvloop() -> str:
    """Install uvloop's policy if uvloop is importable; returns the loop's name."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
