"""``loss-service evaluate``: the losses, metrics and reports of a whole dataset read from
files, computed batch by batch, against a running service or in this process.

Inputs are ``.npy`` files (memory-mapped: rows are read a batch at a time), ``.npz``
archives (the array named by ``--key FIELD=NAME``, else the one named like the field,
else the archive's only array; without ``--y-pred``, an archive given as ``--y-true``
holding ``y_pred`` gives both) and ``.csv`` files (one row per line, comma-separated,
an optional header line: labels as one integer per line, or one-hot or multi-hot rows;
predictions one row of probabilities or logits per line; with ``--class-names``, labels
may also be class names).

With ``--url``, the batches go to a streaming evaluation of that service through
:class:`service.client.LossClient` (so retries, idempotent batch ids and splitting over
the body limit apply); without it, each batch is evaluated here as the service would
evaluate it (:func:`service.streaming.evaluate_batch`), their statistics added exactly
(:class:`service.storage.exact.ExactTotals`) and finalized by
:func:`service.streaming.results`: the same numbers, no server.

Exit codes: 0 done; 2 a usage error (options, unreadable files, arrays whose rows do
not match), found before anything is computed; 1 an error of the evaluation itself (the
service's answer, or the same check made here), a service that cannot be reached, or a
server at ``--url`` that does not answer like the service.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import httpx

    from service.client import HeadSettings

PROG = "loss-service evaluate"
FIELDS = ("y_true", "y_pred", "sample_weight")
DEFAULT_BATCH_SIZE = 4096
#: Classes shown in the per-class table (``--json`` gives them all).
MAX_TABLE_CLASSES = 30
#: Largest confusion matrix printed as a table.
MAX_MATRIX_CLASSES = 12
#: Local batches are already in memory: no element limit beyond what NumPy can hold.
LOCAL_MAX_ELEMENTS = 2**62
#: Nor a limit of AUC and confusion counts summed over the entries (each AUC still keeps
#: at most the service's default of 2**22).
LOCAL_MAX_CELLS = 2**62
REPORTS = ("per_class", "confusion_matrix", "calibration")
LABEL_ENCODINGS = ("sparse", "binary", "one_hot", "multi_hot", "soft")
#: The longest --timeout taken: a day (a larger one overflows the clocks it is added to).
_MAX_TIMEOUT_S = 86_400.0
#: The dtypes the service takes; other integer and float widths become int64 and float64.
_WIRE = frozenset(
    {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}
)

DESCRIPTION = (
    "Compute losses, metrics and reports over a whole dataset read from .npy, .npz or .csv "
    "files, in batches, against a running service (--url) or in this process."
)
EPILOG = (
    "Exit codes: 0 done; 2 a usage error (options, unreadable files, arrays whose rows do "
    "not match); 1 the evaluation's own error (the service's answer, or the same check made "
    "locally), a service that cannot be reached or a server that does not answer like it. "
    "Example: loss-service evaluate "
    "--y-true labels.npy --y-pred probs.npy --metric accuracy --report per_class"
)


class UsageError(Exception):
    """A mistake in the command's options or files: exit 2."""


class EvaluationError(Exception):
    """The evaluation refused the data, or the service could not be reached: exit 1."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) while the batches were sent: exit 130, saying what was stored."""


#: The exit code of a command stopped by SIGINT (128 + 2, as shells report it).
INTERRUPTED = 130


