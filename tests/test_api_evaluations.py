"""``/v1/evaluations`` through the API, on SQLite and on PostgreSQL: the resource's
contract, idempotent batches, isolation by API key, every encoding, several heads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from service.main import create_app
from service.settings import Settings
from service.storage import Store
from service.storage.schema import batches, evaluations
from tests.conftest import SyncClient
from tests.storage_helpers import BACKENDS, database

RNG = np.random.default_rng(11)
C = 5
Y_PRED = RNG.dirichlet(np.ones(C), 24).astype(np.float32)
Y_TRUE = RNG.integers(0, C, 24)
WEIGHTS = RNG.uniform(0.5, 2.0, 24).astype(np.float32)


@pytest.fixture(params=BACKENDS)
def api(
    request: pytest.FixtureRequest, tmp_path: Path, make_client: Callable[..., SyncClient]
) -> Iterator[Callable[..., SyncClient]]:
    """A factory of clients of apps sharing one fresh database (the backend's)."""
    with database(request.param, tmp_path) as db:

        def make(**overrides: Any) -> SyncClient:
            return make_client(database_url=db.url, data_dir=db.data_dir, **overrides)

        yield make


def _batch(rows: slice, weights: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"y_true": Y_TRUE[rows].tolist(), "y_pred": Y_PRED[rows].tolist()}
    if weights:
        body["sample_weight"] = WEIGHTS[rows].tolist()
    return body


SETTINGS = {
    "metrics": ["accuracy", {"name": "f1_score", "average": "macro"}, "auc", "brier_score"],
    "reports": ["per_class", "confusion_matrix", "calibration"],
    "metadata": {"model": "m1"},
}


def _create(client: SyncClient, settings: dict[str, Any] = SETTINGS) -> str:
    r = client.post("/v1/evaluations", json=settings)
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/evaluations/{body['id']}"
    assert body["status"] == "open" and body["n_batches"] == 0 and body["n_samples"] == 0
    assert len(body["id"]) >= 32
    return str(body["id"])


def test_an_evaluation_equals_one_evaluate_over_its_batches(api: Any) -> None:
    client = api()
    eid = _create(client)
    for i, rows in enumerate((slice(0, 7), slice(7, 8), slice(8, 24))):
        r = client.put(f"/v1/evaluations/{eid}/batches/part-{i}", json=_batch(rows, True))
        assert r.status_code == 201, r.text
        assert r.json()["evaluation"]["n_batches"] == i + 1
    got = client.get(f"/v1/evaluations/{eid}").json()
    whole = {**_batch(slice(0, 24), True), **{k: v for k, v in SETTINGS.items() if k != "metadata"}}
    once = client.post("/v1/evaluate", json=whole).json()
    assert got["n_batches"] == 3 and got["n_samples"] == 24
    assert got["metadata"] == {"model": "m1"}
    assert got["label_encoding"] == once["label_encoding"] and got["n_classes"] == C
    assert got["resolved"] == once["resolved"]
    for kind in ("losses", "metrics"):
        assert got[kind].keys() == once[kind].keys()
        for key in got[kind]:
            np.testing.assert_allclose(got[kind][key], once[kind][key], rtol=1e-6)
    for name in ("per_class", "confusion_matrix", "calibration"):
        _assert_close(got["reports"][name], once["reports"][name], name)


def _assert_close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and a and isinstance(a[0], dict | list | str):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif a is None or isinstance(a, str):
        assert a == b, where
    else:
        np.testing.assert_allclose(
            np.asarray(a, float), np.asarray(b, float), rtol=1e-6, atol=1e-12, err_msg=where
        )


def test_batches_are_idempotent_and_a_reused_id_with_other_content_is_409(api: Any) -> None:
    client = api()
    eid = _create(client)
    first = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 8)))
    assert client.put(f"/v1/evaluations/{eid}/batches/b", json=_batch(slice(8, 11))).is_success
    again = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 8)))
    assert (first.status_code, again.status_code) == (201, 200)
    # The first answer again, its running counts as they were then (not 2 batches, 11).
    assert again.json() == first.json()
    assert again.json()["evaluation"] == {"n_batches": 1, "n_samples": 8}
    second = client.put(f"/v1/evaluations/{eid}/batches/b", json=_batch(slice(8, 11)))
    assert second.json()["evaluation"] == {"n_batches": 2, "n_samples": 11}
    other = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(8, 16)))
    assert other.status_code == 409
    assert "other content" in other.json()["detail"]
    assert client.get(f"/v1/evaluations/{eid}").json()["n_batches"] == 2


def _typed(a: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a).decode()}


def test_the_same_batch_in_any_encoding_is_the_same_batch(api: Any) -> None:
    client = api()
    eid = _create(client)
    url = f"/v1/evaluations/{eid}/batches/same"
    rows = slice(0, 10)
    assert client.put(url, json=_batch(rows)).status_code == 201
    typed = {"y_true": _typed(Y_TRUE[rows]), "y_pred": _typed(Y_PRED[rows])}
    assert client.put(url, json=typed).status_code == 200
    one_hot = {"y_true": np.eye(C)[Y_TRUE[rows]].tolist(), "y_pred": Y_PRED[rows].tolist()}
    assert client.put(url, json=one_hot).status_code == 200
    y_true, y_pred = Y_TRUE[rows].astype(np.int32), Y_PRED[rows]
    header = orjson.dumps(
        {
            "y_true": {"dtype": "int32", "shape": [10], "binary_data_size": y_true.nbytes},
            "y_pred": {"dtype": "float32", "shape": [10, C], "binary_data_size": y_pred.nbytes},
        }
    )
    binary = client.put(
        url,
        content=header + y_true.tobytes() + y_pred.tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert binary.status_code == 200, binary.text
    assert client.get(f"/v1/evaluations/{eid}").json()["n_samples"] == 10


def test_closed_evaluations_take_replays_but_no_new_batch(api: Any) -> None:
    client = api()
    eid = _create(client)
    assert (
        client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4))).status_code == 201
    )
    closed = client.post(f"/v1/evaluations/{eid}/close")
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert (
        client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4))).status_code == 200
    )
    new = client.put(f"/v1/evaluations/{eid}/batches/b", json=_batch(slice(4, 8)))
    assert new.status_code == 409 and "closed" in new.json()["detail"]


