"""Pydantic models of every request and response, for the OpenAPI spec and the docs page.

Request bodies are *described* by these models but not parsed by them: array
fields can hold millions of numbers, which are decoded straight to NumPy
(:mod:`service.arrays`) instead of being validated one by one.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from service import registry
from service.diagnostics import CODES
from service.encodings import ENCODINGS, Encoding
from service.kernels import REDUCTIONS
from service.wire import DTYPES

DType = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
assert set(DType.__args__) == set(DTYPES)  # type: ignore[attr-defined]


class TypedArray(BaseModel):
    """An array as its raw bytes: C order, little-endian, base64-encoded."""

    model_config = ConfigDict(extra="forbid")
    dtype: DType
    shape: list[int] = Field(
        description="The array's shape; its product times the item size is "
        "the byte count of `data`."
    )
    data: str = Field(description="Base64 (RFC 4648, padded) of the array's bytes.")


class BinaryTensor(BaseModel):
    """In a binary request's JSON header: a tensor whose bytes follow the header."""

    model_config = ConfigDict(extra="forbid")
    dtype: DType
    shape: list[int]
    binary_data_size: int = Field(
        description="Byte length of this tensor in the body, after "
        "the header and the tensors described before it."
    )


NestedLists = Annotated[list[Any], Field(min_length=1)]
ArrayInput = NestedLists | TypedArray
ARRAY_DESCRIPTION = (
    "Nested JSON lists of numbers (rectangular), or a typed array {dtype, shape, data}."
)


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    y_true: ArrayInput = Field(
        description="Labels: integer class indices (one dimension less than `y_pred`), or "
        "one-hot / multi-hot / soft / binary targets of `y_pred`'s shape. " + ARRAY_DESCRIPTION
    )
    y_pred: ArrayInput = Field(
        description="Predictions: probabilities, or logits with `from_logits: true`. "
        + ARRAY_DESCRIPTION
    )
    sample_weight: ArrayInput | None = Field(
        None, description="One weight per sample, or per loss value. " + ARRAY_DESCRIPTION
    )
    label_encoding: Literal[ENCODINGS] | None = Field(  # type: ignore[valid-type]
        None, description="State the encoding of `y_true` instead of detecting it (it is checked)."
    )
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="Compute dtype: float32 gives Keras' numbers."
    )


class LossRequest(_Batch):
    """A batch and the loss's Keras parameters; a parameter the loss does not take is a 422."""

    from_logits: bool = False
    label_smoothing: float = Field(0.0, ge=0, le=1, description="Not for the sparse loss.")
    axis: int = -1
    ignore_class: int | None = Field(None, description="Sparse loss only.")
    alpha: float = Field(0.25, ge=0, le=1, description="Focal losses only.")
    gamma: float = Field(2.0, ge=0, description="Focal losses only.")
    apply_class_balancing: bool = Field(False, description="binary_focal_crossentropy only.")
    reduction: Literal[REDUCTIONS] = "sum_over_batch_size"  # type: ignore[valid-type]

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # one example every loss accepts: one-hot labels fit each of them
            "examples": [
                {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]}
            ]
        },
    )


class MetricRequest(_Batch):
    """A batch and the metric's parameters; a parameter the metric does not take is a 422."""

    threshold: float = Field(0.5, description="binary_accuracy, subset_accuracy, accuracy.")
    from_logits: bool = Field(
        False, description="Threshold metrics only: threshold sigmoid(y_pred)."
    )
    k: int = Field(5, ge=1, description="Top-k metrics (and accuracy).")
    thresholds: float | None = Field(
        None, ge=0, le=1, description="precision, recall: positive where y_pred > thresholds."
    )
    top_k: int | None = Field(None, ge=1, description="precision, recall.")
    class_id: int | None = Field(None, ge=0, description="precision, recall.")
    average: Literal["micro", "macro", "weighted"] | None = Field(
        None, description="f1_score, fbeta_score: null gives one value per class."
    )
    beta: float | None = Field(None, ge=0, description="fbeta_score (default 1.0).")
    num_thresholds: int | None = Field(None, ge=2, description="auc (default 200).")
    curve: Literal["ROC", "PR"] | None = Field(None, description="auc (default ROC).")
    summation_method: Literal["interpolation", "minoring", "majoring"] | None = Field(
        None, description="auc (default interpolation)."
    )
    multi_label: bool | None = Field(None, description="auc (default false).")
    n_bins: int | None = Field(None, ge=1, description="expected_calibration_error (15).")
    norm: Literal["l1", "l2", "max"] | None = Field(
        None, description="expected_calibration_error (default l1)."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"y_true": [[0, 1, 0], [1, 0, 0]], "y_pred": [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]}
            ]
        },
    )


