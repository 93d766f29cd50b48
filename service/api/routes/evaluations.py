"""``/v1/evaluations``: streaming evaluations, fed batch by batch, durable and exact.

An evaluation is created with evaluate's settings (no arrays), then receives batches by
``PUT`` under ids the caller chooses: the same id again with the same content is answered
as the first time and counted once; with other content it is a 409. Reading it gives the
evaluate response over every accepted batch (:mod:`service.streaming`), from totals the
store keeps exactly (:mod:`service.storage`). A batch is acknowledged only once it is
committed.

With API keys, an evaluation belongs to the key that created it: for any other key it
does not exist (404), and lists show only one's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from service.api import schemas
from service.api.body import read_body
from service.api.compute import answer, check_counts, compute, decode
from service.api.error_responses import ERROR_RESPONSES
from service.api.openapi_body import request_body
from service.api.responses import json_response
from service.api.waiting import completion
from service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ServiceError,
    UnsupportedMediaType,
    invalid,
)
from service.infra.prometheus import record_warnings
from service.settings import Settings
from service.storage import EvaluationRow, PutOutcome, PutResult, Setup, Store
from service.storage.rows import BATCH_ID, InvalidCursor
from service.streaming import (
    Mismatch,
    evaluate_batch,
    parse_settings,
    results,
    total_loss_guard,
)
from service.wire import JSON_MEDIA_TYPE

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])

EVALUATIONS = Counter("loss_service_evaluations_created", "Streaming evaluations created.")
BATCHES = Counter(
    "loss_service_evaluation_batches",
    "Batches put to streaming evaluations, by outcome (created, replayed, conflict, closed, "
    "not_found, mismatch).",
    ["outcome"],
)
for _outcome in PutOutcome:
    BATCHES.labels(_outcome.value)

#: Expired evaluations are looked for at most this often (seconds) per process (or half
#: the time to live, if shorter), by the first request about evaluations once due.
_EXPIRE_EVERY_S = 600.0

#: The longest path parameters the routes take (longer ones are a 422 of the route's).
_EVALUATION_ID_MAX = 64
_BATCH_ID_MAX = 128
EvaluationId = Annotated[
    str, Path(description="The evaluation's id.", max_length=_EVALUATION_ID_MAX)
]
BatchId = Annotated[
    str,
    Path(
        description="The caller's id of the batch: 1–128 characters of A-Z a-z 0-9 . _ : -",
        max_length=_BATCH_ID_MAX,
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
Cursor = Annotated[str | None, Query(description="The `next` of the previous page.")]


_store_lock = threading.Lock()


def open_store(state: Any) -> Store:
    """The worker's store (``state``: the app's), opened and its schema migrated on first
    use: at the worker's start, or by the first request about evaluations after a start
    that could not reach the database."""
    store: Store | None = getattr(state, "store", None)
    if store is None:
        with _store_lock:
            store = getattr(state, "store", None)
            if store is None:
                settings: Settings = state.settings
                url = settings.database_url
                store = Store.open(
                    None if url is None else url.get_secret_value(),
                    settings.data_dir,
                    busy_timeout=settings.database_timeout,
                    setup_cache=settings.evaluation_cache_size,
                    max_group=settings.max_batches_per_commit,
                    written_bytes=settings.written_totals_bytes,
                )
                state.store = store
    return store


def _expiry_due(request: Request) -> bool:
    """Whether this worker's sweep of expired evaluations is due (and, if so, it is now
    counted as done: one request sweeps, those at the same moment go on)."""
    state = request.app.state
    settings: Settings = state.settings
    every = min(_EXPIRE_EVERY_S, settings.evaluation_ttl.total_seconds() / 2)
    now = time.monotonic()
    if now - getattr(state, "expired_at", -every) < every:
        return False
    state.expired_at = now
    return True


async def _swept(request: Request, evaluation_id: str | None = None) -> Store:
    """The worker's store, after deleting the evaluations past their time to live when
    this worker's sweep is due (every half time to live, at most every 10 minutes): any
    request about evaluations may sweep, so a worker that only takes batches and reads
    results expires them too. ``evaluation_id``: the one the request names; an id no
    evaluation can have (holding a NUL, which PostgreSQL's text cannot) is a 404 here."""
    if evaluation_id is not None and "\x00" in evaluation_id:
        raise _not_found(evaluation_id)
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        # Not opened at the worker's start (the database could not be reached then): its
        # connecting and migrating wait in the thread pool, the event loop serves on.
        store = await anyio.to_thread.run_sync(open_store, request.app.state)
    if _expiry_due(request):
        ttl = request.app.state.settings.evaluation_ttl
        try:
            await anyio.to_thread.run_sync(lambda: store.expire(datetime.now(UTC) - ttl))
        except Exception:
            # The request is not the sweep's: it goes on, and the next sweep tries again
            # (a database busy past its timeout, say).
            log.warning("the sweep of expired evaluations failed", exc_info=True)
    return store


def _owner(request: Request) -> str | None:
    """Whose evaluations these are: a digest of the API key (the middleware checked it),
    or nobody's when the service runs without keys."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return None
    _, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return hashlib.sha256(token.strip().encode()).hexdigest()[:32]


def _summary(row: EvaluationRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "n_batches": row.n_batches,
        "n_samples": row.n_samples,
        "metadata": row.metadata,
    }


def _not_found(evaluation_id: str) -> ServiceError:
    return NotFound.at(
        ("path", "id"),
        f"No evaluation {evaluation_id[:64]!r}: expected the id of an evaluation of yours "
        "(POST /v1/evaluations creates one; evaluations not updated for the time to live "
        "are deleted).",
    )


async def _json_body(request: Request) -> Any:
    """The settings of a new evaluation: a JSON body (any other type is a 415, before a
    byte of the body is read)."""
    declared = request.headers.get("content-type") or ""
    if declared.split(";")[0].strip().lower() != JSON_MEDIA_TYPE:
        received = f"Content-Type {declared[:64]!r}" if declared.strip() else "no Content-Type"
        raise UnsupportedMediaType.at(
            ("header", "content-type"),
            f"An evaluation's settings are a JSON object: expected {JSON_MEDIA_TYPE}; "
            f"received {received}.",
        )
    raw = await read_body(request)
    try:
        settings: Settings = request.app.state.settings
        return decode(raw, settings)
    finally:
        raw.release()


@router.post(
    "",
    operation_id="create_evaluation",
    status_code=201,
    response_model=None,
    responses={201: {"model": schemas.EvaluationSummary}, **ERROR_RESPONSES},
    openapi_extra=request_body(schemas.EvaluationRequest),
)
async def create_evaluation(request: Request) -> Response:
    """Create a streaming evaluation: evaluate's settings, no arrays; batches follow."""
    document = await _json_body(request)
    settings: Settings = request.app.state.settings
    check_counts(document, settings)
    config, metadata = parse_settings(document, settings.content_hash)
    store = await _swept(request)
    owner = _owner(request)

    row = await anyio.to_thread.run_sync(lambda: store.create_evaluation(owner, config, metadata))
    EVALUATIONS.inc()
    response = json_response(_summary(row), 201)
    response.headers["Location"] = f"/v1/evaluations/{row.id}"
    return response


@router.get(
    "",
    operation_id="list_evaluations",
    response_model=schemas.EvaluationList,
    responses=ERROR_RESPONSES,
)
async def list_evaluations(request: Request, limit: Limit = 50, cursor: Cursor = None) -> Response:
    """Your evaluations, newest first, a page at a time."""
    store = await _swept(request)
    owner = _owner(request)

    try:
        page = await anyio.to_thread.run_sync(
            lambda: store.list_evaluations(owner, limit=limit, cursor=cursor)
        )
    except InvalidCursor:
        raise _invalid_cursor(cursor) from None
    return json_response({"evaluations": [_summary(r) for r in page.items], "next": page.next})


def _invalid_cursor(cursor: str | None) -> ServiceError:
    shown = cursor if cursor is None or len(cursor) <= 80 else cursor[:80] + "…"
    return invalid(
        ("query", "cursor"),
        f"`cursor` is not one this list handed out (the `next` of a previous page); "
        f"received {shown!r}.",
    )


def _batch_id(batch_id: str) -> None:
    if BATCH_ID.fullmatch(batch_id) is None:
        raise invalid(
            ("path", "batch_id"),
            f"A batch id is 1–128 characters of A-Z a-z 0-9 . _ : -; received {batch_id[:140]!r}.",
        )


#: The path of a batch, as the router and the direct path (:func:`serve_put`) name it.
BATCH_PATH = "/v1/evaluations/{evaluation_id}/batches/{batch_id}"
#: The route takes any rest of the path as the batch id (``w1/``, ``w1%2F``, nothing), so
#: that an id with a slash is a 422 naming it, never another batch's path or a redirect.
_BATCH_ROUTE = BATCH_PATH.replace("{batch_id}", "{batch_id:path}")


@router.put(
    _BATCH_ROUTE.removeprefix(router.prefix),
    operation_id="put_batch",
    response_model=None,
    responses={
        200: {"model": schemas.BatchResponse, "description": "The batch was already accepted."},
        201: {"model": schemas.BatchResponse, "description": "Accepted and stored."},
        **ERROR_RESPONSES,
    },
    openapi_extra=request_body(schemas.BatchRequest),
)
async def put_batch(request: Request, evaluation_id: EvaluationId, batch_id: BatchId) -> Response:
    """Send one batch (any encoding): 201 once stored, 200 for a replay, 409 otherwise."""
    return await _put(request, evaluation_id, batch_id)


async def serve_put(scope: Scope, receive: Receive, send: Send, params: Mapping[str, str]) -> bool:
    """``PUT`` of a batch straight from the ASGI scope (the middleware's direct path),
    answered as :func:`put_batch` answers it; path parameters over their length are left
    to the route (``False``), whose validation words the 422."""
    evaluation_id, batch_id = params["evaluation_id"], params["batch_id"]
    if len(evaluation_id) > _EVALUATION_ID_MAX or len(batch_id) > _BATCH_ID_MAX:
        return False

    async def respond(request: Request) -> Response:
        return await _put(request, evaluation_id, batch_id)

    await answer(respond, scope, receive, send)
    return True


async def _put(request: Request, evaluation_id: str, batch_id: str) -> Response:
    """Evaluate the batch where its size says (on the event loop when small, as
    ``POST /v1/evaluate`` does; one of an evaluation's first batches in the thread pool),
    then wait for the store's commit of it."""
    _batch_id(batch_id)
    store = await _swept(request, evaluation_id)
    owner = _owner(request)
    settings: Settings = request.app.state.settings
    raw = await read_body(request)
    try:
        setup = store.known_setup(owner, evaluation_id) or await anyio.to_thread.run_sync(
            store.get_setup, owner, evaluation_id
        )
        if setup is None:
            BATCHES.labels(PutOutcome.NOT_FOUND.value).inc()
            raise _not_found(evaluation_id)
    except BaseException:
        # compute() releases the body from here on.
        raw.release()
        raise

    def submit(fixed: Setup, document: Any, max_elements: int) -> Future[PutResult]:
        outcome = evaluate_batch(fixed.config, document, fixed.facts, max_elements)
        return store.submit_batch(
            owner,
            evaluation_id,
            batch_id,
            outcome.content_hash,
            outcome.stats,
            {"batch_id": batch_id, **outcome.answer},
            outcome.n_samples,
            # Facts already fixed were checked by evaluate_batch: nothing to store or compare.
            facts=outcome.facts if fixed.facts is None else None,
            warnings=outcome.warning_codes,
            guard=total_loss_guard(fixed.config, fixed.facts or outcome.facts),
            # A batch evaluated in the thread pool may commit there, when no commit runs;
            # one evaluated on the event loop leaves it to the commit thread.
            lead=not _on_event_loop(),
        )

    first = setup.facts is None

    def evaluate_and_submit(document: Any, max_elements: int) -> Future[PutResult]:
        future = submit(setup, document, max_elements)
        if not first:
            return future
        # One of the evaluation's first batches, in the thread pool: another may have
        # fixed the facts since this one was evaluated without them (both sent at once).
        # Then it is evaluated again under them, as if it had come second: accepted if
        # it fits (another label encoding of the same classes, say), else a 422 saying
        # what differs.
        if future.result().outcome is not PutOutcome.MISMATCH:
            return future
        fixed = store.get_setup(owner, evaluation_id)
        if fixed is None:
            raise _not_found(evaluation_id)  # deleted meanwhile
        return submit(fixed, document, max_elements) if fixed.facts is not None else future

    # A first batch is evaluated in the thread pool, which may wait for its commit: it
    # holds a pool thread that long, and its body's memory reservation, so that a second
    # evaluation of it stays within the memory budget (only until the facts are fixed).
    try:
        result = await completion(
            await compute(raw, settings, evaluate_and_submit, inline=not first)
        )
    except Mismatch:
        # Told by the batch's evaluation against the fixed facts (the store tells the
        # others, and a batch that raced the first one: PutOutcome.MISMATCH below).
        BATCHES.labels(PutOutcome.MISMATCH.value).inc()
        raise
    BATCHES.labels(result.outcome.value).inc()
    counts = None
    if result.outcome is PutOutcome.REPLAYED and result.batch is not None:
        # The first answer again: the running counts as they were once it was counted.
        seq, samples = result.batch.seq, result.batch.samples_through
        if samples is None:  # a batch stored before the count was kept with it
            samples = await anyio.to_thread.run_sync(
                lambda: store.samples_through(owner, evaluation_id, seq)
            )
        if samples is None:
            raise _not_found(evaluation_id)  # deleted meanwhile
        counts = {"n_batches": seq, "n_samples": samples}
    return _put_answer(result, evaluation_id, batch_id, counts)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _put_answer(
    result: Any, evaluation_id: str, batch_id: str, counts: dict[str, int] | None = None
) -> Response:
    outcome = result.outcome
    if outcome is PutOutcome.NOT_FOUND:
        raise _not_found(evaluation_id)
    if outcome is PutOutcome.CONFLICT:
        raise Conflict.at(
            ("path", "batch_id"),
            f"Batch {batch_id!r} was accepted before with other content: a batch id names "
            "one batch; expected the same content again (a retry) or a new batch id.",
        )
    if outcome is PutOutcome.CLOSED:
        raise Conflict.at(
            ("path", "id"),
            f"Evaluation {evaluation_id!r} is closed: it takes no new batch (a batch it "
            "accepted may still be sent again).",
        )
    if outcome is PutOutcome.MISMATCH:
        raise InvalidInput(
            "The batch does not fit the evaluation: its labels' family, classes or heads "
            "differ from those its first batch fixed.",
        )
    evaluation = result.evaluation
    if counts is None:
        counts = {"n_batches": evaluation.n_batches, "n_samples": evaluation.n_samples}
    answer = {**result.answer, "evaluation": counts}
    if outcome is PutOutcome.CREATED:
        # Counted once a batch (its answer's warnings hold every head's): a replay's are
        # those of a batch already counted.
        record_warnings(w["code"] for w in answer["warnings"])
    return json_response(answer, 201 if outcome is PutOutcome.CREATED else 200)


@router.get(
    "/{evaluation_id}",
    operation_id="get_evaluation",
    response_model=None,
    responses={200: {"model": schemas.EvaluationResults}, **ERROR_RESPONSES},
)
async def get_evaluation(request: Request, evaluation_id: EvaluationId) -> Response:
    """The evaluation: its counts, and the evaluate response over every batch so far."""
    store = await _swept(request, evaluation_id)
    owner = _owner(request)
    return json_response(await anyio.to_thread.run_sync(_results, store, owner, evaluation_id))


def _results(store: Store, owner: str | None, evaluation_id: str) -> dict[str, Any]:
    totals = store.get_totals(owner, evaluation_id)
    if totals is None:
        raise _not_found(evaluation_id)
    row = totals.evaluation
    return {
        **_summary(row),
        **results(row.config, row.facts, totals.values, row.warnings, row.n_samples),
    }


@router.get(
    "/{evaluation_id}/batches",
    operation_id="list_batches",
    response_model=schemas.BatchList,
    responses=ERROR_RESPONSES,
)
async def list_batches(
    request: Request, evaluation_id: EvaluationId, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    """Each batch's id, samples, arrival time and own values, in arrival order."""
    store = await _swept(request, evaluation_id)
    owner = _owner(request)
    try:
        page = await anyio.to_thread.run_sync(
            lambda: store.list_batches(owner, evaluation_id, limit=limit, cursor=cursor)
        )
    except InvalidCursor:
        raise _invalid_cursor(cursor) from None
    if page is None:
        raise _not_found(evaluation_id)
    items = [
        {**b.answer, "batch_id": b.batch_id, "received_at": b.received_at.isoformat()}
        for b in page.items
    ]
    return json_response({"batches": items, "next": page.next})


@router.post(
    "/{evaluation_id}/close",
    operation_id="close_evaluation",
    response_model=schemas.EvaluationSummary,
    responses=ERROR_RESPONSES,
)
async def close_evaluation(request: Request, evaluation_id: EvaluationId) -> Response:
    """No more batches: a new one is then a 409 (a replay of an accepted one still 200)."""
    store = await _swept(request, evaluation_id)
    owner = _owner(request)
    row = await anyio.to_thread.run_sync(lambda: store.close_evaluation(owner, evaluation_id))
    if row is None:
        raise _not_found(evaluation_id)
    return json_response(_summary(row))


@router.delete(
    "/{evaluation_id}",
    operation_id="delete_evaluation",
    status_code=204,
    response_model=None,
    responses=ERROR_RESPONSES,
)
async def delete_evaluation(request: Request, evaluation_id: EvaluationId) -> Response:
    """Delete the evaluation and its batches."""
    store = await _swept(request, evaluation_id)
    owner = _owner(request)
    deleted = await anyio.to_thread.run_sync(lambda: store.delete_evaluation(owner, evaluation_id))
    if not deleted:
        raise _not_found(evaluation_id)
    return Response(status_code=204)