def test_settings_of_a_new_evaluation_are_json_and_other_types_get_a_415(api: Any) -> None:
    client = api()
    for headers in (
        {"content-type": "application/octet-stream", "inference-header-content-length": "2"},
        {"content-type": "text/plain"},
        {},
    ):
        r = client.post("/v1/evaluations", content=b"{}", headers=headers)
        assert r.status_code == 415, (headers, r.text)
        problem = r.json()
        assert problem["errors"][0]["loc"] == ["header", "content-type"]
        assert "expected application/json;" in problem["detail"]
        assert "octet-stream" not in problem["detail"].split("received")[0]
    with_charset = {"content-type": "application/json; charset=utf-8"}
    assert client.post("/v1/evaluations", content=b"{}", headers=with_charset).status_code == 201


def test_binary_targets_as_ints_or_floats_are_the_same_batch(api: Any) -> None:
    client = api()
    eid = _create(client, {})
    url = f"/v1/evaluations/{eid}/batches/b1"
    first = client.put(url, json={"y_true": [0, 1, 1], "y_pred": [0.2, 0.8, 0.6]})
    assert first.status_code == 201, first.text
    again = client.put(url, json={"y_true": [0.0, 1.0, 1.0], "y_pred": [0.2, 0.8, 0.6]})
    assert again.status_code == 200, again.text
    assert again.json()["losses"] == first.json()["losses"]
    other = client.put(url, json={"y_true": [1, 1, 1], "y_pred": [0.2, 0.8, 0.6]})
    assert other.status_code == 409


def test_soft_targets_in_either_encoding_give_one_evaluation_bit_for_bit(api: Any) -> None:
    # Two evaluations, fed the same soft batches in other orders and other encodings
    # (JSON lists, read as float64; typed float32): the same bits.
    client = api()
    rng = np.random.default_rng(5)
    targets = rng.dirichlet(np.ones(3), 12).astype(np.float32)
    settings = {"metrics": [{"name": "f1_score", "average": "micro"}, "brier_score"]}
    results = []
    for order, typed_first in (((0, 1, 2), True), ((2, 0, 1), False)):
        eid = _create(client, settings)
        for part in order:
            rows = slice(4 * part, 4 * part + 4)
            typed = (part == 0) == typed_first
            y_true = _typed(targets[rows]) if typed else targets[rows].tolist()
            body = {"y_true": y_true, "y_pred": Y_PRED[rows, :3].tolist()}
            r = client.put(f"/v1/evaluations/{eid}/batches/{part}", json=body)
            assert r.status_code == 201, r.text
        results.append(client.get(f"/v1/evaluations/{eid}").json()["metrics"])
    assert results[0] == results[1]


def test_sequences_and_rows_do_not_mix_in_one_evaluation(api: Any) -> None:
    # No one evaluate takes a (1, 2, 3) and a (2, 3) y_pred together: the first batch fixes
    # which. Rows of sequences of other lengths, and binary rows as (n,) or (n, 1), fit.
    client = api()
    steps = np.full((1, 2, 3), 1 / 3).tolist()
    eid = _create(client, {})
    put = client.put(f"/v1/evaluations/{eid}/batches/a", json={"y_true": [[0, 1]], "y_pred": steps})
    assert put.status_code == 201, put.text
    rows = {"y_true": [2, 1], "y_pred": steps[0]}
    refused = client.put(f"/v1/evaluations/{eid}/batches/b", json=rows)
    assert refused.status_code == 422, refused.text
    assert "sequences, shape (samples, steps, classes)" in refused.json()["detail"]
    longer = {"y_true": [[0, 1, 2]], "y_pred": np.full((1, 3, 3), 1 / 3).tolist()}
    assert client.put(f"/v1/evaluations/{eid}/batches/c", json=longer).status_code == 201
    got = client.get(f"/v1/evaluations/{eid}").json()
    assert (got["n_batches"], got["n_samples"]) == (2, 2)
    eid = _create(client, {})
    assert client.put(f"/v1/evaluations/{eid}/batches/a", json=rows).status_code == 201
    refused = client.put(
        f"/v1/evaluations/{eid}/batches/b", json={"y_true": [[0, 1]], "y_pred": steps}
    )
    assert refused.status_code == 422, refused.text
    eid = _create(client, {})
    flat = {"y_true": [0, 1], "y_pred": [0.2, 0.8]}
    column = {"y_true": [[0], [1]], "y_pred": [[0.3], [0.8]]}
    assert client.put(f"/v1/evaluations/{eid}/batches/a", json=flat).status_code == 201
    assert client.put(f"/v1/evaluations/{eid}/batches/b", json=column).status_code == 201


