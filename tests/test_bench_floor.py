"""``bench/floor.py``, the measuring instrument of ``bench.streaming``'s "where a PUT's time
goes": the worker it starts answers a ``PUT`` as the service does, stores the first batch
as usual, and then, by its mode, commits one row a batch or nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy

from bench.streaming import binary_body, service
from tests.storage_helpers import BACKENDS, PG_URL, database


def _floor_rows(url: str | None, data_dir: Path) -> int | None:
    """Rows of the floor's table (``None``: no such table)."""
    if url is None:
        engine = sqlalchemy.create_engine(f"sqlite:///{data_dir / 'evaluations.sqlite3'}")
        try:
            with engine.connect() as connection:
                if not sqlalchemy.inspect(connection).has_table("bench_floor"):
                    return None
                return int(
                    connection.execute(
                        sqlalchemy.text("SELECT count(*) FROM bench_floor")
                    ).scalar_one()
                )
        finally:
            engine.dispose()
    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        found = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".bench_floor',)
        ).fetchone()
        if not found or not found[0]:
            return None
        counted = connection.execute(f'SELECT count(*) FROM "{schema}".bench_floor').fetchone()
        assert counted is not None
        return int(counted[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["skip", "row"])
def test_the_floor_answers_as_the_service_and_stores_what_its_mode_says(
    backend: str, mode: str, tmp_path: Path
) -> None:
    body, headers = binary_body(16, 5, 0)
    with (
        database(backend, tmp_path) as db,
        service(db.url, db.data_dir, floor=mode) as (base, _),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        evaluate = client.post("/v1/evaluate", content=body, headers=headers)
        assert evaluate.status_code == 200, evaluate.text
        eid = client.post("/v1/evaluations", json={}).json()["id"]
        answers = []
        for i in range(3):
            put = client.put(f"/v1/evaluations/{eid}/batches/b{i}", content=body, headers=headers)
            assert put.status_code == 201, put.text
            answers.append(put.json())
        # The first batch is stored by the service: it fixes the evaluation's facts.
        assert client.get(f"/v1/evaluations/{eid}").json()["n_batches"] == 1
        rows = _floor_rows(db.url, db.data_dir)
    for i, answer in enumerate(answers):
        assert answer["batch_id"] == f"b{i}"
        assert answer["evaluation"] == {"n_batches": i + 1, "n_samples": 16 * (i + 1)}
        assert answer["losses"] == evaluate.json()["losses"]
        assert answer["metrics"] == evaluate.json()["metrics"]
    assert rows == (2 if mode == "row" else None)
