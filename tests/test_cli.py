"""``loss-service serve``: options and their defaults from the settings, what uvicorn gets."""

from __future__ import annotations

import importlib
import importlib.util
import logging.config
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import service
from service import cli
from service.infra.logs import ConsoleFormatter, JsonFormatter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LOSS_SERVICE_") or name == cli.MULTIPROC_ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Stands in for ``uvicorn.run`` (``cli._run``): records its arguments, and the
    environment and SIGTERM handler it would have run with. The store, opened before it,
    in ``tmp_path``."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setenv("LOSS_SERVICE_DATA_DIR", str(tmp_path / "data"))

    def fake_run(app: str, **kwargs: Any) -> int:
        kwargs["app"] = app
        kwargs["multiproc_dir"] = os.environ.get(cli.MULTIPROC_ENV)
        kwargs["multiproc_dir_exists"] = bool(
            kwargs["multiproc_dir"] and os.path.isdir(kwargs["multiproc_dir"])
        )
        kwargs["sigterm"] = signal.getsignal(signal.SIGTERM)
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(cli, "_run", fake_run)
    return calls


def test_serve_defaults(runs: list[dict[str, Any]]) -> None:
    assert cli.main(["serve"]) == 0
    (call,) = runs
    assert call["app"] == "service.main:create_app"
    assert call["factory"] is True
    assert (call["host"], call["port"], call["workers"]) == ("127.0.0.1", 8000, 1)
    assert call["log_level"] == "info"
    assert call["access_log"] is False
    assert call["timeout_graceful_shutdown"] == 30
    assert call["multiproc_dir"] is None
    formatter = call["log_config"]["formatters"]["default"]["()"]
    assert formatter.endswith("JsonFormatter")
    # uvloop and httptools are installed: named, not left to "auto"; httptools through the
    # service's guarded protocol, which uvicorn imports by name in each worker.
    assert call["loop"] == "uvloop"
    module, _, name = call["http"].partition(":")
    protocol = getattr(importlib.import_module(module), name)
    assert issubclass(protocol, HttpToolsProtocol)


