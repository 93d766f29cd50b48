"""The evaluation store's schema from the command line.

``python -m service.storage upgrade [URL] [--data-dir DIR]`` upgrades a database
to the latest revision (default: the SQLite file in ``./data``); the service does
this itself at startup. ``python -m service.storage revision "what changes"``
writes a new, empty revision into ``service/storage/migrations/versions/`` to
fill in (``op.add_column(...)`` and the like), numbered after the latest one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command

from service.storage.engine import make_engine
from service.storage.migrate import (
    MIGRATIONS,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.storage")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upgrade", help="upgrade a database to the latest revision")
    up.add_argument("url", nargs="?", default=None, help="database URL (default: ./data)")
    up.add_argument("--data-dir", type=Path, default=Path("data"))
    new = commands.add_parser("revision", help="write a new, empty revision")
    new.add_argument("message")
    args = parser.parse_args(argv)
    if args.command == "upgrade":
        engine = make_engine(args.url, args.data_dir)
        try:
            upgrade(engine)
            print(f"database at revision {current_revision(engine)}")
        finally:
            engine.dispose()
        return
    number = int(head_revision()) + 1
    script = command.revision(
        alembic_config(), args.message, rev_id=f"{number:04d}", head=head_revision()
    )
    written = script.path if script is not None and not isinstance(script, list) else MIGRATIONS
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
