"""Durable storage of streaming evaluations (``/v1/evaluations``), with exact running totals.

No web imports here: the HTTP layer calls a :class:`Store`::

    store = Store.open(database_url, data_dir)   # LOSS_SERVICE_DATABASE_URL, _DATA_DIR;
                                                 # migrates to head, once per process
    evaluation = store.create_evaluation(owner, config, metadata)
    result = store.put_batch(owner, evaluation.id, batch_id, digest, stats, answer, n)
    future = store.submit_batch(...)  # the same, without waiting: a concurrent Future
    result.outcome      # CREATED 201, REPLAYED 200, CONFLICT / CLOSED 409, NOT_FOUND 404,
                        # MISMATCH 422 (see PutOutcome)
    store.get_totals(owner, evaluation.id).values      # exact totals, as float64 / int64

Modules, one concept each:

* :mod:`~service.storage.engine`: the database URL, SQLite's pragmas and ``BEGIN IMMEDIATE``;
* :mod:`~service.storage.schema`: the tables; :mod:`~service.storage.migrate` and
  ``migrations/``: alembic, run at startup, safe from many processes at once;
* :mod:`~service.storage.exact`: exact, order-independent sums of float64 arrays;
  :mod:`~service.storage.blobs`: those totals and a batch's arrays as bytes;
* :mod:`~service.storage.rows`: what the store returns; :mod:`~service.storage.store`:
  the :class:`Store` itself; :mod:`~service.storage.commits`: its committer, which
  stores puts in groups; :mod:`~service.storage.statements`: the committer's statements,
  on the driver's cursor;
* ``python -m service.storage upgrade|revision``: the schema by hand;
  ``python -m service.storage.benchmark``: what exact totals and puts cost.
"""

from service.storage.engine import (
    UNAVAILABLE,
    database_url,
    make_engine,
    parse_database_url,
    unavailable,
)
from service.storage.exact import ExactTotals, FixedSum
from service.storage.migrate import current_revision, head_revision, upgrade
from service.storage.rows import (
    BatchRow,
    EvaluationRow,
    InvalidCursor,
    Page,
    PutOutcome,
    PutResult,
    Setup,
    Status,
    Totals,
)
from service.storage.store import Store, new_id

__all__ = [
    "UNAVAILABLE",
    "BatchRow",
    "EvaluationRow",
    "ExactTotals",
    "FixedSum",
    "InvalidCursor",
    "Page",
    "PutOutcome",
    "PutResult",
    "Setup",
    "Status",
    "Store",
    "Totals",
    "current_revision",
    "database_url",
    "head_revision",
    "make_engine",
    "new_id",
    "parse_database_url",
    "unavailable",
    "upgrade",
]