def test_first_batches_sent_at_once_in_two_label_encodings_are_both_counted(api: Any) -> None:
    # Two first batches at the same moment, the same classes, one with integer labels and
    # one with one-hot rows: each is evaluated before either fixed the evaluation's facts.
    # The one committed second is evaluated again under the facts the other fixed, as if
    # it had come second (then both are accepted), instead of a 422.
    client = api()
    sparse = _batch(slice(0, 4))
    one_hot = {"y_true": np.eye(C)[Y_TRUE[4:8]].tolist(), "y_pred": Y_PRED[4:8].tolist()}
    for _ in range(8):
        eid = _create(client, {})
        answers = client.concurrently(
            ("PUT", f"/v1/evaluations/{eid}/batches/s", {"json": sparse}),
            ("PUT", f"/v1/evaluations/{eid}/batches/h", {"json": one_hot}),
        )
        assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
        got = client.get(f"/v1/evaluations/{eid}").json()
        assert got["n_batches"] == 2 and got["n_samples"] == 8
        once = client.post(
            "/v1/evaluate", json={"y_true": Y_TRUE[:8].tolist(), "y_pred": Y_PRED[:8].tolist()}
        ).json()
        # The loss is named after the labels of the batch that fixed the facts (either
        # cross-entropy): the same value.
        [(name, value)] = got["losses"].items()
        assert name in ("sparse_categorical_crossentropy", "categorical_crossentropy")
        assert value == pytest.approx(once["losses"]["sparse_categorical_crossentropy"], rel=1e-6)
    # Classes that do differ are still refused, with what differs.
    eid = _create(client, {})
    assert client.put(f"/v1/evaluations/{eid}/batches/a", json=sparse).status_code == 201
    wider = {"y_true": [0, 1], "y_pred": [[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0]] * 2}
    refused = client.put(f"/v1/evaluations/{eid}/batches/b", json=wider)
    assert refused.status_code == 422 and "classes" in refused.json()["detail"], refused.text


def test_delete_then_404(api: Any) -> None:
    client = api()
    eid = _create(client)
    assert client.delete(f"/v1/evaluations/{eid}").status_code == 204
    for response in (
        client.get(f"/v1/evaluations/{eid}"),
        client.delete(f"/v1/evaluations/{eid}"),
        client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4))),
        client.get(f"/v1/evaluations/{eid}/batches"),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


def test_batch_history_and_lists_are_paginated(api: Any) -> None:
    client = api()
    ids = [_create(client) for _ in range(3)]
    eid = ids[0]
    for i in range(5):
        client.put(f"/v1/evaluations/{eid}/batches/b{i}", json=_batch(slice(i * 4, i * 4 + 4)))
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/v1/evaluations/{eid}/batches", params=query).json()
        seen += [b["batch_id"] for b in page["batches"]]
        assert all("received_at" in b and "losses" in b for b in page["batches"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"b{i}" for i in range(5)]
    listed = client.get("/v1/evaluations", params={"limit": 2}).json()
    assert [e["id"] for e in listed["evaluations"]] == ids[::-1][:2]
    rest = client.get("/v1/evaluations", params={"cursor": listed["next"]}).json()
    assert [e["id"] for e in rest["evaluations"]] == [ids[0]] and rest["next"] is None
    bad = client.get("/v1/evaluations", params={"cursor": "nonsense"})
    assert bad.status_code == 422
    # Well formed but past the database's 64-bit keys: a 422 too, never a 500.
    lists = ((f"/v1/evaluations/{eid}/batches", "batches"), ("/v1/evaluations", "evaluations"))
    for path, kind in lists:
        past = base64.urlsafe_b64encode(f"{kind}:{2**63}".encode()).rstrip(b"=").decode()
        refused = client.get(path, params={"cursor": past})
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["loc"] == ["query", "cursor"]


def test_an_evaluation_belongs_to_the_key_that_created_it(api: Any) -> None:
    client = api(api_keys="key-one,key-two")
    one = {"Authorization": "Bearer key-one"}
    two = {"Authorization": "Bearer key-two"}
    r = client.post("/v1/evaluations", json={}, headers=one)
    assert r.status_code == 201
    eid = r.json()["id"]
    assert client.get(f"/v1/evaluations/{eid}", headers=one).status_code == 200
    for response in (
        client.get(f"/v1/evaluations/{eid}", headers=two),
        client.put(f"/v1/evaluations/{eid}/batches/x", json=_batch(slice(0, 4)), headers=two),
        client.post(f"/v1/evaluations/{eid}/close", headers=two),
        client.delete(f"/v1/evaluations/{eid}", headers=two),
    ):
        assert response.status_code == 404
    assert client.get("/v1/evaluations", headers=two).json()["evaluations"] == []
    assert [e["id"] for e in client.get("/v1/evaluations", headers=one).json()["evaluations"]] == [
        eid
    ]
    assert client.get("/v1/evaluations").status_code == 401


def test_a_batch_that_does_not_fit_says_what_differs(api: Any) -> None:
    client = api()
    eid = _create(client, {})
    assert (
        client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4))).status_code == 201
    )
    fewer = {"y_true": [0, 1], "y_pred": [[0.5, 0.5], [0.2, 0.8]]}
    r = client.put(f"/v1/evaluations/{eid}/batches/b", json=fewer)
    assert r.status_code == 422
    assert "2 classes" in r.json()["detail"] and f"{C}" in r.json()["detail"]
    multi = {"y_true": [[1, 1, 0, 0, 0]], "y_pred": [Y_PRED[0].tolist()]}
    r = client.put(f"/v1/evaluations/{eid}/batches/c", json=multi)
    assert r.status_code == 422 and "multi" in r.json()["detail"]
    # A one-hot batch is of the same family as the first (integer labels): it fits.
    one_hot = {"y_true": np.eye(C)[Y_TRUE[4:8]].tolist(), "y_pred": Y_PRED[4:8].tolist()}
    assert client.put(f"/v1/evaluations/{eid}/batches/d", json=one_hot).status_code == 201
    # Heads sent to an evaluation of one head: said so, not called a setting.
    r = client.put(f"/v1/evaluations/{eid}/batches/e", json={"outputs": {"a": fewer}})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["outputs"]
    assert r.json()["detail"].startswith(
        "This evaluation was created without `outputs`: it has one head, and a batch is "
    )
    assert "received a batch of heads ['a']" in r.json()["detail"]


