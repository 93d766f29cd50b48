"""The service's settings: one class, read from ``LOSS_SERVICE_*`` environment variables.

Every field is set by the environment variable ``LOSS_SERVICE_<FIELD>`` (case-insensitive),
or by a keyword argument in tests. The list settings (``cors_origins``, ``api_keys``) take
either a comma-separated string (``LOSS_SERVICE_API_KEYS=key-one,key-two``) or a JSON
array; an empty string means none.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.storage.engine import parse_database_url

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["json", "console"]

#: What an API key may hold: the visible ASCII characters of a Bearer token (no spaces).
TOKEN = re.compile(r"[\x21-\x7e]+")
_ORIGIN = re.compile(r"https?://[^\s/]+")
#: The longest evaluation TTL: a thousand years (the sweep subtracts it from today's date).
_MAX_TTL = timedelta(days=365_000)
_SECONDS = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _split(value: Any) -> Any:
    """A comma-separated string (or a JSON array in a string) as a list of items."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSS_SERVICE_", extra="ignore")

    #: Address to bind (the Docker image binds 0.0.0.0).
    host: str = "127.0.0.1"
    #: TCP port to listen on.
    port: int = Field(default=8000, ge=0, le=65535)
    #: Worker processes; with more than one, metrics are aggregated across them.
    workers: int = Field(default=1, ge=1)
    #: Log level of the service's and the server's logs.
    log_level: LogLevel = "info"
    #: ``json``: one JSON object a line; ``console``: readable lines.
    log_format: LogFormat = "json"
    #: Largest request body accepted, in bytes; larger ones get a 413.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    #: Largest number of elements in one array of a request; more gets a 413.
    max_elements: int = Field(default=64 * 1024 * 1024, gt=0)
    #: Origins allowed to call the API from a browser (CORS); none by default.
    cors_origins: Annotated[list[str], NoDecode] = []
    #: Keys accepted as ``Authorization: Bearer <key>`` on ``/v1/*``; none: no auth.
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    #: Seconds given to in-flight requests to finish after SIGTERM.
    shutdown_timeout: int = Field(default=30, ge=0)

    # ---- Streaming evaluations ----
    #: Where evaluations are kept: ``postgresql://...`` for several processes or hosts;
    #: none: an SQLite file in ``data_dir``.
    database_url: SecretStr | None = None
    #: Seconds a request waits for the database before it is answered 503: another
    #: process's write lock on SQLite; on PostgreSQL, a connection (made, or of the pool)
    #: and the network (data not acknowledged, a peer gone silent).
    database_timeout: float = Field(default=15.0, gt=0, le=3600)
    #: The directory of the default SQLite database (created if missing).
    data_dir: Path = Path("data")
    #: Evaluations not updated for this long are deleted (seconds, or ISO 8601: ``P30D``).
    evaluation_ttl: timedelta = timedelta(days=30)
    #: Evaluations whose settings and fixed facts a worker keeps in memory, so that a batch
    #: is evaluated without a read of its own (a few KiB each; 0: read them every time).
    evaluation_cache_size: int = Field(default=1024, ge=0)
    #: Batches one database transaction may commit together: PUTs that arrive while a
    #: commit is running wait for the next one and share it (and its fsync); each is
    #: answered only after the commit that stored it.
    max_batches_per_commit: int = Field(default=64, ge=1)
    #: Bytes of running totals a worker keeps in memory for the evaluations it wrote last,
    #: so that their next batches are stored without reading the evaluation first
    #: (0: read it every time).
    written_totals_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: The hash that new evaluations compare a batch sent again with: ``xxh3-128``, or
    #: ``sha256`` while replicas of an earlier version (which hash with SHA-256) share the
    #: database. Fixed per evaluation at its creation.
    content_hash: Literal["xxh3-128", "sha256"] = "xxh3-128"

    # ---- Hostile and heavy load: every budget a worker process keeps ----
    #: Bytes a worker may hold for requests at once: declared and received bodies plus each
    #: request's estimated working memory. Past it: 503 with ``Retry-After``, before the body
    #: is read. Default: 8 × the default body limit.
    max_inflight_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    #: Largest estimated working memory of one request (decoded arrays, their conversion
    #: to the computation's dtype, per-sample values); over it: 413 naming what to send.
    max_request_memory_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    #: Largest JSON body read by the general JSON parser (about 15× its size in memory);
    #: larger bodies must hold their arrays as plain numbers, typed arrays or binary.
    max_general_json_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    #: Seconds within which a request's line and headers must arrive; else 408 and close.
    header_timeout: float = Field(default=5.0, gt=0)
    #: Seconds a request body may stall (no byte received) before a 408 and close.
    body_timeout: float = Field(default=10.0, gt=0)
    #: Slowest average rate, bytes a second, of a body still arriving ``body_timeout``
    #: seconds after it started; slower: 408 and close (64 MiB then takes at most ~68 min).
    min_body_rate: int = Field(default=16 * 1024, ge=0)
    #: Seconds an idle keep-alive connection stays open.
    keep_alive_timeout: int = Field(default=5, ge=1)
    #: Most headers in one request; more: 431.
    max_header_count: int = Field(default=100, gt=0)
    #: Most bytes of request line and headers together; more: 431.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    #: Most open connections per worker; past it new connections get a 503 and are closed.
    max_connections: int = Field(default=1024, gt=0)
    #: Most heads (``outputs``) in one evaluate request.
    max_heads: int = Field(default=64, gt=0)
    #: Most classes of a ``confusion_matrix`` report; more: 422.
    max_confusion_classes: int = Field(default=1000, gt=0)
    #: Most counts of AUC thresholds and confusion matrices in one request, summed over its
    #: entries and heads; more: 413.
    max_statistic_cells: int = Field(default=1 << 22, gt=0)
    #: Most entries in one evaluate body's ``losses`` and ``metrics`` together (per head).
    max_entries: int = Field(default=64, gt=0)
    #: Requests whose reservation passed this many bytes give memory back to the operating
    #: system when they end (glibc ``malloc_trim``); 0 turns it off.
    trim_after_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    #: Allocations of this many bytes or more get memory mappings of their own, given back
    #: to the system when freed (glibc ``M_MMAP_THRESHOLD``); 0 keeps glibc's default.
    malloc_mmap_threshold: int = Field(default=1024 * 1024, ge=0)
    #: Free memory at the top of an allocator heap kept for the next request, bytes, with
    #: ``malloc_mmap_threshold`` set (glibc ``M_TRIM_THRESHOLD``; fixing one threshold
    #: fixes both, and glibc's fixed default is 128 KiB). Below what a request's smaller
    #: buffers take, each request maps that memory again and has its pages faulted in
    #: anew. 0 keeps glibc's default.
    malloc_trim_threshold: int = Field(default=8 * 1024 * 1024, ge=0)
    #: Once started, each worker leaves the objects it built while starting (modules, the
    #: app, its routes and schemas) out of the cyclic garbage collector's full passes
    #: (``gc.freeze``), which otherwise go over the whole heap and pause every request
    #: for ~100 ms each; false: leave the collector as Python sets it.
    gc_freeze: bool = True

    #: Threads that compute one big batch (a loss or metric over at least
    #: ``PARALLEL_MIN_ELEMENTS`` elements is split into blocks of rows); none: every core.
    kernel_threads: int | None = Field(default=None, ge=1)

    # ---- Small requests: where their work runs ----
    #: Requests whose arrays hold at most this many elements (counted once per loss, metric
    #: or report named) and whose body is at most 16 bytes per such element are decoded
    #: and computed on the event loop, without the hop to the thread pool and back; bigger
    #: ones run in the thread pool, so the event loop keeps serving meanwhile. 0: always
    #: the thread pool.
    inline_max_elements: int = Field(default=2048, ge=0)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("evaluation_ttl", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        # A plain number of seconds, as a string from the environment, is read as seconds;
        # ISO 8601 durations (``P7D``, ``PT12H``) go to pydantic's own parser.
        if isinstance(value, str) and _SECONDS.fullmatch(value.strip()):
            return float(value)
        return value

    @field_validator("evaluation_ttl")
    @classmethod
    def _positive(cls, ttl: timedelta) -> timedelta:
        if not timedelta(0) < ttl <= _MAX_TTL:
            raise ValueError(
                f"the evaluation TTL is a positive duration of at most {_MAX_TTL.days} days "
                f"(seconds, or ISO 8601 like P7D); received {ttl.total_seconds():g} seconds"
            )
        return ttl

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        cleaned = [origin.rstrip("/") for origin in origins]
        for origin in cleaned:
            if origin != "*" and _ORIGIN.fullmatch(origin) is None:
                raise ValueError(
                    f"a CORS origin is '*' or scheme://host[:port] "
                    f"(http or https, no path); received {origin!r}"
                )
        return cleaned

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and url.get_secret_value():
            # Refused here, at start, not at the first request about evaluations (its
            # message never shows the password).
            parse_database_url(url.get_secret_value())
        return url

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for index, key in enumerate(keys):
            if TOKEN.fullmatch(key.get_secret_value()) is None:
                # The key itself is never quoted back: it is a secret.
                raise ValueError(
                    f"API key #{index + 1} is empty or holds characters a Bearer token "
                    "cannot (spaces, control or non-ASCII characters)"
                )
        return keys