def test_loop_and_parser_without_uvicorn_standard(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in ("uvloop", "httptools") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert cli.main(["serve"]) == 0
    assert (runs[0]["loop"], runs[0]["http"]) == ("asyncio", "h11")


def test_settings_are_the_defaults(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_PORT", "9123")
    monkeypatch.setenv("LOSS_SERVICE_WORKERS", "3")
    monkeypatch.setenv("LOSS_SERVICE_LOG_LEVEL", "warning")
    monkeypatch.setenv("LOSS_SERVICE_LOG_FORMAT", "console")
    monkeypatch.setenv("LOSS_SERVICE_SHUTDOWN_TIMEOUT", "7")
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 0
    (call,) = runs
    assert (call["host"], call["port"], call["workers"]) == ("0.0.0.0", 9123, 3)
    assert call["log_level"] == "warning"
    assert call["timeout_graceful_shutdown"] == 7
    assert call["log_config"]["formatters"]["default"]["()"].endswith("ConsoleFormatter")


def test_options_override_settings(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_PORT", "9123")
    argv = ["serve", "--port", "9200", "--workers", "2", "--log-level", "debug"]
    assert cli.main([*argv, "--log-format", "console"]) == 0
    (call,) = runs
    assert (call["port"], call["workers"], call["log_level"]) == (9200, 2, "debug")


def test_several_workers_share_a_temporary_metrics_dir(runs: list[dict[str, Any]]) -> None:
    assert cli.main(["serve", "--workers", "2"]) == 0
    (call,) = runs
    assert call["multiproc_dir_exists"]
    assert not os.path.exists(call["multiproc_dir"])  # removed at exit
    assert cli.MULTIPROC_ENV not in os.environ


def test_a_given_metrics_dir_is_kept(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    given = tmp_path / "prom"
    monkeypatch.setenv(cli.MULTIPROC_ENV, str(given))
    assert cli.main(["serve", "--workers", "2"]) == 0
    assert runs[0]["multiproc_dir"] == str(given)
    assert given.is_dir()


def test_sigterm_handler_during_and_after(runs: list[dict[str, Any]]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["serve"]) == 0
    assert runs[0]["sigterm"] is cli._exit_cleanly
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(SystemExit) as caught:
        cli._exit_cleanly(signal.SIGTERM, None)
    assert caught.value.code == 0


def test_invalid_settings_exit_2_without_secrets(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS", '["s3cret-one", "not valid"]')
    monkeypatch.setenv("LOSS_SERVICE_WORKERS", "zero")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "LOSS_SERVICE_API_KEYS" in err
    assert "LOSS_SERVICE_WORKERS" in err
    assert "s3cret" not in err
    assert "not valid" not in err
    assert runs == []


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """An empty file, where a directory is expected."""
    made = tmp_path / "a-file"
    made.write_text("")
    return made


def test_a_store_that_cannot_be_opened_stops_serve_with_2(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, a_file: Path, capsys: Any
) -> None:
    # Each worker would fail to start the same way (a traceback, exit 3; with several
    # workers, exit 0): said once, before any starts.
    monkeypatch.setenv("LOSS_SERVICE_DATA_DIR", str(a_file))
    assert cli.main(["serve", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert f"LOSS_SERVICE_DATA_DIR={str(a_file)!r}" in err and "FileExistsError" in err, err
    corrupt = a_file.parent / "corrupt"
    corrupt.mkdir()
    (corrupt / "evaluations.sqlite3").write_bytes(os.urandom(8192))
    monkeypatch.setenv("LOSS_SERVICE_DATA_DIR", str(corrupt))
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "file is not a database" in err and "sqlalche.me" not in err, err
    monkeypatch.setenv("LOSS_SERVICE_DATABASE_URL", f"sqlite:///{a_file}/evaluations.db")
    assert cli.main(["serve"]) == 2
    assert "LOSS_SERVICE_DATABASE_URL" in capsys.readouterr().err
    assert runs == []


def test_a_metrics_dir_that_cannot_be_made_stops_serve_with_2(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, a_file: Path, capsys: Any
) -> None:
    monkeypatch.setenv(cli.MULTIPROC_ENV, str(a_file / "prom"))
    assert cli.main(["serve", "--workers", "2"]) == 2
    assert f"{cli.MULTIPROC_ENV}={str(a_file / 'prom')!r} cannot be used" in capsys.readouterr().err
    # Made by serve in the temporary directory, which cannot hold it either.
    monkeypatch.delenv(cli.MULTIPROC_ENV)
    monkeypatch.setattr(tempfile, "tempdir", str(a_file))
    assert cli.main(["serve", "--workers", "2"]) == 2
    assert "no temporary directory for the workers' metrics" in capsys.readouterr().err
    assert runs == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_fails_to_start_ends_serve_with_3(workers: int) -> None:
    # uvicorn's supervisor of several workers stops them all and returns as after a signal.
    code = (
        "import sys; from service import cli; sys.exit(cli._run('tests.servers:failing_startup',"
        f" port=0, workers={workers}, lifespan='on', log_level='critical'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr


@pytest.mark.parametrize(
    "argv", [["serve", "--port", "70000"], ["serve", "--workers", "0"]], ids=["port", "workers"]
)
def test_invalid_options(runs: list[dict[str, Any]], argv: list[str]) -> None:
    assert cli.main(argv) == 2
    assert runs == []


def test_unknown_log_level_is_an_argparse_error(runs: list[dict[str, Any]]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve", "--log-level", "loud"])
    assert caught.value.code == 2


def test_logging_config_is_valid() -> None:
    """The dictConfig given to uvicorn is accepted by logging (on a scratch copy)."""
    from service.infra.logs import logging_config

    for fmt, formatter in (("json", JsonFormatter), ("console", ConsoleFormatter)):
        config = logging_config("debug", fmt)
        assert config["loggers"]["uvicorn.access"]["propagate"] is False
        # Validate by building the formatter and filter the way dictConfig does.
        configurator = logging.config.DictConfigurator(config)
        built = configurator.configure_custom(dict(config["formatters"]["default"]))
        assert isinstance(built, formatter)


# ---- help and version ----------------------------------------------------------------------


def test_help_is_one_plain_line_and_an_epilog(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    usage, description, *rest = out.split("\n\n")
    assert usage.startswith("usage: loss-service")
    # One whole sentence, not a docstring cut at its first line, and no reStructuredText.
    sentence = " ".join(description.split())
    assert sentence.endswith(".") and sentence.count(". ") == 0
    assert "Keras 3" in sentence
    assert "``" not in out and ":func:" not in out
    epilog = " ".join(rest[-1].split())
    assert "LOSS_SERVICE_" in epilog
    assert "loss-service serve --help" in epilog


def test_serve_help_names_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out
    assert "LOSS_SERVICE_PORT" in out


def test_version(runs: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"loss-service {service.__version__}\n"
    assert runs == []


def test_version_and_help_with_invalid_settings(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asking what the command is does not need valid settings; serving does."""
    monkeypatch.setenv("LOSS_SERVICE_WORKERS", "zero")
    for argv in (["--version"], ["--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 0, argv
    assert capsys.readouterr().err == ""
    assert cli.main(["serve"]) == 2
    assert "LOSS_SERVICE_WORKERS" in capsys.readouterr().err
    assert runs == []


# ---- make serve ----------------------------------------------------------------------------


def make_serve(*args: str, **env: str) -> list[str]:
    """The ``loss-service`` command ``make serve`` would run (``make -n``: nothing runs)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    environ = {k: v for k, v in os.environ.items() if k not in {"HOST", "PORT", "MAKEFLAGS"}}
    result = subprocess.run(
        [make, "-n", "-C", str(ROOT), "serve", *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (line,) = [line for line in result.stdout.splitlines() if "loss-service serve" in line]
    return line.split()[1:]


def test_make_serve_leaves_host_and_port_to_the_settings() -> None:
    # LOSS_SERVICE_HOST/LOSS_SERVICE_PORT are read by `loss-service serve` itself.
    assert make_serve(LOSS_SERVICE_PORT="9100") == ["serve"]
    # HOST and PORT in the environment (some shells set HOST) are not make's options.
    assert make_serve(HOST="workstation", PORT="1234") == ["serve"]
    assert make_serve("PORT=") == ["serve"]


def test_make_serve_port_and_host_on_the_command_line() -> None:
    assert make_serve("PORT=9000") == ["serve", "--port", "9000"]
    assert make_serve("HOST=0.0.0.0", "PORT=9000") == [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
    ]
