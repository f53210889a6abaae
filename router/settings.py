"""Every setting of the service, read from the environment (README.md, "Settings").

`load_settings()` is the one entry point: it turns a bad value into a `SettingsError` whose
message is one line naming the variable, so the CLI can stop with that line and no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

DEFAULT_RETRY_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 10800.0, 21600.0)
# Partitions spread the router's keys over hash tags; on a 3-master cluster 16 land 5/5/6.
CLUSTER_PARTITIONS = 16
MAX_PARTITIONS = 1024
# A bootstrap token holds every scope: one short enough to guess is no protection.
MIN_ADMIN_TOKEN = 16
# An `Authorization` header must fit aiohttp's 8190-byte header line.
MAX_ADMIN_TOKEN = 4096


class SettingsError(Exception):
    """A setting has a value the service cannot run with; the message is one line."""


class Settings(BaseSettings):
    """The service's configuration. Field `x` is read from `ROUTER_X` unless aliased."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="Redis to use; unset runs on an embedded in-memory store.",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port `serve` listens on.")
    admin_token: SecretStr | None = Field(
        default=None,
        description=f"Bootstrap operator token with every scope ({MIN_ADMIN_TOKEN} to "
        f"{MAX_ADMIN_TOKEN} visible ASCII characters); unset: one is generated and printed at "
        "start.",
    )
    catalog_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ROUTER_CATALOG", "catalog_path"),
        description="Scope catalog data file (JSON, or a table in the seed's markdown format).",
    )
    catalog_overlay: Path | None = Field(
        default=None, description="Extra event -> scope mappings and aliases."
    )
    verify: Literal["off", "highlevel", "standard"] = Field(
        default="off", description="Incoming verification: off, highlevel or standard."
    )
    highlevel_ed25519_key: str | None = Field(
        default=None,
        description="Ed25519 public keys for x-ghl-signature: PEM blocks or file paths, "
        "comma-separated (several overlap a rotation); unset: the platform's published key; "
        "`none`: refuse that header.",
    )
    highlevel_rsa_key: str | None = Field(
        default=None,
        description="RSA public keys for the legacy x-wh-signature, as for the Ed25519 keys; "
        "unset: the platform's published key; `none`: refuse that header.",
    )
    ingest_secret: SecretStr | None = Field(
        default=None, description="whsec_ secret for ROUTER_VERIFY=standard."
    )
    max_body_bytes: int = Field(default=1_048_576, gt=0, description="Largest accepted body.")
    dedupe_window: int = Field(
        default=86_400, gt=0, description="Seconds a webhookId is remembered."
    )
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_RETRY_SCHEDULE,
        description="Seconds between attempts, comma-separated; its length + 1 attempts.",
    )
    delivery_timeout: float = Field(
        default=10.0, gt=0, description="Seconds one delivery attempt may take."
    )
    subscriber_concurrency: int = Field(
        default=32, gt=0, description="Attempts in flight to one subscriber, per worker."
    )
    breaker_threshold: int = Field(
        default=20, gt=0, description="Consecutive failures that open a subscriber's breaker."
    )
    allow_private_targets: bool = Field(
        default=False, description="Allow subscriber URLs on loopback/private addresses."
    )
    retention: int = Field(
        default=604_800, gt=0, description="Seconds events and delivery records are kept."
    )
    log_format: Literal["json", "text"] | None = Field(
        default=None, description="json or text; unset: text on a terminal, else json."
    )

    # Tuning knobs with safe defaults.
    key_prefix: str = Field(
        default="wr",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix (and cluster hash tag) of every Redis key.",
    )
    partitions: Annotated[int, Field(ge=1, le=MAX_PARTITIONS)] | Literal["auto"] = Field(
        default="auto",
        description="Hash tags the router's work is split over, so a Redis Cluster spreads it "
        f"(1..{MAX_PARTITIONS}; 1 keeps every key in one slot); auto: "
        f"{CLUSTER_PARTITIONS} on a Redis Cluster, else 1.",
    )
    min_replicas: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto",
        description="Replicas that must hold a write before it is acknowledged (WAIT); "
        "auto: 1 when the Redis has replicas at start-up, else 0.",
    )
    replica_timeout: float = Field(
        default=0.5,
        gt=0,
        description="Seconds to wait for replicas to confirm a write before answering 429.",
    )
    timestamp_tolerance: int = Field(
        default=300, gt=0, description="Replay window (s) for a payload timestamp when verifying."
    )
    max_backlog: int = Field(
        default=1_000_000, gt=0, description="Undispatched events over which ingest answers 429."
    )
    secret_grace: int = Field(
        default=86_400, ge=0, description="Seconds a rotated-out secret still signs."
    )
    worker_concurrency: int = Field(
        default=256, gt=0, description="Attempts in flight per worker process."
    )
    breaker_probe_interval: float = Field(
        default=30.0, gt=0, description="Seconds between probes of an open breaker."
    )
    reclaim_after: float = Field(
        default=60.0,
        gt=0,
        description="Seconds before a dead process's unfinished work is taken over.",
    )
    client_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds a client may take to send a body, or idle between requests.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error."
    )
    public_urls: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        default=None,
        description="Base URLs this router is reachable under (comma-separated, e.g. behind "
        "a load balancer); subscriber URLs with their origin are refused.",
    )

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                delays = tuple(float(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError("must be comma-separated seconds, e.g. 5,30,120") from None
            if not delays or any(d < 0 for d in delays):
                raise ValueError("must be one or more non-negative numbers of seconds")
            return delays
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if not token.strip():
            # Set but empty is a mistake (an unfilled template), not a request for no admin.
            raise ValueError("must not be empty; unset it to have a token generated")
        if token != token.strip() or any(not c.isprintable() for c in token):
            raise ValueError("must not contain spaces at either end or control characters")
        if not all("!" <= c <= "~" for c in token):
            # HTTP clients disagree on how to send anything else in a header (UTF-8,
            # Latin-1, or not at all), so such a token works from some clients only.
            raise ValueError("must be visible ASCII characters only (no spaces, no accents)")
        if len(token) < MIN_ADMIN_TOKEN:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN} characters long")
        if len(token) > MAX_ADMIN_TOKEN:
            raise ValueError(f"must be at most {MAX_ADMIN_TOKEN} characters long")
        return value

    @field_validator("public_urls", mode="before")
    @classmethod
    def _parse_public_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if value is None or not value:
            return None
        for url in value:
            try:
                parsed = URL(str(url))
            except ValueError:
                parsed = URL()
            if parsed.scheme not in ("http", "https") or not parsed.raw_host:
                raise ValueError(f"{url!r} is not an absolute http(s) URL")
        return tuple(value)

    @field_validator("catalog_path", "catalog_overlay")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                with value.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        return value

    @property
    def embedded(self) -> bool:
        """True when running on the in-memory store, which keeps nothing across a restart."""
        return not self.redis_url

    @property
    def effective_log_format(self) -> Literal["json", "text"]:
        if self.log_format:
            return self.log_format
        return "text" if sys.stderr.isatty() else "json"


_ALIASED = {"redis_url": "REDIS_URL", "catalog_path": "ROUTER_CATALOG"}


def _env_name(field: str) -> str:
    if field.isupper():  # pydantic reports an aliased field under the alias it was read from
        return field
    return _ALIASED.get(field, f"ROUTER_{field.upper()}")


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (overrides win).

    Raises `SettingsError` with one line such as `ROUTER_PORT: Input should be a valid
    integer` for the first bad value.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        message = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"{_env_name(field)}: {message}") from None


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for `--help` and the README."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.default
        if name == "retry_schedule":
            shown = ",".join(f"{d:g}" for d in DEFAULT_RETRY_SCHEDULE)
        else:
            shown = "unset" if default is None else str(default)
        rows.append((_env_name(name), shown, info.description or ""))
    return rows