# ---- the command line ------------------------------------------------------------------------


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of rows >= 1, received {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= _MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and <= {_MAX_TIMEOUT_S:g}, received {text!r}"
        )
    return value


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, received {text!r}")
    return name, value


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """The ``evaluate`` subcommand, added to ``commands`` (the parser's subparsers)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "evaluate",
        help="evaluate whole datasets from files, in batches",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    files = parser.add_argument_group("data")
    files.add_argument(
        "--y-true", type=Path, required=True, metavar="FILE", help="labels (.npy, .npz, .csv)"
    )
    files.add_argument(
        "--y-pred",
        type=Path,
        metavar="FILE",
        help="predictions (.npy, .npz, .csv); default: the --y-true archive's y_pred",
    )
    files.add_argument(
        "--sample-weight", type=Path, metavar="FILE", help="one weight per row (optional)"
    )
    files.add_argument(
        "--key",
        type=_pair,
        action="append",
        default=[],
        metavar="FIELD=NAME",
        help="the array of an .npz archive to read for y_true, y_pred or sample_weight",
    )
    files.add_argument(
        "--class-names",
        type=Path,
        metavar="FILE",
        help="one class name per line: the reports' labels (and names allowed in a labels CSV)",
    )
    what = parser.add_argument_group("what to compute (default: what fits the labels)")
    what.add_argument(
        "--loss",
        dest="losses",
        action="append",
        metavar="NAME",
        help='a loss by name, or as JSON: \'{"name": "categorical_focal_crossentropy", '
        '"gamma": 3}\' (repeat for several)',
    )
    what.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        metavar="NAME",
        help='a metric by name or as JSON: \'{"name": "f1_score", "average": "macro"}\'',
    )
    what.add_argument(
        "--report",
        dest="reports",
        action="append",
        metavar="NAME",
        help=f"a report: {', '.join(REPORTS)} (or JSON with its parameters)",
    )
    what.add_argument(
        "--from-logits",
        action="store_true",
        default=None,
        help="predictions are logits (softmax or sigmoid first)",
    )
    what.add_argument(
        "--label-encoding",
        choices=LABEL_ENCODINGS,
        help="the labels' encoding, stated instead of detected from the first batch",
    )
    what.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="the compute dtype (default float32, as Keras; float64 for values past "
        "float32's range)",
    )
    run = parser.add_argument_group("how")
    run.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="rows per batch (default %(default)s)",
    )
    run.add_argument("--url", help="the service's base URL; without it, compute locally")
    run.add_argument("--api-key", help="the service's API key (sent as a bearer token)")
    run.add_argument(
        "--evaluation",
        metavar="ID",
        help="with --url: add to this existing evaluation (a rerun adds nothing twice)",
    )
    run.add_argument(
        "--metadata",
        type=_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --url: metadata of the new evaluation",
    )
    run.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds per request (default %(default)s)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the JSON response")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# ---- reading the data ------------------------------------------------------------------------


def _wire(field: str, path: Path, array: NDArray[Any]) -> NDArray[Any]:
    """``array`` in a dtype the service takes (as the client would send it)."""
    if array.dtype.name in _WIRE:
        return array
    if array.dtype.kind in "iu":
        if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
            # Past int64's range: as floats, refused with their value, not wrapped around.
            return array.astype(np.float64)
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        return array.astype(np.float64)
    raise UsageError(
        f"--{_option(field)} {path}: holds {array.dtype} values; expected numbers (booleans, "
        "integers or floats)"
    )


def _option(field: str) -> str:
    return field.replace("_", "-")


#: How the files start: NumPy's format, and a zip archive (``numpy.savez``'s; an empty one
#: starts with its end record).
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _starts_with(path: Path, magics: tuple[bytes, ...]) -> bool:
    """Whether the file starts with one of ``magics`` (a file that cannot be opened is left
    to the reader, whose error says why)."""
    try:
        with path.open("rb") as file:
            head = file.read(max(len(m) for m in magics))
    except OSError:
        return True
    return head.startswith(magics)


def _objects(field: str, path: Path) -> UsageError:
    return UsageError(
        f"--{_option(field)} {path}: holds Python objects, which are not read (they would be "
        "unpickled); expected numbers (booleans, integers or floats)"
    )


def _holds_objects(open_file: Callable[[], IO[bytes]]) -> bool:
    """Whether the .npy data that ``open_file`` opens declares a dtype of Python objects,
    read from its header alone (nothing is unpickled)."""
    try:
        with open_file() as file:
            version = np.lib.format.read_magic(file)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = reader(file)
    except (OSError, ValueError, KeyError):
        return False
    return bool(dtype.hasobject)


def _read_npy(field: str, path: Path) -> NDArray[Any]:
    if not _starts_with(path, (_NPY_MAGIC,)):
        raise UsageError(
            f"--{_option(field)} {path}: not a .npy file (it does not start as numpy.save "
            "writes them); expected an array saved by numpy.save"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        if _holds_objects(lambda: path.open("rb")):
            raise _objects(field, path) from None
        raise UsageError(
            f"--{_option(field)} {path}: cannot be read as a .npy array ({error})"
        ) from None
    if not isinstance(array, np.ndarray):
        raise UsageError(f"--{_option(field)} {path}: expected one .npy array")
    return array


def _read_npz(field: str, path: Path, key: str | None, fallback: bool) -> NDArray[Any] | None:
    """The archive's array for ``field``; None when ``fallback`` and it has none of that
    name (the caller then asks for the field's own file)."""
    if not _starts_with(path, _ZIP_MAGICS):
        raise UsageError(
            f"--{_option(field)} {path}: not a .npz archive (it is not a zip file); "
            "expected arrays saved by numpy.savez"
        )
    try:
        # The file opened here, not by numpy.load, which leaves it open when the archive
        # cannot be read.
        with path.open("rb") as file, np.load(file, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is not None:
                name = key
            elif field in names:
                name = field
            elif len(names) == 1 and not fallback:
                name = names[0]
            elif fallback:
                return None
            else:
                raise UsageError(
                    f"--{_option(field)} {path}: the archive holds {names}, none named "
                    f"{field!r}; expected --key {field}=NAME to choose one"
                )
            if name not in names:
                raise UsageError(
                    f"--{_option(field)} {path}: no array {name!r} in the archive; it holds {names}"
                )
            try:
                return np.asarray(archive[name])
            except ValueError:
                if _holds_objects(lambda: archive.zip.open(f"{name}.npy")):
                    raise _objects(field, path) from None
                raise
    except UsageError:
        raise
    except (zipfile.BadZipFile, zlib.error) as error:
        raise UsageError(
            f"--{_option(field)} {path}: cannot be read as a .npz archive: the zip file is "
            f"truncated or corrupt ({error})"
        ) from None
    except (OSError, ValueError, EOFError) as error:
        raise UsageError(
            f"--{_option(field)} {path}: cannot be read as a .npz archive ({error})"
        ) from None


#: A CSV cell's number: decimal, with an exponent, or nan / inf (as NumPy writes them);
#: not the rest of what Python's float() reads (``1_000``, digits of other scripts).
_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)",
    re.IGNORECASE,
)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _is_number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell.strip()) is not None