def test_bad_requests(api: Any) -> None:
    client = api()
    r = client.post("/v1/evaluations", json={"losses": ["nope"]})
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]
    r = client.post("/v1/evaluations", json={"y_true": [1]})
    assert r.status_code == 422 and "without arrays" in r.json()["detail"]
    r = client.post("/v1/evaluations", json={"metadata": {"a": 1}})
    assert r.status_code == 422
    eid = _create(client)
    r = client.put(f"/v1/evaluations/{eid}/batches/bad id!", json=_batch(slice(0, 2)))
    assert r.status_code == 422 and "batch id" in r.json()["detail"]
    r = client.put(f"/v1/evaluations/{eid}/batches/ok", json={**_batch(slice(0, 2)), "losses": []})
    assert r.status_code == 422 and "fixed at its creation" in r.json()["detail"]
    y_pred = np.full((1, C), np.nan, np.float32)
    r = client.put(
        f"/v1/evaluations/{eid}/batches/nan", json={"y_true": [0], "y_pred": _typed(y_pred)}
    )
    assert r.status_code == 422 and "non-finite" in r.json()["detail"]
    assert client.get(f"/v1/evaluations/{eid}").json()["n_batches"] == 0


def test_several_heads_with_loss_weights(api: Any) -> None:
    client = api()
    settings = {
        "outputs": {"kind": {"metrics": ["accuracy"]}, "tags": {"losses": ["binary_crossentropy"]}},
        "loss_weights": {"kind": 0.5},
    }
    eid = _create(client, settings)
    tags_true = (RNG.random((24, 3)) < 0.4).astype(float)
    tags_pred = RNG.random((24, 3))
    heads_once = {
        "outputs": {
            "kind": {"y_true": Y_TRUE.tolist(), "y_pred": Y_PRED.tolist(), "metrics": ["accuracy"]},
            "tags": {
                "y_true": tags_true.tolist(),
                "y_pred": tags_pred.tolist(),
                "losses": ["binary_crossentropy"],
            },
        },
        "loss_weights": {"kind": 0.5},
    }
    for i, rows in enumerate((slice(0, 10), slice(10, 24))):
        batch = {
            "outputs": {
                "kind": _batch(rows),
                "tags": {"y_true": tags_true[rows].tolist(), "y_pred": tags_pred[rows].tolist()},
            }
        }
        r = client.put(f"/v1/evaluations/{eid}/batches/h{i}", json=batch)
        assert r.status_code == 201, r.text
        assert set(r.json()["outputs"]) == {"kind", "tags"}
    got = client.get(f"/v1/evaluations/{eid}").json()
    once = client.post("/v1/evaluate", json=heads_once).json()
    np.testing.assert_allclose(got["total_loss"], once["total_loss"], rtol=1e-6)
    for head in ("kind", "tags"):
        # Each head's fields as evaluate gives them (its warnings are the evaluation's,
        # counted over batches at the top level).
        assert set(got["outputs"][head]) == set(once["outputs"][head]) - {"warnings"}
        assert got["outputs"][head]["n_samples"] == once["outputs"][head]["n_samples"] == 24
        for kind in ("losses", "metrics"):
            for key, value in once["outputs"][head][kind].items():
                np.testing.assert_allclose(got["outputs"][head][kind][key], value, rtol=1e-6)
    missing = client.put(
        f"/v1/evaluations/{eid}/batches/h9", json={"outputs": {"kind": _batch(slice(0, 2))}}
    )
    assert missing.status_code == 422 and "missing ['tags']" in missing.json()["detail"]
    tags = {"y_true": tags_true[:3].tolist(), "y_pred": tags_pred[:3].tolist()}
    uneven = {"outputs": {"kind": _batch(slice(0, 2)), "tags": tags}}
    r = client.put(f"/v1/evaluations/{eid}/batches/h8", json=uneven)
    assert r.status_code == 422 and "as many samples each" in r.json()["detail"], r.text
    assert client.get(f"/v1/evaluations/{eid}").json()["n_batches"] == 2


def test_a_head_name_that_would_share_running_totals_is_refused(api: Any) -> None:
    client = api()
    for head in ("", "h/loss"):
        r = client.post("/v1/evaluations", json={"outputs": {"h": {}, head: {}}})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == ["outputs", head]
        assert "with no `/` and no control character" in r.json()["detail"]


