"""A client generated from the served spec by openapi-python-client calls every loss,
metric, catalogue and evaluate operation successfully with only the required fields."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from service import registry
from service.main import create_app
from service.settings import Settings
from tests.servers import serve_in_thread

BIN = Path(sys.executable).parent
KEY = "generated-client-key"
#: One batch every loss and metric takes: one-hot labels and probabilities.
Y_TRUE = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
Y_PRED = [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated package (``loss_service_client``), importable for this module."""
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_bytes(orjson.dumps(create_app(Settings()).openapi()))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(root / "loss_service_client"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("loss_service_client")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("loss_service_client")]:
            del sys.modules[name]
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def client(generated: ModuleType) -> Iterator[Any]:
    with serve_in_thread(create_app(Settings(api_keys=KEY))) as base:
        made = generated.AuthenticatedClient(
            base_url=base, token=KEY, raise_on_unexpected_status=True
        )
        with made as opened:
            yield opened


def _module(generated: ModuleType, tag: str, operation: str) -> Any:
    return importlib.import_module(f"{generated.__name__}.api.{tag}.{operation}")


def _request(generated: ModuleType, name: str, kind: str) -> Any:
    camel = "".join(part.capitalize() for part in name.split("_"))
    models = importlib.import_module(f"{generated.__name__}.models")
    model = getattr(models, f"{camel}{kind.capitalize()}Request")
    return model(y_true=Y_TRUE, y_pred=Y_PRED)


@pytest.mark.parametrize("name", sorted(registry.LOSSES))
def test_every_loss_operation(generated: ModuleType, client: Any, name: str) -> None:
    response = _module(generated, "losses", f"loss_{name}").sync_detailed(
        client=client, body=_request(generated, name, "loss")
    )
    assert response.status_code == 200, response.content
    assert response.parsed.name == name and isinstance(response.parsed.loss, float)


@pytest.mark.parametrize("name", sorted(registry.METRICS))
def test_every_metric_operation(generated: ModuleType, client: Any, name: str) -> None:
    response = _module(generated, "metrics", f"metric_{name}").sync_detailed(
        client=client, body=_request(generated, name, "metric")
    )
    assert response.status_code == 200, response.content
    assert response.parsed.name == name


def test_catalogues_and_evaluate(generated: ModuleType, client: Any) -> None:
    losses = _module(generated, "losses", "list_losses").sync_detailed(client=client)
    metrics = _module(generated, "metrics", "list_metrics").sync_detailed(client=client)
    assert losses.status_code == 200 and metrics.status_code == 200
    models = importlib.import_module(f"{generated.__name__}.models")
    evaluated = _module(generated, "evaluate", "evaluate").sync_detailed(
        client=client, body=models.EvaluateRequest(y_true=Y_TRUE, y_pred=Y_PRED)
    )
    assert evaluated.status_code == 200, evaluated.content
    assert evaluated.parsed.losses.to_dict() == {
        "categorical_crossentropy": pytest.approx(
            evaluated.parsed.losses.to_dict()["categorical_crossentropy"]
        )
    }


def test_no_operation_takes_the_binary_encodings_header(generated: ModuleType) -> None:
    """`Inference-Header-Content-Length` goes with binary bodies only: a generated client's
    JSON calls neither take nor send it."""
    api = importlib.import_module(f"{generated.__name__}.api")
    operations = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(api.__path__, f"{api.__name__}.")
        if not info.ispkg
    ]
    assert len(operations) > len(registry.LOSSES) + len(registry.METRICS)
    for module in operations:
        parameters = inspect.signature(module.sync_detailed).parameters
        assert not [p for p in parameters if "inference" in p.lower()], module.__name__