LossName = Literal[tuple(registry.LOSSES)]  # type: ignore[valid-type]
MetricName = Literal[tuple(registry.METRICS)]  # type: ignore[valid-type]
ReportName = Literal[tuple(registry.REPORTS)]  # type: ignore[valid-type]


class LossEntry(BaseModel):
    """A loss in an evaluate call, with its parameters (those the loss takes)."""

    model_config = ConfigDict(extra="allow")
    name: LossName  # type: ignore[valid-type]
    as_: str | None = Field(None, alias="as", description="The key of its result.")


class MetricEntry(BaseModel):
    """A metric in an evaluate call, with its parameters (those the metric takes)."""

    model_config = ConfigDict(extra="allow")
    name: MetricName  # type: ignore[valid-type]
    as_: str | None = Field(None, alias="as", description="The key of its result.")


class ReportEntry(BaseModel):
    """A report in an evaluate call: `threshold` (per_class, confusion_matrix) or
    `n_bins` (calibration)."""

    model_config = ConfigDict(extra="allow")
    name: ReportName  # type: ignore[valid-type]
    as_: str | None = Field(None, alias="as", description="The key of its result.")


Losses = list[LossName | LossEntry]  # type: ignore[valid-type]
Metrics = list[MetricName | MetricEntry]  # type: ignore[valid-type]
Reports = list[ReportName | ReportEntry]  # type: ignore[valid-type]


class EvaluateRequest(_Batch):
    """One batch, many losses and metrics. Omitted lists mean: the ones that fit the labels."""

    from_logits: bool | None = Field(
        None, description="Applies to every loss and threshold metric that does not set its own."
    )
    losses: Losses | None = None
    metrics: Metrics | None = None
    reports: Reports | None = Field(
        None,
        description="`per_class`, `confusion_matrix` (`threshold`), `calibration` (`n_bins`).",
    )
    class_names: list[str] | None = Field(
        None, description="One name per class, used as the reports' labels."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "y_true": [[0, 1, 1, 0], [1, 0, 0, 0]],
                    "y_pred": [[0.1, 0.8, 0.7, 0.2], [0.6, 0.1, 0.2, 0.1]],
                    "losses": ["binary_crossentropy"],
                    "metrics": ["accuracy", "binary_accuracy"],
                }
            ]
        },
    )


class HeadsRequest(BaseModel):
    """Several model outputs: one evaluate body per head, and optional loss weights."""

    model_config = ConfigDict(extra="forbid")
    outputs: dict[str, EvaluateRequest]
    loss_weights: dict[str, float] | None = None


class ServiceWarning(BaseModel):
    code: Literal[tuple(CODES)]  # type: ignore[valid-type]
    message: str


class _Summary(BaseModel):
    label_encoding: Literal[ENCODINGS]  # type: ignore[valid-type]
    n_samples: int
    n_classes: int
    warnings: list[ServiceWarning]


class LossResponse(_Summary):
    loss: float | list[Any] = Field(
        description="The reduced loss, or nested per-sample losses for `reduction: none`."
    )
    name: str
    reduction: str


class MetricResponse(_Summary):
    value: float | list[float] = Field(
        description="The value, or one per class (f1_score and fbeta_score with `average: null`)."
    )
    name: str
    resolved_as: str = Field(description="The metric computed (`accuracy` is resolved).")


class EvaluateResponse(_Summary):
    losses: dict[str, float]
    metrics: dict[str, float | list[float]]
    resolved: dict[str, str] = Field(description="What each `accuracy` entry resolved to.")
    reports: dict[str, dict[str, Any]] | None = Field(
        None, description="The reports asked for, by key (see the README for their shapes)."
    )


class HeadsResponse(BaseModel):
    outputs: dict[str, EvaluateResponse]
    total_loss: float = Field(description="Σ over heads of weight × the sum of the head's losses.")