def _read_csv(field: str, path: Path, class_names: list[str] | None) -> NDArray[Any]:
    """A CSV of numbers, one row per line, an optional header line; for labels with
    ``class_names``, a column of class names too."""
    try:
        # utf-8-sig: a byte-order mark (spreadsheets write one) is not part of the first
        # cell, which would then not be a number and pass for a header, its row lost.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--{_option(field)} {path}: cannot be read ({error})") from None
    rows = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if rows and not all(_is_number(cell) for cell in rows[0][1].split(",")):
        header = rows.pop(0)
        if field == "y_true" and class_names and header[1].strip() in class_names:
            rows.insert(0, header)  # a class name, not a header
    if not rows:
        raise UsageError(f"--{_option(field)} {path}: no rows; expected one row per line")
    if field == "y_true" and class_names and not _is_number(rows[0][1].split(",")[0]):
        index = {name: i for i, name in enumerate(class_names)}
        labels = []
        for number, line in rows:
            name = line.strip()
            if name not in index:
                raise UsageError(
                    f"--y-true {path}, line {number}: {name!r} is not one of the "
                    f"{len(class_names)} class names of --class-names"
                )
            labels.append(index[name])
        return np.asarray(labels, dtype=np.int64)
    width = None
    values = []
    for number, line in rows:
        cells = line.split(",")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            raise UsageError(
                f"--{_option(field)} {path}, line {number}: {len(cells)} values, expected "
                f"{width} as on the first row"
            )
        if all(_is_number(cell) for cell in cells):
            values.append([float(cell) for cell in cells])
        else:
            bad = next(cell for cell in cells if not _is_number(cell))
            hint = " (give --class-names to read class names)" if field == "y_true" else ""
            raise UsageError(
                f"--{_option(field)} {path}, line {number}: {bad.strip()!r} is not a number{hint}"
            )
    array = np.asarray(values, dtype=np.float64)
    if array.shape[1] == 1:
        array = array[:, 0]
    if (
        field == "y_true"
        and np.all(np.isfinite(array))
        and np.all(array == np.round(array))
        and np.all(np.abs(array) < 2.0**63)
    ):
        return array.astype(np.int64)  # integer labels, or one-hot / multi-hot rows
    return array