def test_a_heads_array_that_is_refused_is_named_once_under_its_head(api: Any) -> None:
    """An array of a head refused as read (not an array; over the elements limit) is named
    ``outputs.<head>.<field>``, as evaluate names it, whatever the encoding."""
    client = api(max_elements=50)
    evaluation = _create(client, {"outputs": {"a": {}, "b": {}}})
    good = {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]]}
    for batch, status, field in [
        ({"y_true": [0, 1], "y_pred": "x"}, 422, "y_pred"),
        ({"y_true": list(range(60)), "y_pred": [[0.5, 0.5]] * 60}, 413, "y_true"),
    ]:
        body = {"outputs": {"a": batch, "b": good}}
        put = client.put(f"/v1/evaluations/{evaluation}/batches/one", json=body)
        once = client.post("/v1/evaluate", json={"outputs": body["outputs"]})
        assert (put.status_code, once.status_code) == (status, status), put.text
        assert [e["loc"] for e in put.json()["errors"]] == [["outputs", "a", field]]
        assert put.json()["errors"] == once.json()["errors"]


def test_evaluations_past_their_time_to_live_are_deleted(api: Any) -> None:
    client = api(evaluation_ttl=1)
    old = _create(client)
    time.sleep(1.3)
    fresh = _create(client)  # creating (or listing) looks for expired evaluations
    assert client.get(f"/v1/evaluations/{old}").status_code == 404
    assert client.get(f"/v1/evaluations/{fresh}").status_code == 200


def test_a_worker_that_only_takes_batches_and_reads_results_expires_evaluations(
    api: Any,
) -> None:
    client = api(evaluation_ttl=1)
    eid = _create(client)
    assert (
        client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4))).status_code == 201
    )
    time.sleep(1.3)
    # No create or list in between: the PUT itself sweeps (its half time to live has
    # passed), so the batch does not bring the expired evaluation back.
    late = client.put(f"/v1/evaluations/{eid}/batches/b", json=_batch(slice(4, 8)))
    assert late.status_code == 404, late.text
    other = _create(client)
    time.sleep(1.3)
    assert client.get(f"/v1/evaluations/{other}").status_code == 404


def test_a_sweep_that_fails_does_not_fail_the_request(
    api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = api(evaluation_ttl=1)
    eid = _create(client)
    time.sleep(0.6)  # past half the time to live: the next request sweeps

    def locked(self: Store, before: Any) -> int:
        cause = sqlite3.OperationalError("database is locked")
        raise OperationalError("DELETE FROM evaluations ...", {}, cause)

    monkeypatch.setattr(Store, "expire", locked)
    with caplog.at_level("WARNING"):
        answer = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4)))
    assert answer.status_code == 201, answer.text
    assert "sweep of expired evaluations failed" in caplog.text


#: A PostgreSQL URL nothing listens at (port 1: connections are refused at once).
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/test"


def test_a_database_that_cannot_be_reached_is_a_503_with_retry_after(
    make_client: Callable[..., SyncClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a 500: the request was fine and may succeed later (the client retries it)."""
    client = make_client(database_url=UNREACHABLE, data_dir=tmp_path)
    with caplog.at_level("WARNING"):
        answers = [
            client.post("/v1/evaluations", json={}),
            client.get("/v1/evaluations"),
            client.put("/v1/evaluations/abc/batches/a", json=_batch(slice(0, 4))),
            client.get("/v1/evaluations/abc"),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "1"
        detail = answer.json()["detail"]
        assert detail.startswith("The evaluation store is unavailable (OperationalError")
        assert "send the request again after the time in Retry-After" in detail
    assert "the evaluation store is unavailable on POST /v1/evaluations" in caplog.text
    # Still up for what needs no database.
    assert client.post("/v1/evaluate", json=_batch(slice(0, 4))).status_code == 200


def _started(settings: Settings) -> Any:
    """The app's state once its lifespan's start ran (and its end after)."""
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(start())
    return app.state


def test_a_worker_opens_the_store_and_migrates_it_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _started(Settings(data_dir=tmp_path, gc_freeze=False))
    assert (tmp_path / "evaluations.sqlite3").is_file()
    # Disposed of at the worker's end: it takes no more batches.
    with pytest.raises(RuntimeError, match="the store is disposed"):
        state.store.put_batch(None, "e", "b", b"h", {}, {}, 0)
    # A database that cannot be reached now does not stop the start: logged, and opened
    # by the first request about evaluations after it can be (503 until then).
    with caplog.at_level("ERROR"):
        state = _started(Settings(database_url=UNREACHABLE, data_dir=tmp_path, gc_freeze=False))
    assert getattr(state, "store", None) is None
    assert "the evaluation store could not be opened at start" in caplog.text

    # Any other failure (a migration's, say) stops it.
    def failing(*args: Any, **kwargs: Any) -> Store:
        raise RuntimeError("a migration failed")

    monkeypatch.setattr(Store, "open", failing)
    with pytest.raises(RuntimeError, match="a migration failed"):
        _started(Settings(data_dir=tmp_path / "other", gc_freeze=False))


def test_a_store_opened_by_a_request_is_opened_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose start could not open the store opens it at the first request about
    evaluations (connecting, migrating: seconds, with a database slow to answer): in the
    thread pool, so that /healthz is served meanwhile. Here the opening waits until
    /healthz has been answered: on the event loop it would wait in vain."""
    healthz_answered = threading.Event()
    real_open = Store.open
    waited: list[bool] = []

    def slow_open(*args: Any, **kwargs: Any) -> Store:
        waited.append(healthz_answered.wait(timeout=3))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Store, "open", slow_open)
    app = create_app(Settings(data_dir=tmp_path, gc_freeze=False))

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope.get("path") == "/healthz":
            healthz_answered.set()

    async def both() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=recording)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def health_soon() -> httpx.Response:
                await asyncio.sleep(0.2)
                return await client.get("/healthz")

            return list(await asyncio.gather(client.get("/v1/evaluations"), health_soon()))

    listed, health = asyncio.run(both())
    assert listed.status_code == health.status_code == 200
    assert waited == [True]
    app.state.store.dispose()