class ProblemError(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError]
    instance: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class ParamInfo(BaseModel):
    name: str
    type: str
    default: Any
    nullable: bool
    description: str
    choices: list[str] | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = Field(
        default=None, description="A bound the value must be above (it is itself refused)."
    )
    maximum: float | None = None


class CatalogueItem(BaseModel):
    name: str
    description: str
    parameters: list[ParamInfo]
    label_encodings: list[Encoding] = Field(
        description="The label encodings of `y_true` it accepts (any other is a 422 that "
        "names what fits instead)."
    )


class _Catalogue(BaseModel):
    common_parameters: list[ParamInfo] = Field(
        description="Parameters every compute request takes, besides its own."
    )
    warning_codes: dict[str, str] = Field(description="Every diagnosis code and what it means.")


class LossCatalogue(_Catalogue):
    losses: list[CatalogueItem]


class MetricCatalogue(_Catalogue):
    metrics: list[CatalogueItem]


# ---- streaming evaluations ------------------------------------------------------------------


class EvaluationSettings(BaseModel):
    """Evaluate's settings without arrays (one head)."""

    model_config = ConfigDict(extra="forbid")
    from_logits: bool | None = None
    losses: Losses | None = None
    metrics: Metrics | None = None
    reports: Reports | None = None
    class_names: list[str] | None = None
    label_encoding: Literal[ENCODINGS] | None = None  # type: ignore[valid-type]
    dtype: Literal["float32", "float64"] = "float32"


class EvaluationRequest(EvaluationSettings):
    """A streaming evaluation: evaluate's settings (or `outputs` of them per head, with
    `loss_weights`) and `metadata`. Omitted losses/metrics: those that fit the labels of
    the first batch, then fixed."""

    #: Settings, no arrays: the spec documents a JSON body alone (no binary encoding).
    JSON_ONLY: ClassVar[bool] = True

    outputs: dict[str, EvaluationSettings] | None = None
    loss_weights: dict[str, float] | None = None
    metadata: dict[str, str] | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "metrics": ["accuracy", {"name": "f1_score", "average": "macro"}],
                    "reports": ["per_class", "confusion_matrix", "calibration"],
                    "metadata": {"model": "resnet50", "split": "validation"},
                }
            ]
        },
    )


class EvaluationSummary(BaseModel):
    id: str
    status: Literal["open", "closed"]
    created_at: str
    updated_at: str
    n_batches: int
    n_samples: int
    metadata: dict[str, str]


class EvaluationList(BaseModel):
    evaluations: list[EvaluationSummary]
    next: str | None = Field(description="The cursor of the next page, or null.")


class BatchArrays(BaseModel):
    model_config = ConfigDict(extra="forbid")
    y_true: ArrayInput
    y_pred: ArrayInput
    sample_weight: ArrayInput | None = None


class BatchRequest(BatchArrays):
    """A batch's arrays (JSON lists, typed arrays, or the binary encoding), or `outputs`
    of them per head."""

    outputs: dict[str, BatchArrays] | None = None
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"y_true": [0, 2], "y_pred": [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]}]
        },
    )


class RunningCounts(BaseModel):
    n_batches: int
    n_samples: int


class BatchResponse(BaseModel):
    batch_id: str
    n_samples: int
    losses: dict[str, float] | None = None
    metrics: dict[str, float | list[float]] | None = None
    outputs: dict[str, Any] | None = None
    total_loss: float | None = None
    warnings: list[ServiceWarning]
    evaluation: RunningCounts


class CountedWarning(BaseModel):
    code: str
    message: str
    batches: int = Field(description="How many batches raised it.")


class EvaluationResults(EvaluationSummary):
    """The evaluation, and the evaluate response over every batch so far."""

    label_encoding: str | None = None
    n_classes: int | None = None
    losses: dict[str, float] | None = None
    metrics: dict[str, float | list[float]] | None = None
    resolved: dict[str, str] | None = None
    reports: dict[str, dict[str, Any]] | None = None
    outputs: dict[str, Any] | None = None
    total_loss: float | None = None
    warnings: list[CountedWarning]


class BatchList(BaseModel):
    batches: list[dict[str, Any]]
    next: str | None = Field(description="The cursor of the next page, or null.")
