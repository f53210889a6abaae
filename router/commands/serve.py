"""`webhook-router serve` and `webhook-router worker`: the two ways to run the router."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import sys
from typing import Any

from pydantic import SecretStr

from router.commands.processes import add_processes_option, supervise
from router.core import tracing
from router.http.app import create_app
from router.http.server import serve_until_stopped
from router.http.verification import build_verifier
from router.logs import configure_logging
from router.pipeline.workers import run_until_signalled
from router.services import connect_services
from router.settings import Settings, load_settings
from router.storage.client import connect
from subscriptions.catalog import load_catalog

log = logging.getLogger("router")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run ingest, the operator API, dispatch and delivery in one process",
        description="Serve POST /webhooks, the operator API under /v1, /healthz, /readyz, "
        "/metrics and /openapi.json, and run the dispatcher and delivery workers. With no "
        "REDIS_URL it runs on an embedded in-memory store that keeps nothing across restarts. "
        "Configuration comes from the environment (see the README's settings table).",
    )
    serve.add_argument("--host", help="address to listen on (default: ROUTER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: ROUTER_PORT, 8080)")
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="serve HTTP only; run `webhook-router worker` processes to deliver",
    )
    add_processes_option(serve, "serving")
    # Set by `--processes` for its children: they share the port.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=serve_command)

    worker = subparsers.add_parser(
        "worker",
        help="run the dispatcher and delivery workers alone (no HTTP)",
        description="Fan out accepted events and deliver them, sharing the work with every "
        "other serve/worker process on the same Redis. Needs REDIS_URL. SIGTERM drains: no new "
        "work is taken and attempts in flight finish (or are handed back) before exit.",
    )
    add_processes_option(worker, "worker")
    worker.set_defaults(func=worker_command)


def _prepare(overrides: dict[str, Any]) -> Settings:
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings)
    load_catalog(settings.catalog_path, settings.catalog_overlay)  # fail before listening
    build_verifier(settings)
    tracing.wanted(os.environ)  # an OTEL_* value the router cannot honour stops it here
    return settings


def with_admin_token(settings: Settings) -> tuple[Settings, str | None]:
    """`settings` with an admin token: its own, or a new random one (returned, to be shown)."""
    if settings.admin_token is not None:
        return settings, None
    token = "wra_" + secrets.token_urlsafe(32)
    # model_copy does not validate: the value must already be the field's type.
    return settings.model_copy(update={"admin_token": SecretStr(token)}), token


def _use_uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _start_tracing() -> None:
    """Traces on in the process that does the work (not in a `--processes` supervisor)."""
    if tracing.configure():
        names = tracing.ENDPOINT_VARIABLES
        endpoint = next(os.environ[v] for v in names if os.environ.get(v, "").strip())
        log.info("exporting traces over OTLP/HTTP to %s", endpoint)


# Collections of the youngest generation every this many net container allocations (CPython's
# default is 700). Every event and delivery allocates hundreds of short-lived containers (tasks,
# futures, header dicts); at the default the collector ran about 150 times a second under load.
GC_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Run the cycle collector less often, and never again over what start-up loaded.

    Under delivery load the collector took about 15% of the process's CPU, most of it in full
    collections re-scanning the ~75,000 module, class and schema objects loaded at start-up,
    which live as long as the process. Frozen, they are skipped; cycles made later are still
    collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)


def _refuse_processes(settings: Settings, count: int) -> str | None:
    """Why `count` serving processes cannot run with these settings, or None."""
    if count > 1 and settings.embedded:
        return (
            "--processes: the embedded store lives inside one process, so only 1 can run "
            "without REDIS_URL"
        )
    if count > 1 and settings.port == 0:
        return "--processes: the processes share one port, so ROUTER_PORT cannot be 0"
    return None


def serve_command(args: argparse.Namespace) -> int:
    prepared = _prepare({"host": args.host, "port": args.port})
    if problem := _refuse_processes(prepared, args.processes):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    settings, generated = with_admin_token(prepared)
    if generated is not None:
        # Printed, never logged: this is the only time anyone can see it.
        print(f"ROUTER_ADMIN_TOKEN was not set; generated admin token: {generated}", flush=True)
    if args.processes > 1:
        command = ["serve", "--reuse-port", "--host", settings.host, "--port", str(settings.port)]
        if args.no_workers:
            command.append("--no-workers")
        assert settings.admin_token is not None  # with_admin_token set one
        # The children share the parent's admin token, generated or not.
        env = {**os.environ, "ROUTER_ADMIN_TOKEN": settings.admin_token.get_secret_value()}
        grace = settings.delivery_timeout + 10
        return supervise(command, args.processes, env, grace=grace)
    if settings.embedded:
        log.warning(
            "REDIS_URL is not set: running on the embedded in-memory store; "
            "nothing will survive a restart"
        )
    if settings.verify == "off":
        log.warning("ROUTER_VERIFY=off: ingest is unauthenticated; anyone can post events")
    _use_uvloop()
    _start_tracing()

    async def main() -> None:
        store = await connect(settings)
        app = create_app(settings, redis=store, owns_redis=True, run_workers=not args.no_workers)
        _tune_gc()
        log.info("listening on http://%s:%d", settings.host, settings.port)
        await serve_until_stopped(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.delivery_timeout + 5,
            keepalive_timeout=settings.client_timeout,
            reuse_port=args.reuse_port,
        )

    asyncio.run(main())
    return 0


def worker_command(args: argparse.Namespace) -> int:
    settings = _prepare({})
    if settings.embedded:
        print(
            "error: REDIS_URL: required by `worker` (the embedded store is per process)",
            file=sys.stderr,
        )
        return 2
    if args.processes > 1:
        grace = settings.delivery_timeout + 10
        return supervise(["worker"], args.processes, dict(os.environ), grace=grace)
    _use_uvloop()
    _start_tracing()

    async def main() -> None:
        services = await connect_services(settings)
        group = services.worker_group()
        _tune_gc()
        try:
            await run_until_signalled(group)
        finally:
            await services.close()

    log.info("worker started")
    asyncio.run(main())
    return 0