def test_an_sqlite_lock_held_past_the_database_timeout_is_a_503(
    make_client: Callable[..., SyncClient], tmp_path: Path
) -> None:
    """Another process holding the write lock: the request waits database_timeout, then
    gets a 503 (before the client's own timeout gives up on it)."""
    client = make_client(data_dir=tmp_path, database_timeout=0.3)
    eid = _create(client)
    holder = sqlite3.connect(tmp_path / "evaluations.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        answer = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4)))
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert waited < 10  # the 30 s of SQLite's default, or the old fixed busy timeout
    again = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4)))
    assert again.status_code == 201, again.text


def test_a_statement_error_of_the_store_stays_a_500(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the database's state is a 503: an error of a statement itself (sqlite3 raises
    its OperationalError for "no such table" too) is the service's failure."""

    def broken(self: Store, *args: Any, **kwargs: Any) -> Any:
        cause = sqlite3.OperationalError("no such table: evaluations")
        cause.sqlite_errorcode = 1  # type: ignore[attr-defined]
        raise OperationalError("SELECT ...", {}, cause)

    monkeypatch.setattr(Store, "list_evaluations", broken)
    client = api(raise_app_exceptions=False)
    answer = client.get("/v1/evaluations")
    assert answer.status_code == 500, answer.text
    assert answer.json()["title"] == "Internal error"


def _puts(client: SyncClient) -> list[tuple[int, str, str | None]]:
    """A PUT of every kind against a fresh evaluation (new, replay, conflict, a big batch
    computed in the thread pool, bad ids and bodies, unknown and closed evaluations): each
    answer's status, body (the evaluation's id written as EID) and content type."""
    eid = _create(client)
    batches = f"/v1/evaluations/{eid}/batches"
    big = np.random.default_rng(5).dirichlet(np.ones(C), 3000).astype(np.float32)
    requests: list[tuple[str, dict[str, Any]]] = [
        (f"{batches}/a", {"json": _batch(slice(0, 4))}),
        (f"{batches}/a", {"json": _batch(slice(0, 4))}),
        (f"{batches}/a", {"json": _batch(slice(0, 5))}),
        (f"{batches}/big", {"json": {"y_true": [1] * 3000, "y_pred": big.tolist()}}),
        (f"{batches}/not%20an%20id", {"json": _batch(slice(0, 4))}),
        (f"{batches}/{'b' * 129}", {"json": _batch(slice(0, 4))}),
        (f"/v1/evaluations/{'e' * 65}/batches/a", {"json": _batch(slice(0, 4))}),
        ("/v1/evaluations/nosuchevaluation/batches/a", {"json": _batch(slice(0, 4))}),
        (f"{batches}/c", {"content": b"{}", "headers": {"content-type": "text/plain"}}),
        (f"{batches}/c", {"content": b"{", "headers": {"content-type": "application/json"}}),
        (f"{batches}/c", {"json": {"y_true": [0, 1], "y_pred": [[0.5, 0.5], [0.2, 0.8]]}}),
        (f"{eid}/close", {}),
        (f"{batches}/d", {"json": _batch(slice(4, 8))}),
        (f"{batches}/a", {"json": _batch(slice(0, 4))}),
    ]
    answers = []
    for url, options in requests:
        if url.endswith("/close"):
            assert client.post(f"/v1/evaluations/{url}").status_code == 200
            continue
        r = client.put(url, **options)
        answers.append((r.status_code, r.text.replace(eid, "EID"), r.headers.get("content-type")))
    return answers


