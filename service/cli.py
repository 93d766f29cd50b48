"""The ``loss-service`` command: ``loss-service serve`` starts the service, ``loss-service
evaluate`` computes losses and metrics over whole datasets read from files (against a
running service or in process, see :mod:`service.cli_evaluate`), ``loss-service
--version`` prints its version. Each option of ``serve`` (``--host``, ``--port``,
``--workers``, ``--log-level``, ``--log-format``) defaults to its ``LOSS_SERVICE_*`` setting.

``serve`` runs uvicorn on uvloop with the httptools HTTP parser (both come with
``uvicorn[standard]``; asyncio's loop and h11 without them), with the service's
logging (JSON lines or console lines on standard error, one access line per request,
uvicorn's own access log off), a graceful shutdown (on SIGTERM or SIGINT, in-flight
requests get up to ``LOSS_SERVICE_SHUTDOWN_TIMEOUT`` seconds to finish, then the
command exits 0) and, with several workers, Prometheus metrics shared through a
temporary ``PROMETHEUS_MULTIPROC_DIR`` (created here and removed at exit, unless it
was set).

The help and ``--version`` work whatever the settings hold; ``serve`` with an invalid
setting (or an SQLite store it cannot open, a metrics directory it cannot make) exits 2
with a message naming its variable, and exits 3 when a worker fails to start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service import __version__, cli_evaluate

if TYPE_CHECKING:
    from service.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]
LOG_FORMATS = ["json", "console"]


def _settings_error(error: ValidationError) -> str:
    """The errors of the settings, one a line, naming the environment variable; the
    values themselves are never shown (they may be secrets)."""
    lines = ["loss-service: invalid settings:"]
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in item["loc"][:1])
        lines.append(f"  LOSS_SERVICE_{field.upper()}: {item['msg']}")
    return "\n".join(lines)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handler: before it starts, or raised again by it
    once it has shut down gracefully. Either way the command is done: exit 0."""
    raise SystemExit(0)


class _Unusable(Exception):
    """A setting ``serve`` cannot start with, found before the workers start (each of them
    would fail the same way): its message names the variable."""


def _store_problem(settings: Settings) -> str | None:
    """Why the SQLite store cannot be opened, if it cannot: a data directory that is a
    file or cannot be created, a file that is not a database. Checked once before the
    workers start (its schema migrated). A database that cannot serve now (locked,
    unreachable: requests about evaluations get 503s until it can) is left to them, as is
    PostgreSQL."""
    from service.storage import Store, parse_database_url, unavailable

    url = settings.database_url
    given = None if url is None else url.get_secret_value()
    if given is not None and parse_database_url(given).get_backend_name() != "sqlite":
        return None
    try:
        store = Store.open(given, settings.data_dir, busy_timeout=settings.database_timeout)
    except Exception as error:
        if unavailable(error):
            return None
        where = (
            f"LOSS_SERVICE_DATA_DIR={str(settings.data_dir)!r}"
            if given is None
            else "LOSS_SERVICE_DATABASE_URL"
        )
        # The driver's own error, without SQLAlchemy's wrapping and link.
        cause = getattr(error, "orig", None) or error
        return (
            f"loss-service: the evaluation store cannot be opened ({where}): "
            f"{type(cause).__name__}: {cause}. Expected a directory the service may create "
            "and write, holding the service's own SQLite file if any."
        )
    store.dispose()
    return None


