"""Every loss and metric through the same agreement checks, from the registry (as
scikit-learn's test_common drives its metrics): the catalogue, the spec's operation and
the server agree on every parameter and on the label encodings each accepts, and the
invariances hold for each."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service import encodings, registry
from service.api.openapi_ops import param_schema

SPECS: list[tuple[str, str, Any]] = [
    *[("losses", name, spec) for name, spec in registry.LOSSES.items()],
    *[("metrics", name, spec) for name, spec in registry.METRICS.items()],
]
IDS = [f"{kind}/{name}" for kind, name, _ in SPECS]
#: One batch every loss and metric takes: one-hot labels, probabilities.
Y_TRUE = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
Y_PRED = [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]
KIND = {"losses": "loss", "metrics": "metric"}


def _value(kind: str, body: dict[str, Any]) -> Any:
    return body["loss" if kind == "losses" else "value"]


@pytest.fixture(scope="module")
def catalogue() -> dict[str, dict[str, Any]]:
    from service.main import create_app
    from tests.conftest import SyncClient

    with SyncClient(create_app()) as client:
        out = {}
        for kind in ("losses", "metrics"):
            for item in client.get(f"/v1/{kind}").json()[kind]:
                out[f"{kind}/{item['name']}"] = item
        spec = client.get("/openapi.json").json()
    out["__spec__"] = spec
    return out


@pytest.mark.parametrize(("kind", "name", "spec"), SPECS, ids=IDS)
def test_catalogue_spec_and_registry_name_the_same_parameters(
    catalogue: dict[str, Any], kind: str, name: str, spec: Any
) -> None:
    listed = {p["name"]: p for p in catalogue[f"{kind}/{name}"]["parameters"]}
    assert list(listed) == [p.name for p in spec.params]
    accepted = catalogue[f"{kind}/{name}"]["label_encodings"]
    assert accepted == [e for e in encodings.ENCODINGS if e in spec.accepts]
    for param in spec.params:
        assert listed[param.name]["default"] == param.default
        assert listed[param.name]["description"] == param.description
    schema_name = (
        "".join(part.capitalize() for part in name.split("_")) + KIND[kind].capitalize()
    ) + "Request"
    schema = catalogue["__spec__"]["components"]["schemas"][schema_name]
    operation = catalogue["__spec__"]["paths"][f"/v1/{kind}/{name}"]["post"]
    assert operation["operationId"] == f"{KIND[kind]}_{name}"
    for param in spec.params:
        assert schema["properties"][param.name] == param_schema(param)
    extra = set(schema["properties"]) - {p.name for p in spec.params}
    assert extra == {"y_true", "y_pred", "sample_weight", "label_encoding", "dtype"}


@pytest.mark.parametrize(("kind", "name", "spec"), SPECS, ids=IDS)
def test_the_server_takes_every_default_and_refuses_what_is_not_a_parameter(
    client: Any, kind: str, name: str, spec: Any
) -> None:
    body = {"y_true": Y_TRUE, "y_pred": Y_PRED}
    plain = client.post(f"/v1/{kind}/{name}", json=body)
    assert plain.status_code == 200, plain.text
    defaults = {p.name: p.default for p in spec.params}
    explicit = client.post(f"/v1/{kind}/{name}", json={**body, **defaults})
    assert explicit.status_code == 200, explicit.text
    assert _value(kind, explicit.json()) == _value(kind, plain.json())
    unknown = client.post(f"/v1/{kind}/{name}", json={**body, "not_a_parameter": 1})
    assert unknown.status_code == 422 and "not_a_parameter" in unknown.json()["detail"]


@pytest.mark.parametrize(("kind", "name", "spec"), SPECS, ids=IDS)
def test_integer_labels_equal_their_one_hot_form_and_unit_weights_no_weights(
    client: Any, kind: str, name: str, spec: Any
) -> None:
    one_hot = {"y_true": Y_TRUE, "y_pred": Y_PRED}
    weighted = {**one_hot, "sample_weight": [1.0] * len(Y_TRUE)}
    first = _value(kind, client.post(f"/v1/{kind}/{name}", json=one_hot).json())
    again = _value(kind, client.post(f"/v1/{kind}/{name}", json=weighted).json())
    np.testing.assert_allclose(again, first, rtol=1e-6)
    if "sparse" not in spec.accepts:
        return  # element by element over y_pred's shape: integer labels are not their form
    sparse = {"y_true": [int(np.argmax(r)) for r in Y_TRUE], "y_pred": Y_PRED}
    got = client.post(f"/v1/{kind}/{name}", json=sparse)
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(_value(kind, got.json()), first, rtol=1e-6)


#: One batch of each label encoding (three classes; one output for binary).
BY_ENCODING: dict[str, dict[str, Any]] = {
    "sparse": {"y_true": [1, 0, 2, 1], "y_pred": Y_PRED},
    "one_hot": {"y_true": Y_TRUE, "y_pred": Y_PRED},
    "soft": {
        "y_true": [[0.1, 0.8, 0.1], [0.6, 0.4, 0], [0, 0.2, 0.8], [0.5, 0.5, 0]],
        "y_pred": Y_PRED,
    },
    "multi_hot": {"y_true": [[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], "y_pred": Y_PRED},
    "binary": {"y_true": [[1], [0], [1], [0]], "y_pred": [[0.8], [0.3], [0.6], [0.4]]},
}


@pytest.mark.parametrize("encoding", encodings.ENCODINGS)
@pytest.mark.parametrize(("kind", "name", "spec"), SPECS, ids=IDS)
def test_the_server_computes_exactly_the_encodings_the_spec_accepts(
    client: Any, kind: str, name: str, spec: Any, encoding: str
) -> None:
    got = client.post(f"/v1/{kind}/{name}", json=BY_ENCODING[encoding])
    if encoding in spec.accepts:
        assert got.status_code == 200, got.text
        assert got.json()["label_encoding"] == encoding
    else:
        assert got.status_code == 422, got.text
        detail = got.json()["detail"]
        assert detail.startswith(f"{name} needs {spec.needs}, but "), detail
        assert f"use {spec.fitting[encoding]}" in detail


@pytest.mark.parametrize("encoding", encodings.ENCODINGS)
@pytest.mark.parametrize("name", list(registry.REPORTS))
def test_evaluate_computes_a_report_exactly_on_the_encodings_it_accepts(
    client: Any, name: str, encoding: str
) -> None:
    got = client.post("/v1/evaluate", json={**BY_ENCODING[encoding], "reports": [name]})
    if encoding in registry.REPORTS[name].accepts:
        assert got.status_code == 200, got.text
        assert name in got.json()["reports"]
    else:
        assert got.status_code == 422, got.text
        assert got.json()["detail"].startswith(f"{name} needs "), got.text
