"""Write the service's OpenAPI document, the one ``GET /openapi.json`` serves, to a file.

``make openapi`` runs it::

    python -m service.openapi_export openapi/openapi.json   # write the file
    python -m service.openapi_export --check openapi/openapi.json   # exit 1 if it drifted
    python -m service.openapi_export -   # print it

The file is what tests/test_openapi.py compares the live document with.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.main import create_app
from service.settings import Settings


def spec() -> dict[str, Any]:
    """The OpenAPI document of an app built with default settings."""
    return create_app(Settings()).openapi()


def render(document: dict[str, Any] | None = None) -> str:
    """``document`` (default: the service's spec) as the file holds it."""
    document = spec() if document is None else document
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.openapi_export",
        description="Write the service's OpenAPI document as JSON.",
    )
    parser.add_argument("path", help="where to write it; '-' for standard output")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the file differs from the service's document",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            print(f"{path} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
