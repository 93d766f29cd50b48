"""Every example of the README runs as written, against a service started for the test,
and prints what the README shows.

- ``python`` blocks run as they are (``http://127.0.0.1:8000`` and ``localhost:8000``
  point at the test's service); a ``print(...)  # <text>`` line must print ``<text>``.
- ``console`` blocks: each ``$ curl ...`` line is sent, and the lines after it up to the
  next blank line are its output.
- ``sh`` blocks with ``curl`` commands are sent in order (``NAME=value`` lines and
  ``$NAME`` included); the block right after (``json`` or plain) is the last command's
  output, as ``curl -s`` (or ``curl -si``, headers first) prints it.

Outputs compare as JSON where they are JSON. What a run cannot reproduce is compared by
shape only: an evaluation's ``id`` and times, and the ``Location`` that names the id.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.main import create_app
from service.settings import Settings
from tests.servers import serve_in_thread

README = Path(__file__).parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
VOLATILE = {"id", "created_at", "updated_at", "received_at", "instance"}
HOST = re.compile(r"(https?://)?(127\.0\.0\.1|localhost):8000")


@dataclass
class Block:
    lang: str
    code: str
    line: int
    after: Block | None = None


def blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    found = [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    ]
    for block, nxt in itertools.pairwise(found):
        block.after = nxt
    return found


def _python_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang == "python"]


def _curl_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang in ("sh", "console") and "curl " in b.code]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("readme") / "data"
    with serve_in_thread(create_app(Settings(data_dir=data))) as url:
        yield url


# ---- curl ------------------------------------------------------------------------------------


@dataclass
class Shell:
    base: str
    variables: dict[str, str] = field(default_factory=dict)
    #: README value → value of this run (an evaluation's id).
    renamed: dict[str, str] = field(default_factory=dict)

    def expand(self, text: str) -> str:
        for name, value in self.variables.items():
            text = text.replace(f"${name}", value)
        for shown, real in self.renamed.items():
            text = text.replace(shown, real)
        return HOST.sub(self.base, text)

    def curl(self, command: str) -> str:
        """What ``curl`` prints for ``command`` (the options the README uses)."""
        args = shlex.split(self.expand(command), comments=True)
        assert args[0] == "curl", command
        method, url, headers, data, include, discard, write = "GET", "", {}, None, False, False, ""
        i = 1
        while i < len(args):
            arg = args[i]
            if arg in ("-s", "-si", "-is"):
                include = include or "i" in arg
            elif arg == "-i":
                include = True
            elif arg == "-X":
                i += 1
                method = args[i]
            elif arg == "-H":
                i += 1
                name, _, value = args[i].partition(":")
                headers[name.strip()] = value.strip()
            elif arg in ("-d", "--data"):
                i += 1
                data = args[i]
                method = "POST" if method == "GET" else method
            elif arg == "-o":
                i += 1
                discard = args[i] == "/dev/null"
            elif arg == "-w":
                i += 1
                write = args[i]
            else:
                url = arg if arg.startswith("http") else f"http://{arg}"
            i += 1
        response = httpx.request(method, url, headers=headers, content=data, timeout=30)
        out = "" if discard else response.text
        if include:
            head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
            head += [f"{k}: {v}" for k, v in response.headers.items()]
            out = "\n".join(head) + "\n" + out
        if write:
            out += write.replace("%{http_code}", str(response.status_code)).replace("\\n", "\n")
        return out


def _commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, a quote spanning lines kept
    whole, comments and prompts dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands: list[str] = []
    pending = ""
    for line in joined.splitlines():
        pending = f"{pending}\n{line}" if pending else line.strip().removeprefix("$ ")
        try:
            shlex.split(pending, comments=True)
        except ValueError:
            continue  # an open quote: the command goes on on the next line
        if pending and not pending.startswith("#"):
            commands.append(" ".join(shlex.split(pending, comments=True)) and pending)
        pending = ""
    return [c for c in commands if c.strip()]


def _same(shown: str, got: str, shell: Shell, where: str) -> None:
    shown, got = shown.strip(), got.strip()
    shown_head, shown_body = _split(shown)
    got_head, got_body = _split(got)
    if shown_head:
        assert got_head, where
        assert got_head[0] == shown_head[0], where  # the status line
        for line in shown_head[1:]:
            name = line.split(":", 1)[0].lower()
            found = [g for g in got_head if g.lower().startswith(name + ":")]
            assert found, f"{where}: no {name} header"
            if name != "location":
                assert found[0].lower() == line.lower(), where
    try:
        expected, actual = json.loads(shown_body), json.loads(got_body)
    except json.JSONDecodeError:
        assert got_body == shown_body, where
        return
    if isinstance(expected, dict) and isinstance(actual, dict) and "id" in expected:
        shell.renamed.setdefault(str(expected["id"]), str(actual["id"]))
        shell.variables.setdefault("ID", str(actual["id"]))
    assert _stable(actual) == _stable(expected, shown=True), where


def _split(text: str) -> tuple[list[str], str]:
    if not text.startswith("HTTP/"):
        return [], text
    lines = text.splitlines()
    head = [line for line in lines if not line.startswith(("{", "["))]
    body = "\n".join(line for line in lines if line.startswith(("{", "[")))
    return head, body


def _stable(value: Any, *, shown: bool = False) -> Any:
    """``value`` with its volatile fields blanked; numbers the README shows match within
    float32's last place (NumPy's SIMD exp and log round float32 results differently on
    different CPUs, by one unit in the last place)."""
    if isinstance(value, dict):
        return {k: ("…" if k in VOLATILE else _stable(v, shown=shown)) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v, shown=shown) for v in value]
    if shown and isinstance(value, float):
        return pytest.approx(value, rel=2.0**-22, abs=0.0)
    return value


def _console(block: Block, shell: Shell) -> None:
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ curl"):
            output = []
            j = i + 1
            while j < len(lines) and lines[j].strip():
                output.append(lines[j])
                j += 1
            got = shell.curl(lines[i][2:])
            _same("\n".join(output), got, shell, f"README line {block.line + i + 1}")
            i = j
        else:
            i += 1


def _sh(block: Block, shell: Shell) -> None:
    got = ""
    for command in _commands(block.code):
        assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", command)
        if assignment:
            name, value = assignment.groups()
            shell.variables[name] = shell.renamed.get(value, value)
            continue
        got = shell.curl(command)
    shown = block.after
    if shown is not None and shown.lang in ("json", "") and "curl" not in shown.code:
        _same(shown.code, got, shell, f"README line {shown.line}")


def test_every_curl_example_answers_what_the_readme_shows(base: str) -> None:
    shell = Shell(base)
    ran = 0
    for block in _curl_blocks():
        if block.lang == "console":
            _console(block, shell)
        else:
            _sh(block, shell)
        ran += 1
    assert ran >= 4


# ---- python ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda b: f"line-{b.line}")
def test_every_python_example_runs_and_prints_what_it_says(base: str, block: Block) -> None:
    code = HOST.sub(lambda m: base if m.group(1) else base.removeprefix("http://"), block.code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{block.line}", "exec"), {"__name__": "readme"})
    printed = out.getvalue().splitlines()
    promised = [
        m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+#\s*(.+)$", block.code, re.M)
    ]
    assert printed[: len(promised)] == promised or all(p in printed for p in promised), printed
