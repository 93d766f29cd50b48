"""The ``loss-service`` command: ``loss-service serve [--host --port --workers --log-level]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from service.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="loss-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP service")
    serve.add_argument(
        "--host", default=settings.host, help="address to bind (default %(default)s)"
    )
    serve.add_argument("--port", type=int, default=settings.port, help="port (default %(default)s)")
    serve.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help="worker processes (default %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default=settings.log_level,
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default %(default)s)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
