"""What the evaluation store hands back: rows, pages, the outcome of a put, cursors."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from numpy.typing import NDArray

from service.storage.blobs import decode_arrays
from service.storage.schema import OWNER_LENGTH

Status = Literal["open", "closed"]
T = TypeVar("T")

#: What a batch id may be: 1–128 of ``A-Z a-z 0-9 . _ : -`` (the HTTP contract's rule).
BATCH_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class EvaluationRow:
    """One evaluation, without its totals (see :class:`Totals`)."""

    id: str
    owner: str
    status: Status
    created_at: datetime
    updated_at: datetime
    n_batches: int
    n_samples: int
    #: As given at creation (losses, metrics, reports, heads, ...).
    config: dict[str, Any]
    #: The caller's ``metadata``, as given at creation.
    metadata: dict[str, Any]
    #: Fixed with the first accepted batch (classes, encoding, ...); ``None`` before it.
    facts: dict[str, Any] | None
    #: How many accepted batches raised each warning code.
    warnings: dict[str, int]


@dataclass(frozen=True)
class Setup:
    """What a batch is evaluated under: the evaluation's settings, fixed at its creation,
    and the facts its first batch fixed (``None`` before it)."""

    config: dict[str, Any]
    facts: dict[str, Any] | None


@dataclass(frozen=True)
class Totals:
    """An evaluation and the totals of its batches' statistics, read in one snapshot.

    ``values`` maps each statistic's name to its total over every accepted
    batch: float sums correctly rounded to float64 from their exact value
    (bit-identical whatever the order of the batches), counts as int64.
    """

    evaluation: EvaluationRow
    values: dict[str, NDArray[Any]]


@dataclass(frozen=True)
class BatchRow:
    """One accepted batch. ``stats`` is only read when asked for (``with_stats``)."""

    batch_id: str
    #: 1, 2, ... in the order the evaluation accepted its batches.
    seq: int
    content_hash: bytes
    n_samples: int
    received_at: datetime
    #: The answer given when the batch was accepted; a replay answers it again.
    answer: dict[str, Any]
    stats: dict[str, NDArray[Any]] | None = None
    #: The evaluation's sample count once this batch was counted; ``None`` for batches
    #: stored before it was kept (see :meth:`Store.samples_through`).
    samples_through: int | None = None


class PutOutcome(StrEnum):
    """What :meth:`Store.put_batch` did, and the HTTP status it stands for."""

    #: Stored and counted, durably (201).
    CREATED = "created"
    #: This batch id was accepted before with the same content: nothing counted (200).
    REPLAYED = "replayed"
    #: This batch id was accepted before with other content: nothing stored (409).
    CONFLICT = "conflict"
    #: A new batch for a closed evaluation: nothing stored (409).
    CLOSED = "closed"
    #: No such evaluation for this owner (404).
    NOT_FOUND = "not_found"
    #: The batch's facts differ from those the first batch fixed: nothing stored (422).
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class PutResult:
    """The outcome of a put, with what the HTTP layer answers from.

    ``batch`` is the stored batch: the new one (created) or the one accepted
    first under this id (replayed, conflict); ``None`` otherwise.
    ``evaluation`` is the evaluation as the put left (or found) it: its counts
    for the answer, its ``facts`` to say what differs on a mismatch; ``None``
    when it was not found.
    """

    outcome: PutOutcome
    batch: BatchRow | None
    evaluation: EvaluationRow | None

    @property
    def answer(self) -> dict[str, Any] | None:
        """The batch's answer, to send again on a replay; ``None`` unless stored."""
        if self.outcome in (PutOutcome.CREATED, PutOutcome.REPLAYED) and self.batch:
            return self.batch.answer
        return None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, and the cursor of the next one (``None`` on the last page)."""

    items: list[T]
    next: str | None


class InvalidCursor(ValueError):
    """A cursor that this list did not hand out (the HTTP layer answers 422)."""


#: The largest key of either table (a signed 64-bit integer).
_MAX_KEY = 2**63 - 1


def encode_cursor(kind: str, position: int) -> str:
    """An opaque cursor for ``position`` in a list of ``kind``."""
    raw = f"{kind}:{position}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> int:
    """The position in a cursor from :func:`encode_cursor` for the same ``kind``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, number = raw.partition(":")
    # Positions are the database's 64-bit keys: a larger number was never handed out.
    if prefix != kind or not number.isdigit() or len(number) > 19 or int(number) > _MAX_KEY:
        raise InvalidCursor(
            f"the cursor {cursor[:64]!r} is not one this list of {kind} handed out; "
            "pass the 'next' value of the previous page, or no cursor for the first page"
        )
    return int(number)


def owner_key(owner: str | None) -> str:
    """The owner as the database keeps it: ``""`` for nobody (no API keys)."""
    owner = owner or ""
    if len(owner) > OWNER_LENGTH:
        raise ValueError(f"an owner is at most {OWNER_LENGTH} characters; received {len(owner)}")
    return owner


def evaluation_row(row: Mapping[Any, Any]) -> EvaluationRow:
    """An evaluation as the database holds it (a row's mapping, or a dict alike)."""
    return EvaluationRow(
        id=row["id"],
        owner=row["owner"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        n_batches=int(row["n_batches"]),
        n_samples=int(row["n_samples"]),
        config=row["config"],
        metadata=row["meta"],
        facts=row["facts"],
        warnings={str(code): int(count) for code, count in row["warnings"].items()},
    )


def batch_row(row: Mapping[Any, Any]) -> BatchRow:
    """A batch as the database holds it (its stats decoded when the row has them)."""
    stats = row.get("stats")
    return BatchRow(
        batch_id=row["batch_id"],
        seq=int(row["seq"]),
        content_hash=bytes(row["content_hash"]),
        n_samples=int(row["n_samples"]),
        received_at=row["received_at"],
        answer=row["answer"],
        stats=None if stats is None else decode_arrays(stats),
        samples_through=None if row.get("samples_through") is None else int(row["samples_through"]),
    )