def read_array(
    field: str, path: Path, key: str | None, class_names: list[str] | None
) -> NDArray[Any]:
    """The array of ``field`` in ``path`` (.npy, .npz or .csv)."""
    if path.is_dir():
        raise UsageError(
            f"--{_option(field)} {path}: is a directory; expected a .npy, .npz or .csv file"
        )
    if not path.is_file():
        raise UsageError(f"--{_option(field)} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _read_npy(field, path)
    elif suffix == ".npz":
        found = _read_npz(field, path, key, fallback=False)
        assert found is not None
        array = found
    elif suffix == ".csv":
        array = _read_csv(field, path, class_names)
    else:
        raise UsageError(
            f"--{_option(field)} {path}: unknown file type {suffix or '(none)'!r}; expected "
            ".npy, .npz or .csv"
        )
    return _wire(field, path, array)


def read_class_names(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--class-names {path}: cannot be read ({error})") from None
    names: list[str] = []
    lines_of: dict[str, int] = {}
    for number, name in enumerate(lines, 1):
        if not name:
            continue
        if name in lines_of:
            raise UsageError(
                f"--class-names {path}, line {number}: {name!r} is also on line "
                f"{lines_of[name]} (class {names.index(name)}); expected one name per class, "
                "each different"
            )
        lines_of[name] = number
        names.append(name)
    if not names:
        raise UsageError(f"--class-names {path}: no names; expected one class name per line")
    return names


def read_data(args: argparse.Namespace) -> tuple[dict[str, NDArray[Any]], list[str] | None]:
    """The arrays to evaluate, their rows checked, and the class names."""
    keys = dict(args.key)
    unknown = sorted(set(keys) - set(FIELDS))
    if unknown:
        raise UsageError(f"--key {unknown[0]}=...: expected one of {', '.join(FIELDS)}")
    class_names = None if args.class_names is None else read_class_names(args.class_names)
    arrays = {"y_true": read_array("y_true", args.y_true, keys.get("y_true"), class_names)}
    for field in ("y_pred", "sample_weight"):
        path: Path | None = getattr(args, field)
        if path is not None:
            arrays[field] = read_array(field, path, keys.get(field), class_names)
        elif args.y_true.suffix.lower() == ".npz":
            # One archive for everything: y_pred (required) and sample_weight (if there).
            found = _read_npz(field, args.y_true, keys.get(field), fallback=True)
            if found is not None:
                arrays[field] = _wire(field, args.y_true, found)
    if "y_pred" not in arrays:
        where = (
            f"{args.y_true} holds no array named 'y_pred' (--key y_pred=NAME names another)"
            if args.y_true.suffix.lower() == ".npz"
            else "expected --y-pred FILE"
        )
        raise UsageError(f"no predictions: {where}")
    rows = {}
    for field, array in arrays.items():
        if array.ndim == 0:
            raise UsageError(f"{field} is a single number; expected one row per sample")
        rows[field] = array.shape[0]
    if rows["y_true"] == 0:
        raise UsageError("y_true has no rows; expected at least one sample")
    if len(set(rows.values())) != 1:
        counts = ", ".join(f"{field} {n}" for field, n in rows.items())
        raise UsageError(
            f"the arrays have different numbers of rows ({counts}); expected one row of "
            "y_pred (and one weight) per label"
        )
    return arrays, class_names


def _no_constant(token: str) -> Any:
    # NaN and Infinity are not JSON (the service would receive them as null).
    raise json.JSONDecodeError(f"{token} is not a JSON number", token, 0)


def _entries(option: str, values: Sequence[str] | None) -> list[str | dict[str, Any]] | None:
    """``--loss``/``--metric``/``--report`` values: names, or JSON objects."""
    if values is None:
        return None
    entries: list[str | dict[str, Any]] = []
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                entry = json.loads(value, parse_constant=_no_constant)
            except json.JSONDecodeError as error:
                raise UsageError(f"--{option} {value}: not valid JSON ({error})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise UsageError(
                    f'--{option} {value}: expected a name or {{"name": ..., <parameters>}}'
                )
            entries.append(entry)
        else:
            entries.append(value.strip())
    return entries


def settings_of(args: argparse.Namespace, class_names: list[str] | None) -> dict[str, Any]:
    """The evaluation's settings (evaluate's, without arrays) from the options."""
    settings: dict[str, Any] = {}
    for option, key in (("loss", "losses"), ("metric", "metrics"), ("report", "reports")):
        entries = _entries(option, getattr(args, key))
        if entries is not None:
            settings[key] = entries
    if args.from_logits:
        settings["from_logits"] = True
    if args.label_encoding is not None:
        settings["label_encoding"] = args.label_encoding
    if args.dtype is not None:
        settings["dtype"] = args.dtype
    if class_names is not None:
        settings["class_names"] = class_names
    return settings


# ---- evaluating --------------------------------------------------------------------------------


def _batches(arrays: Mapping[str, NDArray[Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    rows = arrays["y_true"].shape[0]
    for lo in range(0, rows, batch_size):
        yield {k: np.ascontiguousarray(v[lo : lo + batch_size]) for k, v in arrays.items()}


def evaluate_locally(
    arrays: Mapping[str, NDArray[Any]],
    settings: dict[str, Any],
    batch_size: int,
    on_rows: Callable[[int], None],
) -> dict[str, Any]:
    """What ``GET /v1/evaluations/{id}`` would answer after these batches (without the
    evaluation's id, status and times), computed in this process."""
    import orjson

    from service.errors import ServiceError
    from service.storage.exact import ExactTotals
    from service.streaming import evaluate_batch, parse_settings, results

    def as_stored(value: Any) -> Any:  # the store keeps settings and facts as JSON
        return orjson.loads(orjson.dumps(value))

    facts: dict[str, Any] | None = None
    totals = ExactTotals()
    warnings: Counter[str] = Counter()
    n_batches = n_samples = 0
    try:
        config = as_stored(parse_settings(settings, max_cells=LOCAL_MAX_CELLS)[0])
    except ServiceError as error:
        raise EvaluationError(f"the settings were refused: {error.detail}") from None
    for body in _batches(arrays, batch_size):
        rows = body["y_true"].shape[0]
        try:
            outcome = evaluate_batch(config, body, facts, LOCAL_MAX_ELEMENTS, LOCAL_MAX_CELLS)
        except ServiceError as error:
            raise EvaluationError(
                f"batch {n_batches + 1} (rows {n_samples} to {n_samples + rows - 1}) was "
                f"refused: {error.detail}"
            ) from None
        if facts is None:
            facts = as_stored(outcome.facts)
        totals.add(ExactTotals.from_stats(outcome.stats))
        warnings.update(outcome.warning_codes)
        n_batches += 1
        n_samples += outcome.n_samples
        on_rows(outcome.n_samples)
    return {
        "n_batches": n_batches,
        "n_samples": n_samples,
        **results(config, facts, totals.values(), warnings, n_samples),
    }


#: The media types of the service's answers (its results, and its problem documents).
_JSON_TYPES = frozenset({"application/json", "application/problem+json"})


def check_service_options(url: str, api_key: str | None) -> None:
    """``--url`` and ``--api-key`` as they can be sent: a usage error otherwise."""
    import httpx

    from service.settings import TOKEN

    example = "expected the service's base URL, such as http://127.0.0.1:8000"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise UsageError(f"--url {url!r}: not a valid URL ({error}); {example}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"--url {url!r}: not an http:// or https:// URL with a host; {example}")
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        raise UsageError(f"--url {url!r}: port {parsed.port} is not 1 to 65535; {example}")
    if api_key is not None and (parsed.username or parsed.password):
        raise UsageError(
            f"--url {parsed.copy_with(username=None, password=None)} with a user or password, "
            "and --api-key: both go in the Authorization header, which takes one; give "
            "--api-key with a --url without credentials"
        )
    if api_key is not None and TOKEN.fullmatch(api_key) is None:
        # The key itself is not quoted back: it is a secret.
        raise UsageError(
            "--api-key: empty, or holds characters a Bearer token cannot (spaces, control or "
            "non-ASCII characters); an API key is visible ASCII characters"
        )


def _unlike_the_service(url: str, response: httpx.Response, resume: str = "") -> EvaluationError:
    """The error for an answer that is not the service's (an HTML page, another API);
    ``resume``: how to finish the evaluation it interrupted, if any."""
    media_type = response.headers.get("content-type", "").partition(";")[0].strip()
    request = response.request
    expected = (
        # A proxy's or gateway's error page: the URL may well be right.
        "a proxy's error page: the service behind it may be down or unreachable"
        if response.status_code in (502, 503, 504)
        else "expected --url to be the loss service's base URL"
    )
    return EvaluationError(
        f"the server at {url} did not answer like the loss service ({request.method} "
        f"{request.url.path}: {response.status_code} {response.reason_phrase}, "
        f"{media_type or 'no content type'}); {expected}" + (f";{resume}" if resume else "")
    )


def evaluate_remotely(
    args: argparse.Namespace,
    arrays: Mapping[str, NDArray[Any]],
    settings: dict[str, Any],
    on_rows: Callable[[int], None],
) -> tuple[dict[str, Any], str]:
    """The service's ``GET /v1/evaluations/{id}`` after streaming the batches, and the
    URL of its report page."""
    import httpx

    from service.client import LossClient, LossServiceError

    head = cast("HeadSettings", settings)
    answers: list[httpx.Response] = []  # the last answer received

    def received(response: httpx.Response) -> None:
        answers[:] = [response]

    def json_answer() -> bool:
        media_type = answers[-1].headers.get("content-type", "").partition(";")[0]
        return media_type.strip().lower() in _JSON_TYPES

    total = int(arrays["y_true"].shape[0])
    batches = rows = 0  # accepted so far
    feeding: str | None = None  # the evaluation's id while its batches are sent

    def accepted(n: int) -> None:
        nonlocal batches, rows
        batches += 1
        rows += n
        on_rows(n)

    def resume() -> str:
        """How to finish an evaluation whose batches stopped part way ("" before one)."""
        if feeding is None:
            return ""
        return (
            f" evaluation {feeding} holds the {batches} batch(es) accepted so far ({rows} of "
            f"{total} rows); --evaluation {feeding} sends every batch again, and those "
            "count once."
        )

    try:
        # Binary batches: the smallest bodies of float arrays; the service computes on the
        # very values read here, as the local mode does.
        with LossClient(
            args.url,
            api_key=args.api_key,
            timeout=args.timeout,
            encoding="binary",
            event_hooks={"response": [received]},
        ) as client:
            if args.evaluation is not None:
                evaluation = client.open_evaluation(args.evaluation)
            else:
                evaluation = client.evaluation(metadata=dict(args.metadata) or None, **head)
            feeding = evaluation.id
            evaluation.feed(
                arrays["y_true"],
                arrays["y_pred"],
                arrays.get("sample_weight"),
                batch_size=args.batch_size,
                on_batch=lambda r: accepted(r.n_samples),
            )
            feeding = None  # every batch in: an error now is not a batch's
            # Printed: without the user and password a --url may carry.
            shown = httpx.URL(evaluation.report_url).copy_with(username=None, password=None)
            return evaluation.results().document, str(shown)
    except LossServiceError as error:
        if answers and not json_answer():
            raise _unlike_the_service(args.url, answers[-1], resume()) from None
        message = f"the service answered {error}"
        if feeding is not None:
            last = min(rows + args.batch_size, total) - 1
            message += f" (batch {batches + 1}, rows {rows} to {last}"
            if error.part_start is not None:
                # Split over the body limit: the service saw a part, and its indices count
                # from the part's first row.
                message += (
                    f"; sent in parts under the body limit, the refused part starting at row "
                    f"{rows + error.part_start}, from which the answer's indices count"
                )
            message += ")."
            family = re.search(r"the batch's labels are (\w+)", str(error))
            if family is not None and "fixed by its first batch" in str(error):
                # The evaluation's label family is fixed: no corrected rerun into it fits.
                message += (
                    f" Evaluation {feeding}'s label family was fixed by its first batch, "
                    "which this batch's labels are not of: run again into a new evaluation "
                    f"(without --evaluation), stating --label-encoding {family.group(1)} "
                    "if that is the labels' encoding."
                )
            elif error.parts_stored:
                # Parts of the refused batch are stored under its content's id: the
                # corrected batch has another, and a rerun into it would count them again.
                message += (
                    " The batch was split over the service's body limit and part of it is "
                    f"stored in evaluation {feeding}, with the {batches} batch(es) "
                    "before it: once the data is corrected, run again into a new "
                    "evaluation (without --evaluation)."
                )
            elif error.status == 409 and "is closed" in str(error):
                message += (
                    f" Evaluation {feeding} is closed: it takes no new batch. Run again into "
                    "a new evaluation (without --evaluation)."
                )
            else:
                message += (
                    f" Evaluation {feeding} holds the {batches} batch(es) accepted "
                    f"before it: once the data is corrected, --evaluation {feeding} "
                    "sends every batch again, and those count once (its settings, such as "
                    "--label-encoding, are fixed: for others, run again without "
                    "--evaluation)."
                )
        raise EvaluationError(message) from None
    except KeyboardInterrupt:
        if feeding is None:
            raise
        raise Interrupted("interrupted:" + resume()) from None
    except (ValueError, KeyError, TypeError):
        # A success whose body is not JSON (orjson's error is a ValueError), or JSON that
        # is not the service's document (a field of another type: a date that is not one).
        if not answers or not answers[-1].is_success:
            raise
        raise _unlike_the_service(args.url, answers[-1], resume()) from None
    except httpx.HTTPError as error:
        raise EvaluationError(
            f"cannot reach the service at {args.url}: {error or type(error).__name__}"
            + (f";{resume()}" if feeding is not None else "")
        ) from None


@contextmanager
def progress(total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar of rows on standard error, shown only when it is a terminal."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar = tqdm(
        total=total,
        unit="rows",
        unit_scale=True,
        desc="evaluate",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        leave=False,
    )
    try:
        yield bar.update
    finally:
        bar.close()


# ---- printing ----------------------------------------------------------------------------------


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    number = float(value)
    return f"{number:.6f}" if number == 0 or 1e-4 <= abs(number) < 1e6 else f"{number:.6g}"


def _table(rows: list[list[str]], out: TextIO, right_from: int = 1) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i >= right_from else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def print_table(response: Mapping[str, Any], out: TextIO, report_url: str | None) -> None:
    """The response as readable text: counts, losses, metrics, the reports in short."""
    batches = response["n_batches"]
    out.write(
        f"{response['n_samples']:,} samples in {batches:,} batch{'es' * (batches != 1)}; "
        f"{response.get('label_encoding')} labels, {response.get('n_classes')} classes\n"
    )
    if "id" in response:
        out.write(f"evaluation {response['id']} ({response['status']})\n")
    if report_url is not None:
        out.write(f"report: {report_url}\n")
    resolved = response.get("resolved") or {}
    rows = [["loss", "value"]] + [[k, _number(v)] for k, v in response["losses"].items()]
    if len(rows) > 1:
        out.write("\n")
        _table(rows, out)
    rows = [["metric", "value"]]
    for key, value in response["metrics"].items():
        name = f"{key} ({resolved[key]})" if key in resolved else key
        rows.append([name, _number(value)])
    if len(rows) > 1:
        out.write("\n")
        _table(rows, out)
    reports = response.get("reports") or {}
    for key, report in reports.items():
        out.write("\n")
        if "support" in report:
            _per_class(key, report, out)
        elif "matrix" in report or "matrices" in report:
            _confusion(key, report, out)
        elif "bins" in report:
            out.write(
                f"{key}: ECE {_number(report['ece'])}, MCE {_number(report['mce'])}, "
                f"Brier {_number(report['brier'])} ({report['n_bins']} bins)\n"
            )
    warnings = response.get("warnings") or []
    if warnings:
        out.write("\nwarnings\n")
        for w in warnings:
            seen = w.get("batches")
            count = "" if seen is None else f" ({seen} batch{'es' * (seen != 1)})"
            out.write(f"  {w['code']}{count}: {w['message']}\n")


def _per_class(key: str, report: Mapping[str, Any], out: TextIO) -> None:
    labels = [str(label) for label in report["labels"]]
    rows = [[key, "support", "precision", "recall", "f1"]]
    for i, label in enumerate(labels[:MAX_TABLE_CLASSES]):
        rows.append(
            [
                label,
                _number(report["support"][i]),
                _number(report["precision"][i]),
                _number(report["recall"][i]),
                _number(report["f1"][i]),
            ]
        )
    for name, average in (report.get("averages") or {}).items():
        rows.append(
            [
                f"({name})",
                "",
                _number(average["precision"]),
                _number(average["recall"]),
                _number(average["f1"]),
            ]
        )
    _table(rows, out)
    if len(labels) > MAX_TABLE_CLASSES:
        out.write(f"... and {len(labels) - MAX_TABLE_CLASSES} more classes (--json for all)\n")


def _confusion(key: str, report: Mapping[str, Any], out: TextIO) -> None:
    labels = [str(label) for label in report["labels"]]
    if "matrix" not in report or len(labels) > MAX_MATRIX_CLASSES:
        out.write(f"{key}: {len(labels)} classes (--json for the matrices)\n")
        return
    rows = [[f"{key} (true \\ predicted)", *labels]]
    rows += [
        [label, *(_number(v) for v in row)]
        for label, row in zip(labels, report["matrix"], strict=True)
    ]
    _table(rows, out)


# ---- the command -------------------------------------------------------------------------------


#: The options that set an evaluation's settings or metadata (fixed at its creation).
#: How the service advises the compute dtype (a setting, which --dtype is here).
_DTYPE_ADVICE = '`dtype: "float64"`'

_SETTING_OPTIONS = {
    "losses": "--loss",
    "metrics": "--metric",
    "reports": "--report",
    "from_logits": "--from-logits",
    "label_encoding": "--label-encoding",
    "dtype": "--dtype",
    "metadata": "--metadata",
}


def run(args: argparse.Namespace) -> int:
    """``loss-service evaluate``: the exit code."""
    try:
        if args.url is None and (args.evaluation is not None or args.metadata):
            raise UsageError("--evaluation and --metadata need --url (a service keeps them)")
        if args.api_key is not None and args.url is None:
            raise UsageError("--api-key needs --url")
        if args.url is not None:
            check_service_options(args.url, args.api_key)
        fixed = [option for key, option in _SETTING_OPTIONS.items() if getattr(args, key)]
        if args.evaluation is not None and fixed:
            raise UsageError(
                f"{', '.join(fixed)}: an existing evaluation's settings were fixed when it was "
                "created; expected only its data with --evaluation"
            )
        arrays, class_names = read_data(args)
        settings = settings_of(args, class_names)
        report_url = None
        with progress(arrays["y_true"].shape[0], args.quiet) as on_rows:
            if args.url is None:
                response = evaluate_locally(arrays, settings, args.batch_size, on_rows)
            else:
                response, report_url = evaluate_remotely(args, arrays, settings, on_rows)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except EvaluationError as error:
        # The service's advice in the command's own words.
        print(f"{PROG}: {str(error).replace(_DTYPE_ADVICE, '--dtype float64')}", file=sys.stderr)
        return 1
    except Interrupted as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED
    try:
        if args.json:
            sys.stdout.write(json.dumps(response, indent=2) + "\n")
        else:
            print_table(response, sys.stdout, report_url)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say, and nothing at exit
        # either (Python would flush stdout again and complain).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        # A disk full, a file system gone: said once, and stdout not flushed again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{PROG}: cannot write the results to standard output: {error}", file=sys.stderr)
        return 1
    return 0
