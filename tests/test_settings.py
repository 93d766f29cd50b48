"""Settings: one class, ``LOSS_SERVICE_*`` environment variables, documented defaults."""

from __future__ import annotations

import os
import typing
from datetime import timedelta

import pytest
from pydantic import ValidationError

from service import kernels, streaming
from service.kernels import _blocks
from service.main import create_app
from service.settings import Settings

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LOSS_SERVICE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.workers == 1
    assert s.log_level == "info"
    assert s.log_format == "json"
    assert s.max_body_bytes == 64 * MiB
    assert s.max_elements == 64 * MiB
    assert s.cors_origins == []
    assert s.api_keys == []
    assert s.shutdown_timeout == 30


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LOSS_SERVICE_HOST": "0.0.0.0",
        "LOSS_SERVICE_PORT": "9000",
        "LOSS_SERVICE_WORKERS": "4",
        "LOSS_SERVICE_LOG_LEVEL": "WARNING",
        "LOSS_SERVICE_LOG_FORMAT": "Console",
        "LOSS_SERVICE_MAX_BODY_BYTES": "1000",
        "LOSS_SERVICE_MAX_ELEMENTS": "2000",
        "LOSS_SERVICE_SHUTDOWN_TIMEOUT": "5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 9000, 4)
    assert (s.log_level, s.log_format) == ("warning", "console")
    assert (s.max_body_bytes, s.max_elements, s.shutdown_timeout) == (1000, 2000, 5)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", []),
        ("  ", []),
        ("key-one", ["key-one"]),
        ("key-one,key-two", ["key-one", "key-two"]),
        (" key-one , key-two ,", ["key-one", "key-two"]),
        ('["key-one", "key-two"]', ["key-one", "key-two"]),
    ],
)
def test_api_keys_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS", raw)
    assert [k.get_secret_value() for k in Settings().api_keys] == expected


def test_api_keys_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS", "s3cret-key-one,s3cret-key-two")
    s = Settings()
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s.model_dump())


@pytest.mark.parametrize("raw", ["good,bad key", "good,ключ", '["good", ""]'])
def test_bad_api_key_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS", raw)
    with pytest.raises(ValidationError) as caught:
        Settings()
    messages = " ".join(
        e["msg"] for e in caught.value.errors(include_input=False, include_context=False)
    )
    assert "API key #2" in messages
    assert "bad key" not in messages
    assert "ключ" not in messages


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", []),
        ("https://a.example", ["https://a.example"]),
        (
            "https://a.example/, http://localhost:3000",
            ["https://a.example", "http://localhost:3000"],
        ),
        ("*", ["*"]),
        ('["https://a.example"]', ["https://a.example"]),
    ],
)
def test_cors_origins_from_env(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_CORS_ORIGINS", raw)
    assert Settings().cors_origins == expected


@pytest.mark.parametrize("raw", ["a.example", "ftp://a.example", "https://a.example/path"])
def test_bad_cors_origin(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("LOSS_SERVICE_CORS_ORIGINS", raw)
    with pytest.raises(ValidationError, match="CORS origin"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOSS_SERVICE_PORT", "70000"),
        ("LOSS_SERVICE_PORT", "http"),
        ("LOSS_SERVICE_WORKERS", "0"),
        ("LOSS_SERVICE_LOG_LEVEL", "verbose"),
        ("LOSS_SERVICE_LOG_FORMAT", "xml"),
        ("LOSS_SERVICE_MAX_BODY_BYTES", "0"),
        ("LOSS_SERVICE_MAX_ELEMENTS", "-1"),
        ("LOSS_SERVICE_SHUTDOWN_TIMEOUT", "-1"),
        ("LOSS_SERVICE_CONTENT_HASH", "md5"),
        ("LOSS_SERVICE_EVALUATION_TTL", "0"),
        ("LOSS_SERVICE_EVALUATION_TTL", "-60"),
        ("LOSS_SERVICE_EVALUATION_TTL", "a week"),
        ("LOSS_SERVICE_EVALUATION_TTL", "1e11"),
        ("LOSS_SERVICE_DATABASE_URL", "sqlite://"),
        ("LOSS_SERVICE_KERNEL_THREADS", "0"),
        ("loss_service_kernel_threads", "abc"),
        ("LOSS_SERVICE_DATABASE_URL", "redis://127.0.0.1:6379"),
    ],
)
def test_invalid_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("60", timedelta(seconds=60)),
        (" 90.5 ", timedelta(seconds=90.5)),
        ("P7D", timedelta(days=7)),
        ("PT12H", timedelta(hours=12)),
    ],
)
def test_evaluation_ttl_takes_seconds_or_iso_8601(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: timedelta
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_EVALUATION_TTL", raw)
    assert Settings().evaluation_ttl == expected


def test_the_content_hash_setting_names_the_hashes_evaluations_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().content_hash == streaming.CONTENT_HASH
    for name in streaming.CONTENT_HASHES:
        monkeypatch.setenv("LOSS_SERVICE_CONTENT_HASH", name)
        assert Settings().content_hash == name
    choices = Settings.model_fields["content_hash"].annotation
    assert set(typing.get_args(choices)) == set(streaming.CONTENT_HASHES)


def test_keyword_arguments_still_work() -> None:
    s = Settings(max_body_bytes=100, api_keys=["k1"], cors_origins=["http://x.test"])
    assert s.max_body_bytes == 100
    assert [k.get_secret_value() for k in s.api_keys] == ["k1"]
    assert s.cors_origins == ["http://x.test"]


def test_a_database_url_the_store_cannot_take_is_refused_at_start_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not at the first request about evaluations (a 500 there): at start, saying what a
    URL must be."""
    monkeypatch.setenv("LOSS_SERVICE_DATABASE_URL", "mysql://user:hunter2@db.example/evals")
    with pytest.raises(ValidationError) as caught:
        Settings()
    (error,) = caught.value.errors()
    assert "uses 'mysql'; expected sqlite:///<path> or postgresql://" in error["msg"]
    assert "hunter2" not in error["msg"]
    monkeypatch.setenv("LOSS_SERVICE_DATABASE_URL", "postgresql://u:pw@db.example/evals")
    assert Settings().database_url is not None


def test_kernel_threads_is_a_setting_the_app_hands_to_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any case, checked at start (exit code 2 from ``serve``), and what big batches run on
    in the app's process; none: as the kernels' own default (every core)."""
    monkeypatch.setenv("loss_service_kernel_threads", "3")
    assert Settings().kernel_threads == 3
    try:
        create_app(Settings(gc_freeze=False))
        assert _blocks.threads() == 3
        monkeypatch.delenv("loss_service_kernel_threads")
        monkeypatch.delenv("LOSS_SERVICE_KERNEL_THREADS", raising=False)
        create_app(Settings(gc_freeze=False))
        assert _blocks.threads() == (os.cpu_count() or 1)
    finally:
        kernels.set_kernel_threads(None)