def test_a_put_is_answered_directly_as_its_route_answers(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.api.routes import evaluations

    serve_put = evaluations.serve_put
    served = declined = 0

    async def counted(*args: Any) -> bool:
        nonlocal served
        served += 1
        return await serve_put(*args)

    async def decline(*args: Any) -> bool:
        nonlocal declined
        declined += 1
        return False

    with monkeypatch.context() as patched:
        patched.setattr(evaluations, "serve_put", counted)
        direct = _puts(api())
    with monkeypatch.context() as patched:
        patched.setattr(evaluations, "serve_put", decline)
        routed = _puts(api())
    # Every PUT reached the direct path; the route answered those it declined (ids too long).
    assert (served, declined) == (13, 13)
    statuses = [status for status, _, _ in direct]
    assert statuses == [201, 200, 409, 201, 422, 422, 422, 404, 415, 400, 422, 409, 200]
    assert direct == routed


def _config(connection: Any, evaluation_id: str) -> dict[str, Any]:
    """The evaluation's settings as stored."""
    config: dict[str, Any] = connection.execute(
        select(evaluations.c.config).where(evaluations.c.id == evaluation_id)
    ).scalar_one()
    return config


def _sha256_of_rows(n: int) -> bytes:
    """The SHA-256 content hash of the batch of the first ``n`` rows, as stored: the
    head's name ("" for one head), then each array's name, dtype, shape and bytes."""
    expected = hashlib.sha256(b"head:;")
    for name, array in (
        ("y_pred", Y_PRED[:n].astype(np.float32)),
        ("y_true", Y_TRUE[:n].astype(np.int64)),
    ):
        expected.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        expected.update(array.tobytes())
    return expected.digest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_service_set_to_sha256_hashes_its_new_evaluations_with_it(
    backend: str, tmp_path: Path, make_client: Callable[..., SyncClient]
) -> None:
    # While replicas of an earlier version share the database, new evaluations are
    # hashed the way those replicas compare: a retry on either is the first answer.
    with database(backend, tmp_path) as db:
        client = make_client(database_url=db.url, data_dir=db.data_dir, content_hash="sha256")
        eid = _create(client, {})
        body = _batch(slice(0, 8))
        assert client.put(f"/v1/evaluations/{eid}/batches/a", json=body).status_code == 201
        store = Store.open(db.url, db.data_dir, migrate=False)
        try:
            with store.engine.begin() as connection:
                assert _config(connection, eid)["content_hash"] == "sha256"
            page = store.list_batches(None, eid)
            assert page is not None
            assert page.items[0].content_hash == _sha256_of_rows(8)
        finally:
            store.dispose()
        # The hash is the evaluation's: a replica under the default compares with it too.
        other = make_client(database_url=db.url, data_dir=db.data_dir)
        assert other.put(f"/v1/evaluations/{eid}/batches/a", json=body).status_code == 200
        again = other.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(8, 16)))
        assert again.status_code == 409


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_evaluation_created_before_the_hash_was_a_setting_keeps_sha256(
    backend: str, tmp_path: Path, make_client: Callable[..., SyncClient]
) -> None:
    # Its batches were stored with SHA-256 hashes: a batch sent again must be compared
    # with the same hash, so the evaluation goes on with it.
    with database(backend, tmp_path) as db:
        client = make_client(database_url=db.url, data_dir=db.data_dir)
        eid = _create(client, {})
        store = Store.open(db.url, db.data_dir, migrate=False)
        try:
            with store.engine.begin() as connection:
                config = _config(connection, eid)
                assert config.pop("content_hash") == "xxh3-128"
                connection.execute(
                    update(evaluations).where(evaluations.c.id == eid).values(config=config)
                )
            body = _batch(slice(0, 8))
            assert client.put(f"/v1/evaluations/{eid}/batches/a", json=body).status_code == 201
            page = store.list_batches(None, eid)
            assert page is not None
            assert page.items[0].content_hash == _sha256_of_rows(8)
            typed = {"y_true": _typed(Y_TRUE[:8]), "y_pred": _typed(Y_PRED[:8])}
            again = client.put(f"/v1/evaluations/{eid}/batches/a", json=typed)
            assert again.status_code == 200, again.text
            other = client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(8, 16)))
            assert other.status_code == 409
        finally:
            store.dispose()


_HUGE_BATCH = {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.8, 0.2]]}