@contextmanager
def _multiprocess_metrics(workers: int) -> Iterator[str | None]:
    """With several workers, a ``PROMETHEUS_MULTIPROC_DIR`` for their metrics."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        try:
            os.makedirs(given, exist_ok=True)
        except OSError as error:
            raise _Unusable(
                f"loss-service: {MULTIPROC_ENV}={given!r} cannot be used as the workers' "
                f"metrics directory: {error.strerror or error}. Expected a directory the "
                "service may create and write, or the variable unset."
            ) from None
        yield given
        return
    if workers <= 1:
        yield None
        return
    try:
        created = tempfile.mkdtemp(prefix="loss-service-metrics-")
    except OSError as error:
        raise _Unusable(
            f"loss-service: no temporary directory for the workers' metrics in "
            f"{tempfile.gettempdir()!r}: {error.strerror or error}. Expected a writable "
            f"TMPDIR, or {MULTIPROC_ENV} naming a writable directory."
        ) from None
    os.environ[MULTIPROC_ENV] = created
    try:
        yield created
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(created, ignore_errors=True)


def event_loop() -> str:
    """uvloop when installed (``uvicorn[standard]`` installs it), else asyncio's loop."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def http_parser() -> str:
    """httptools when installed (``uvicorn[standard]`` installs it), else h11."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def http_protocol() -> str:
    """The guarded httptools protocol (header limits and timeout, connection cap, see
    ``service.server``) when httptools is installed, else h11."""
    # Named, not imported: the workers import it (importing it here would make this
    # process a metrics writer of its own).
    return "service.server:GuardedHttpToolsProtocol" if http_parser() == "httptools" else "h11"


DESCRIPTION = "Keras 3's classification losses and accuracy metrics, served over HTTP."
EPILOG = (
    "Settings are LOSS_SERVICE_* environment variables (for example LOSS_SERVICE_PORT=9000 or "
    "LOSS_SERVICE_WORKERS=4); the options of a command override them. "
    "Run 'loss-service serve --help' or 'loss-service evaluate --help' for their options."
)
SERVE_DESCRIPTION = (
    "Start the HTTP service. Each option defaults to its setting: LOSS_SERVICE_HOST, "
    "LOSS_SERVICE_PORT, LOSS_SERVICE_WORKERS, LOSS_SERVICE_LOG_LEVEL, LOSS_SERVICE_LOG_FORMAT."
)


def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loss-service", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = commands.add_parser(
        "serve", help="start the HTTP service", description=SERVE_DESCRIPTION
    )
    serve.add_argument(
        "--host", default=defaults.host, help="address to bind (default %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=defaults.port, help="TCP port (default %(default)s)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="worker processes (default %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default=defaults.log_level,
        choices=LOG_LEVELS,
        help="log level (default %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        default=defaults.log_format,
        choices=LOG_FORMATS,
        help="json lines or readable console lines (default %(default)s)",
    )
    cli_evaluate.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from service.settings import Settings

    try:
        settings: Settings | None = Settings()
    except ValidationError as error:
        # --help and --version still answer (with the settings' own defaults shown);
        # a command that would use the settings stops here.
        settings, invalid = None, error
    args = build_parser(settings or Settings.model_construct()).parse_args(argv)
    if args.command == "evaluate":
        # A client of a service (or a local computation): the service's settings are not
        # its own.
        return cli_evaluate.run(args)
    if settings is None:
        print(_settings_error(invalid), file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"loss-service: --port must be 0 to 65535, not {args.port}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"loss-service: --workers must be at least 1, not {args.workers}", file=sys.stderr)
        return 2
    problem = _store_problem(settings)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        return serve(args, settings)
    except _Unusable as unusable:
        print(unusable, file=sys.stderr)
        return 2


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the service until it is stopped: 0 after a graceful shutdown, 3 when a worker
    failed to start (uvicorn's code for it, with one worker or several)."""
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        with _multiprocess_metrics(args.workers):
            # Imported (uvicorn too, by _run) once PROMETHEUS_MULTIPROC_DIR is settled (see
            # service.infra.prometheus).
            from service.infra.logs import logging_config

            return _run(
                "service.main:create_app",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                loop=event_loop(),
                http=http_protocol(),
                log_config=logging_config(args.log_level, args.log_format),
                log_level=args.log_level,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=settings.shutdown_timeout,
                timeout_keep_alive=settings.keep_alive_timeout,
                # h11's own cap on a request's head (the guarded protocol enforces it with
                # httptools).
                h11_max_incomplete_event_size=settings.max_header_bytes,
            )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(app: str, **options: Any) -> int:
    """``uvicorn.run(app, **options)``, with an exit code: 0 once stopped, 3 (uvicorn's
    code for it) when a worker failed to start. With one worker uvicorn exits 3 itself;
    with several, its supervisor stops them all once one fails to start, then returns as
    after a signal, so the workers' exit codes are read here."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if options.get("workers", 1) <= 1:
        uvicorn.run(app, **options)
        return 0
    config = uvicorn.Config(app, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


if __name__ == "__main__":
    sys.exit(main())