def test_a_float64_batch_whose_weighted_sums_overflow_is_a_422_and_not_stored(api: Any) -> None:
    # Weights within float64 whose sums are not: the batch's statistics cannot be summed
    # exactly, nor its values computed. A 422 naming the overflow, never a 500.
    client = api()
    for settings in ({"dtype": "float64"}, {**SETTINGS, "dtype": "float64"}):
        eid = _create(client, settings)
        body = {**_HUGE_BATCH, "sample_weight": [1e308, 1e308]}
        r = client.put(f"/v1/evaluations/{eid}/batches/a", json=body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        detail = r.json()["detail"]
        assert "cannot be computed" in detail and "overflow" in detail, detail
        assert "received `sample_weight` values up to 1e+308" in detail, detail
        got = client.get(f"/v1/evaluations/{eid}").json()
        assert got["n_batches"] == 0 and got["metrics"] == {}


def test_a_batch_that_would_take_the_running_totals_past_the_limit_is_refused(
    api: Any,
) -> None:
    # Each batch alone is within the limit on the running totals (2**1000 ≈ 1.07e301,
    # within which the results are computed without overflowing); two are not. The
    # second is a 422 and nothing of it is stored: what is read back stays right.
    client = api()
    settings = {"dtype": "float64", "metrics": ["accuracy", "precision", "brier_score"]}
    eid = _create(client, settings)
    body = {**_HUGE_BATCH, "sample_weight": [3e300, 3e300]}
    first = client.put(f"/v1/evaluations/{eid}/batches/a", json=body)
    assert first.status_code == 201, first.text
    second = client.put(f"/v1/evaluations/{eid}/batches/b", json=body)
    assert second.status_code == 422, second.text
    detail = second.json()["detail"]
    assert "would take the evaluation's running total" in detail, detail
    assert "1.07e+301" in detail and "it was not stored" in detail
    # The accepted batch is still answered as a replay; the refused one was not stored.
    assert client.put(f"/v1/evaluations/{eid}/batches/a", json=body).status_code == 200
    got = client.get(f"/v1/evaluations/{eid}").json()
    assert got["n_batches"] == 1 and got["n_samples"] == 2
    assert got["metrics"] == first.json()["metrics"]
    assert got["metrics"]["accuracy"] == 0.5 and got["metrics"]["precision"] == 0.5
    assert got["losses"] == pytest.approx(first.json()["losses"], rel=1e-12)
    page = client.get(f"/v1/evaluations/{eid}/batches").json()
    assert [b["batch_id"] for b in page["batches"]] == ["a"]
    # Batches each of weights 1e308 (finite) whose totals would overflow float64: every
    # one is refused, and the evaluation never reads as a wrong number.
    eid = _create(client, settings)
    for batch_id in ("x", "y", "z"):
        one_row = {"y_true": [0], "y_pred": [[0.9, 0.1]], "sample_weight": [1e308]}
        r = client.put(f"/v1/evaluations/{eid}/batches/{batch_id}", json=one_row)
        assert r.status_code == 422, r.text
    got = client.get(f"/v1/evaluations/{eid}").json()
    assert got["n_batches"] == 0 and got["metrics"] == {}


def _batches_counted(outcome: str) -> float:
    sample = REGISTRY.get_sample_value(
        "loss_service_evaluation_batches_total", {"outcome": outcome}
    )
    return sample or 0.0


def test_batches_to_no_evaluation_or_that_do_not_fit_are_counted(api: Any) -> None:
    """Both are answered before the store sees the batch (404, 422): counted there."""
    client = api()
    eid = _create(client)
    assert (
        client.put(f"/v1/evaluations/{eid}/batches/a", json=_batch(slice(0, 4))).status_code == 201
    )
    before = {o: _batches_counted(o) for o in ("not_found", "mismatch", "created")}
    gone = client.put("/v1/evaluations/" + "0" * 32 + "/batches/a", json=_batch(slice(0, 4)))
    assert gone.status_code == 404
    other = {"y_true": [[1, 1, 0]], "y_pred": [[0.5, 0.4, 0.1]]}  # multi-hot: another family
    r = client.put(f"/v1/evaluations/{eid}/batches/b", json=other)
    assert r.status_code == 422 and "does not fit the evaluation" in r.json()["detail"], r.text
    assert _batches_counted("not_found") == before["not_found"] + 1
    assert _batches_counted("mismatch") == before["mismatch"] + 1
    assert _batches_counted("created") == before["created"]


def test_a_stored_batchs_warnings_are_counted_once(api: Any) -> None:
    client = api()
    eid = _create(client)
    code = "probabilities_renormalized"
    before = REGISTRY.get_sample_value("loss_service_warnings_total", {"code": code}) or 0.0
    body = {"y_true": [0, 1], "y_pred": [[0.5, 0.2], [0.3, 0.3]]}  # rows do not sum to 1
    first = client.put(f"/v1/evaluations/{eid}/batches/w", json=body)
    assert first.status_code == 201 and code in {w["code"] for w in first.json()["warnings"]}
    assert client.put(f"/v1/evaluations/{eid}/batches/w", json=body).status_code == 200
    after = REGISTRY.get_sample_value("loss_service_warnings_total", {"code": code})
    assert after == before + 1


def test_an_id_holding_a_nul_is_no_evaluation(api: Any) -> None:
    """No id the service makes holds one (PostgreSQL's text cannot): a 404 on every route
    that names an evaluation, on both stores."""
    client = api()
    base = "/v1/evaluations/a%00b"
    for method, path, body in [
        ("GET", base, None),
        ("GET", f"{base}/batches", None),
        ("PUT", f"{base}/batches/x", _batch(slice(0, 4))),
        ("POST", f"{base}/close", None),
        ("DELETE", base, None),
        ("GET", f"{base}/report", None),
        ("GET", f"{base}/charts/loss_history.svg", None),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["errors"][0]["loc"] == ["path", "id"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_stored_before_its_running_count_was_kept_replays_with_a_summed_one(
    backend: str, tmp_path: Path, make_client: Callable[..., SyncClient]
) -> None:
    with database(backend, tmp_path) as db:
        client = make_client(database_url=db.url, data_dir=db.data_dir)
        eid = _create(client, {})
        sizes = {"a": slice(0, 8), "b": slice(8, 11), "c": slice(11, 16)}
        first = {
            batch_id: client.put(f"/v1/evaluations/{eid}/batches/{batch_id}", json=_batch(rows))
            for batch_id, rows in sizes.items()
        }
        assert first["b"].json()["evaluation"] == {"n_batches": 2, "n_samples": 11}
        store = Store.open(db.url, db.data_dir, migrate=False)
        try:
            with store.engine.begin() as connection:
                connection.execute(update(batches).values(samples_through=None))
        finally:
            store.dispose()
        for batch_id, rows in sizes.items():
            again = client.put(f"/v1/evaluations/{eid}/batches/{batch_id}", json=_batch(rows))
            assert again.status_code == 200, again.text
            assert again.json() == first[batch_id].json()


def test_a_batch_that_would_make_total_loss_overflow_is_refused_unstored(api: Any) -> None:
    # Each batch's weighted loss is finite (1.5e308 × 0.22), their sum is not: the batch
    # that tips it is a 422 and not stored, so GET still reads the evaluation.
    client = api()
    settings = {
        "outputs": {
            "a": {"losses": [{"name": "sparse_categorical_crossentropy", "reduction": "sum"}]}
        },
        "loss_weights": {"a": 1.5e308},
    }
    eid = _create(client, settings)
    batch = {"outputs": {"a": {"y_true": [1], "y_pred": [[0.1, 0.8, 0.1]]}}}
    codes = [
        client.put(f"/v1/evaluations/{eid}/batches/x{i}", json=batch).status_code for i in range(8)
    ]
    accepted = codes.index(422)
    assert accepted >= 1 and codes[accepted:] == [422] * (8 - accepted), codes
    refused = client.put(f"/v1/evaluations/{eid}/batches/x9", json=batch)
    assert "`total_loss`" in refused.json()["detail"] and "not stored" in refused.json()["detail"]
    got = client.get(f"/v1/evaluations/{eid}")
    assert got.status_code == 200, got.text
    assert got.json()["n_batches"] == accepted
    assert np.isfinite(got.json()["total_loss"])
    # A replay of an accepted batch is still answered.
    assert client.put(f"/v1/evaluations/{eid}/batches/x0", json=batch).status_code == 200
