"""``loss-service evaluate``: files in (.npy, .npz, .csv), numbers out, locally and against
a real service, equal to one ``POST /v1/evaluate`` over the whole data; exit codes and
messages for bad files, bad options and the service's refusals."""

from __future__ import annotations

import functools
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servers import serve_in_thread

from service import cli, cli_evaluate, streaming
from service.client import LossClient
from service.errors import PayloadTooLarge
from service.main import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

N, C = 523, 4
RNG = np.random.default_rng(21)
Y_TRUE = RNG.integers(0, C, N)
Y_PRED = RNG.dirichlet(np.ones(C), N).astype(np.float32)
WEIGHTS = RNG.uniform(0.5, 2.0, N).astype(np.float32)
NAMES = ["cat", "dog", "eel", "fox"]
METRICS = ["accuracy", {"name": "f1_score", "average": "macro"}, "auc", "brier_score"]
REPORTS = ["per_class", "confusion_matrix", "calibration"]
OPTIONS = [
    *("--metric", "accuracy", "--metric", '{"name": "f1_score", "average": "macro"}'),
    *("--metric", "auc", "--metric", "brier_score"),
    *("--report", "per_class", "--report", "confusion_matrix", "--report", "calibration"),
]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))
    with serve_in_thread(app) as base:
        yield base


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {name: tmp_path / f"{name}.npy" for name in ("y_true", "y_pred", "weights")}
    np.save(paths["y_true"], Y_TRUE)
    np.save(paths["y_pred"], Y_PRED)
    np.save(paths["weights"], WEIGHTS)
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    return {k: str(v) for k, v in paths.items()} | {"names": str(tmp_path / "names.txt")}


def evaluate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``loss-service evaluate ARGV``: its exit code, standard output and error."""
    code = cli.main(["evaluate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def evaluate_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = evaluate(capsys, *argv, "--json")
    assert code == 0, err
    assert err == ""  # no progress bar when standard error is not a terminal
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def assert_close(got: Any, expected: Any, where: str = "") -> None:
    if isinstance(got, dict):
        assert got.keys() == expected.keys(), where
        for key in got:
            assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(got, list) and got and isinstance(got[0], dict | list | str):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    elif got is None or isinstance(got, str):
        assert got == expected, where
    else:
        np.testing.assert_allclose(
            np.asarray(got, float), np.asarray(expected, float), rtol=1e-6, err_msg=where
        )


def assert_same_numbers(got: dict[str, Any], once: dict[str, Any]) -> None:
    for key in ("label_encoding", "n_classes", "resolved"):
        assert got[key] == once[key], key
    for key in ("losses", "metrics", "reports"):
        assert_close(got.get(key), once.get(key), key)


def test_local_and_service_modes_equal_one_evaluate(
    url: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        *("--y-true", files["y_true"], "--y-pred", files["y_pred"]),
        *("--sample-weight", files["weights"], "--class-names", files["names"]),
        *OPTIONS,
        *("--batch-size", "100"),
    ]
    local = evaluate_json(capsys, *argv)
    remote = evaluate_json(capsys, *argv, "--url", url, "--metadata", "model=m1")
    with LossClient(url) as client:
        once = client.evaluate(
            Y_TRUE, Y_PRED, WEIGHTS, metrics=METRICS, reports=REPORTS, class_names=NAMES
        ).document
        stored = httpx.get(f"{url}/v1/evaluations/{remote['id']}").json()
    assert (local["n_batches"], local["n_samples"]) == (6, N)  # 5 of 100 rows, 1 of 23
    assert (remote["n_batches"], remote["n_samples"]) == (6, N)
    assert_same_numbers(local, once)
    assert_same_numbers(remote, once)
    assert local["reports"]["per_class"]["labels"] == NAMES
    assert remote["metadata"] == {"model": "m1"} and remote["status"] == "open"
    assert stored["n_batches"] == 6 and stored["losses"] == remote["losses"]
    # Exact sums on both sides: the same batches give the same bits.
    assert local["losses"] == remote["losses"] and local["metrics"] == remote["metrics"]


def test_rerunning_into_the_same_evaluation_adds_nothing(
    url: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--url", url]
    first = evaluate_json(capsys, *argv, "--batch-size", "200")
    again = evaluate_json(capsys, *argv, "--batch-size", "200", "--evaluation", first["id"])
    assert again["id"] == first["id"]
    assert (again["n_batches"], again["n_samples"]) == (first["n_batches"], N) == (3, N)
    assert again["losses"] == first["losses"]
    code, _, err = evaluate(capsys, *argv, "--evaluation", first["id"], "--metric", "accuracy")
    assert code == 2
    assert "--metric" in err and "fixed when it was created" in err


def test_npz_archives(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = evaluate_json(
        capsys, "--y-true", files["y_true"], "--y-pred", files["y_pred"],
        "--sample-weight", files["weights"], "--batch-size", "128",
    )  # fmt: skip
    both = tmp_path / "data.npz"
    np.savez(both, y_true=Y_TRUE, y_pred=Y_PRED, sample_weight=WEIGHTS)
    whole = evaluate_json(capsys, "--y-true", str(both), "--batch-size", "128")
    assert whole["losses"] == reference["losses"] and whole["n_samples"] == N
    # Other names, chosen with --key; logits with --from-logits.
    logits = np.log(Y_PRED)
    named = tmp_path / "named.npz"
    np.savez(named, labels=Y_TRUE, logits=logits)
    code, out, err = evaluate(
        capsys, "--y-true", str(named), "--y-pred", str(named), "--key", "y_true=labels",
        "--key", "y_pred=logits", "--from-logits", "--json",
    )  # fmt: skip
    assert code == 0, err
    unweighted = evaluate_json(capsys, "--y-true", files["y_true"], "--y-pred", files["y_pred"])
    assert_close(json.loads(out)["losses"], unweighted["losses"])
    assert json.loads(out)["metrics"] == unweighted["metrics"]
    # Without --key, the archive has no array of that name: the message lists its arrays.
    code, out, err = evaluate(capsys, "--y-true", str(named), "--y-pred", str(named))
    assert (code, out) == (2, "")
    assert "['labels', 'logits']" in err and "--key y_true=NAME" in err


def test_csv_files(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = evaluate_json(
        capsys, "--y-true", files["y_true"], "--y-pred", files["y_pred"], "--metric", "accuracy"
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("label\n" + "\n".join(str(v) for v in Y_TRUE) + "\n")
    preds = tmp_path / "preds.csv"
    preds.write_text("\n".join(",".join(f"{v:.9g}" for v in row) for row in Y_PRED) + "\n")
    got = evaluate_json(
        capsys, "--y-true", str(labels), "--y-pred", str(preds), "--metric", "accuracy"
    )
    assert got["label_encoding"] == "sparse"
    assert_close(got["losses"], reference["losses"])
    assert got["metrics"] == reference["metrics"]
    # One-hot rows: categorical cross-entropy, the same number.
    one_hot = tmp_path / "one_hot.csv"
    one_hot.write_text("\n".join(",".join(map(str, row)) for row in np.eye(C, dtype=int)[Y_TRUE]))
    got = evaluate_json(
        capsys, "--y-true", str(one_hot), "--y-pred", str(preds), "--metric", "accuracy"
    )
    assert got["label_encoding"] == "one_hot"
    np.testing.assert_allclose(
        got["losses"]["categorical_crossentropy"],
        reference["losses"]["sparse_categorical_crossentropy"],
        rtol=1e-6,
    )
    assert got["metrics"] == reference["metrics"]
    # Files that start with a UTF-8 byte-order mark (as spreadsheets write them): every
    # row is read, the first one too (it is not taken for a header).
    for path in (labels, preds):
        path.write_text(path.read_text().removeprefix("label\n"), encoding="utf-8-sig")
    got = evaluate_json(
        capsys, "--y-true", str(labels), "--y-pred", str(preds), "--metric", "accuracy"
    )
    assert got["n_samples"] == len(Y_TRUE)
    assert_close(got["losses"], reference["losses"])
    # Class names as labels, with --class-names.
    named = tmp_path / "named.csv"
    named.write_text("\n".join(NAMES[v] for v in Y_TRUE) + "\n")
    got = evaluate_json(
        capsys, "--y-true", str(named), "--y-pred", str(preds), "--metric", "accuracy",
        "--class-names", files["names"],
    )  # fmt: skip
    assert got["metrics"] == reference["metrics"]


CORRUPT = "cannot be read as a .npz archive: the zip file is truncated or corrupt"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "--y-true {dir}/missing.npy: no such file"),
        ("suffix", "unknown file type '.txt'; expected .npy, .npz or .csv"),
        ("not_npy", "--y-pred {dir}/bad.npy: not a .npy file (it does not start as numpy"),
        ("truncated_npy", "--y-pred {dir}/cut.npy: cannot be read as a .npy array"),
        ("objects_npy", "--y-true {dir}/objects.npy: holds Python objects, which are not read"),
        ("objects_npz", "--y-pred {dir}/objects.npz: holds Python objects, which are not read"),
        ("bad_dtype_npy", "--y-true {dir}/odd.npy: cannot be read as a .npy array"),
        ("not_npz", "--y-true {dir}/bad.npz: not a .npz archive (it is not a zip file)"),
        ("truncated_npz", "--y-true {dir}/cut.npz: " + CORRUPT + " (File is not a zip file)"),
        ("corrupt_npz", "--y-true {dir}/crc.npz: " + CORRUPT + " (Bad CRC-32 for file 'y_"),
        ("compressed_npz", "--y-true {dir}/zipped.npz: " + CORRUPT + " (Error -3 while decomp"),
        ("duplicate_names", "--class-names {dir}/twice.txt, line 3: 'cat' is also on line 1"),
        ("url", "--url 'http://[::1': not a valid URL"),
        ("url_scheme", "--url 'localhost:8000': not an http:// or https:// URL with a host"),
        ("api_key", "--api-key: empty, or holds characters a Bearer token cannot (spaces,"),
        ("directory", "--y-pred {dir}/arrays: is a directory; expected a .npy, .npz or .csv"),
        ("rows", "different numbers of rows (y_true 523, y_pred 522)"),
        ("csv_text", "--y-pred {dir}/bad.csv, line 3: 'x' is not a number"),
        ("csv_ragged", "--y-pred {dir}/bad.csv, line 2: 3 values, expected 4"),
        ("csv_name", "--y-true {dir}/names.csv, line 2: 'cat' is not a number (give --class-"),
        ("no_pred", "no predictions: {dir}/only.npz holds no array named 'y_pred'"),
        ("key", "--key y_prob=...: expected one of y_true, y_pred, sample_weight"),
        ("metric", "--metric {{oops: not valid JSON"),
        ("local_evaluation", "--evaluation and --metadata need --url"),
        ("empty", "y_true has no rows; expected at least one sample"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    setup: str,
    message: str,
    files: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"]]
    bad_csv = tmp_path / "bad.csv"
    if setup == "missing":
        argv[1] = str(tmp_path / "missing.npy")
    elif setup == "suffix":
        (tmp_path / "labels.txt").write_text("1\n2\n")
        argv[1] = str(tmp_path / "labels.txt")
    elif setup == "not_npy":
        (tmp_path / "bad.npy").write_text("not an array")
        argv[3] = str(tmp_path / "bad.npy")
    elif setup == "truncated_npy":
        np.save(tmp_path / "cut.npy", Y_PRED)
        (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:200])
        argv[3] = str(tmp_path / "cut.npy")
    elif setup == "objects_npy":
        np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        argv[1] = str(tmp_path / "objects.npy")
    elif setup == "objects_npz":
        objects = np.array([{}] * len(Y_TRUE), dtype=object)
        np.savez(tmp_path / "objects.npz", y_true=Y_TRUE, y_pred=objects)
        argv = ["--y-true", str(tmp_path / "objects.npz")]
    elif setup == "bad_dtype_npy":
        # A header whose dtype is no dtype at all, whatever its name says: not objects.
        with (tmp_path / "odd.npy").open("wb") as file:
            header = {"descr": "objectx", "fortran_order": False, "shape": (len(Y_TRUE),)}
            np.lib.format.write_array_header_1_0(file, header)
            file.write(bytes(8 * len(Y_TRUE)))
        argv[1] = str(tmp_path / "odd.npy")
    elif setup == "not_npz":
        (tmp_path / "bad.npz").write_text("y_true,y_pred\n")
        argv = ["--y-true", str(tmp_path / "bad.npz")]
    elif setup in ("truncated_npz", "corrupt_npz", "compressed_npz"):
        name = {"truncated_npz": "cut", "corrupt_npz": "crc", "compressed_npz": "zipped"}[setup]
        path = tmp_path / f"{name}.npz"
        save = np.savez_compressed if setup == "compressed_npz" else np.savez
        save(path, y_true=Y_TRUE, y_pred=Y_PRED)
        data = bytearray(path.read_bytes())
        if setup == "truncated_npz":
            del data[len(data) // 2 :]  # no central directory: a download cut short
        elif setup == "corrupt_npz":
            data[200] ^= 0xFF  # a flipped byte in the first array's data
        else:  # the first member's deflate stream starts with a reserved block type
            start = (
                30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
            )
            data[start] = 0xFF
        path.write_bytes(bytes(data))
        argv = ["--y-true", str(path)]
    elif setup == "duplicate_names":
        (tmp_path / "twice.txt").write_text("cat\ndog\ncat\nfox\n")
        argv += ["--class-names", str(tmp_path / "twice.txt")]
    elif setup == "url":
        argv += ["--url", "http://[::1"]
    elif setup == "url_scheme":
        argv += ["--url", "localhost:8000"]
    elif setup == "api_key":
        argv += ["--url", "http://127.0.0.1:8000", "--api-key", "clé"]
    elif setup == "directory":
        (tmp_path / "arrays").mkdir()
        argv[3] = str(tmp_path / "arrays")
    elif setup == "rows":
        np.save(tmp_path / "short.npy", Y_PRED[:-1])
        argv[3] = str(tmp_path / "short.npy")
    elif setup == "csv_text":
        bad_csv.write_text("0.1,0.2,0.3,0.4\n0.1,0.2,0.3,0.4\n0.1,x,0.3,0.4\n")
        argv[3] = str(bad_csv)
    elif setup == "csv_ragged":
        bad_csv.write_text("0.1,0.2,0.3,0.4\n0.1,0.2,0.7\n")
        argv[3] = str(bad_csv)
    elif setup == "csv_name":
        (tmp_path / "names.csv").write_text("1\ncat\n")
        argv[1] = str(tmp_path / "names.csv")
    elif setup == "no_pred":
        np.savez(tmp_path / "only.npz", y_true=Y_TRUE)
        argv = ["--y-true", str(tmp_path / "only.npz")]
    elif setup == "key":
        argv += ["--key", "y_prob=probs"]
    elif setup == "metric":
        argv += ["--metric", "{oops"]
    elif setup == "local_evaluation":
        argv += ["--evaluation", "abc"]
    elif setup == "empty":
        np.save(tmp_path / "empty.npy", Y_TRUE[:0])
        np.save(tmp_path / "empty_pred.npy", Y_PRED[:0])
        argv = [
            "--y-true",
            str(tmp_path / "empty.npy"),
            "--y-pred",
            str(tmp_path / "empty_pred.npy"),
        ]
    code, out, err = evaluate(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("loss-service evaluate: ")
    assert message.format(dir=tmp_path) in err
    assert "clé" not in err  # an API key is a secret: never quoted back


def test_a_batch_refused_by_the_service_is_named_with_its_rows_and_the_evaluation(
    url: str, files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the local mode names it; and the evaluation holding the batches before it, which
    a rerun with --evaluation completes."""
    broken = tmp_path / "nan.npy"
    y_pred = Y_PRED.copy()
    y_pred[250, 1] = np.nan
    np.save(broken, y_pred)
    argv = ["--y-true", files["y_true"], "--y-pred", str(broken), "--batch-size", "100"]
    code, _, err = evaluate(capsys, *argv, "--url", url)
    assert code == 1 and "the service answered 422" in err
    assert "(batch 3, rows 200 to 299)" in err
    evaluation = err.split(" Evaluation ")[1].split()[0]
    assert "holds the 2 batch(es) accepted before it" in err
    code, out, err = evaluate(
        capsys,
        *argv[:2],
        "--y-pred",
        files["y_pred"],
        "--batch-size",
        "100",
        "--url",
        url,
        "--evaluation",
        evaluation,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["n_samples"] == N and json.loads(out)["n_batches"] == 6


def test_a_batch_of_another_label_family_asks_for_a_new_evaluation_stating_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Multi-label labels whose first batch holds one positive a row fix one-hot: the
    evaluation can never take the later multi-hot batch, so no rerun into it is advised;
    the encoding to state is named."""
    rng = np.random.default_rng(2)
    y_true = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 200)]
    y_true[150:, 0] = 1
    np.save(tmp_path / "multi.npy", y_true)
    np.save(tmp_path / "scores.npy", rng.random((200, 4)).astype(np.float32))
    argv = ["--y-true", str(tmp_path / "multi.npy"), "--y-pred", str(tmp_path / "scores.npy")]
    code, _, err = evaluate(capsys, *argv, "--batch-size", "100", "--url", url)
    assert code == 1 and "(batch 2, rows 100 to 199)" in err
    assert "label family was fixed by its first batch" in err
    assert "run again into a new evaluation (without --evaluation), stating " in err
    assert "--label-encoding multi_hot" in err
    assert "sends every batch again" not in err


def _split_and_refused(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], row: int
) -> tuple[int, str]:
    """The exit code and standard error of a --url run in batches of 100 rows, each sent in
    parts under a body limit of 1500 bytes, with a NaN in ``row`` of the predictions."""
    broken = tmp_path / "nan.npy"
    y_pred = Y_PRED.copy()
    y_pred[row, 1] = np.nan
    np.save(broken, y_pred)
    app = create_app(Settings(data_dir=tmp_path / "data", max_body_bytes=1500))
    argv = ["--y-true", files["y_true"], "--y-pred", str(broken), "--batch-size", "100"]
    with serve_in_thread(app) as small:
        code, _, err = evaluate(capsys, *argv, "--url", small)
    return code, err


def test_a_split_batch_refused_in_part_asks_for_a_new_evaluation(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its stored parts are under the refused batch's id: a rerun of the corrected data
    into the same evaluation would count their rows again."""
    code, err = _split_and_refused(files, tmp_path, capsys, 450)  # the last batch's 2nd half
    assert code == 1 and "(batch 5, rows 400 to 499; sent in parts" in err
    # The service's index counts from the refused part's first row, which is named.
    (start,) = re.findall(r"the refused part starting at row (\d+)", err)
    (index,) = re.findall(r"index \[(\d+), 1\]", err)
    assert int(start) + int(index) == 450
    assert "part of it is stored in evaluation" in err
    assert "run again into a new evaluation (without --evaluation)" in err
    assert "--evaluation " not in err.split("part of it is stored")[1].replace(
        "(without --evaluation)", ""
    )


def test_a_split_batch_refused_in_its_first_part_stored_nothing_of_it(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No part of the refused batch is stored: the evaluation takes the corrected data
    again (--evaluation), its accepted batches counted once."""
    code, err = _split_and_refused(files, tmp_path, capsys, 405)  # the last batch's 1st part
    assert code == 1 and "the refused part starting at row 400" in err
    assert "index [5, 1]" in err
    assert "part of it is stored" not in err
    assert "holds the 4 batch(es) accepted before it" in err and "--evaluation " in err


class _ResultsGone:
    """The service, except that reading an evaluation's results answers 404."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "GET" and path.count("/") == 3:
            body = json.dumps({"title": "Not found", "status": 404, "detail": "gone"}).encode()
            headers = [(b"content-type", b"application/problem+json")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def test_an_error_after_every_batch_is_in_names_no_batch(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _ResultsGone(create_app(Settings(data_dir=tmp_path / "data")))
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--batch-size", "100"]
    with serve_in_thread(app) as url:
        code, _, err = evaluate(capsys, *argv, "--url", url)
    assert code == 1 and "the service answered 404" in err and "gone" in err
    assert "batch" not in err


def test_the_evaluations_errors_exit_1(
    url: str, files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = tmp_path / "logits.npy"
    np.save(logits, np.log(Y_PRED))  # negative: not probabilities without --from-logits
    argv = ["--y-true", files["y_true"], "--y-pred", str(logits), "--batch-size", "100"]
    code, out, err = evaluate(capsys, *argv)
    assert (code, out) == (1, "")
    assert "batch 1 (rows 0 to 99) was refused" in err and "from_logits: true" in err
    code, out, err = evaluate(capsys, *argv, "--url", url)
    assert (code, out) == (1, "")
    assert "the service answered 422" in err and "from_logits: true" in err
    code, _, err = evaluate(capsys, *argv, "--metric", "no_such_metric")
    assert code == 1 and "the settings were refused" in err and "no_such_metric" in err
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = evaluate(capsys, *argv, "--url", closed, "--timeout", "2")
    assert code == 1 and f"cannot reach the service at {closed}" in err


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler, without its log lines on standard error."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``directory`` on a free port of 127.0.0.1."""
    handler = functools.partial(QuietFiles, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def answering(status: int, content_type: str, body: bytes) -> Any:
    """An ASGI app that answers every request alike (a web page, another API)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def test_a_server_that_is_not_the_service_exits_1(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"]]
    with file_server(tmp_path) as base:
        code, out, err = evaluate(capsys, *argv, "--url", base)
        assert (code, out) == (1, "")
        assert err == (
            f"loss-service evaluate: the server at {base} did not answer like the loss service "
            "(POST /v1/evaluations: 501 Unsupported method ('POST'), text/html); expected "
            "--url to be the loss service's base URL\n"
        )
        code, out, err = evaluate(capsys, *argv, "--url", base, "--evaluation", "abc")
        assert (code, out) == (1, "")
        assert "(GET /v1/evaluations/abc: 404 File not found, text/html)" in err
    page = answering(200, "text/html; charset=utf-8", b"<!doctype html><title>Welcome</title>")
    other_api = answering(200, "application/json", b'{"ok": true}')
    # JSON of the service's shape whose fields hold other types.
    created = b'{"id": "e1", "status": "open", "created_at": "yesterday", "updated_at": "now",'
    odd_fields = answering(201, "application/json", created + b' "n_batches": "zero"}')
    for app, media_type in (
        (page, "text/html"),
        (other_api, "application/json"),
        (odd_fields, "application/json"),
    ):
        with serve_in_thread(app) as base:
            code, out, err = evaluate(capsys, *argv, "--url", base)
        assert (code, out) == (1, ""), err
        assert err == (
            f"loss-service evaluate: the server at {base} did not answer like the loss service "
            f"(POST /v1/evaluations: {'201 Created' if app is odd_fields else '200 OK'}, "
            f"{media_type}); expected --url to be the loss service's base URL\n"
        )
    gateway = answering(502, "text/html", b"<html><h1>502 Bad Gateway</h1></html>")
    with serve_in_thread(gateway) as base:
        code, out, err = evaluate(capsys, *argv, "--url", base)
    assert (code, out) == (1, ""), err
    assert err.endswith(
        "(POST /v1/evaluations: 502 Bad Gateway, text/html); a proxy's error page: the "
        "service behind it may be down or unreachable\n"
    )


def test_the_readable_table(
    url: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        *("--y-true", files["y_true"], "--y-pred", files["y_pred"]),
        *("--class-names", files["names"], *OPTIONS),
    ]
    code, out, err = evaluate(capsys, *argv)
    assert code == 0, err
    document = evaluate_json(capsys, *argv)
    lines = out.splitlines()
    assert lines[0] == "523 samples in 1 batch; sparse labels, 4 classes"
    loss = document["losses"]["sparse_categorical_crossentropy"]
    assert f"sparse_categorical_crossentropy  {loss:.6f}" in out
    accuracy = document["metrics"]["accuracy"]
    assert f"accuracy (sparse_categorical_accuracy)  {accuracy:.6f}" in out
    per_class = document["reports"]["per_class"]
    cat, _ = [line for line in lines if line.startswith("cat ")]  # per class, the matrix
    assert cat.split() == [
        "cat",
        str(per_class["support"][0]),
        *(f"{per_class[k][0]:.6f}" for k in ("precision", "recall", "f1")),
    ]
    matrix = document["reports"]["confusion_matrix"]["matrix"]
    _, dog = [line for line in lines if line.startswith("dog ")]
    assert [int(v) for v in dog.split()[1:]] == matrix[1]
    ece = document["reports"]["calibration"]["ece"]
    assert f"calibration: ECE {ece:.6f}" in out
    code, out, _ = evaluate(capsys, *argv, "--url", url)
    assert code == 0 and "report: " + url + "/v1/evaluations/" in out
    # A --url with a user and password (a proxy's, say): the printed link leaves them out.
    with_user = url.replace("http://", "http://someone:hunter2@")
    code, out, _ = evaluate(capsys, *argv, "--url", with_user)
    assert code == 0 and "report: " + url + "/v1/evaluations/" in out
    assert "hunter2" not in out


def test_a_reader_that_goes_away_ends_it_quietly(files: dict[str, str]) -> None:
    """``loss-service evaluate ... | head -1``: exit 1, no traceback."""
    command = [sys.executable, "-m", "service.cli", "evaluate", "--quiet"]
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--report", "per_class"]
    process = subprocess.Popen(
        [*command, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # gone before the first line
    with process.stderr:
        err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert err == ""


def test_a_progress_bar_on_a_terminal_only(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--batch-size", "100"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = evaluate(capsys, *argv)
    assert code == 0 and "/523 " in err and "rows/s" in err
    assert "rows/s" not in out and out.startswith("523 samples")
    code, _, err = evaluate(capsys, *argv, "--quiet")
    assert code == 0 and err == ""


def test_help_and_invalid_service_settings(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["evaluate", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "--y-true FILE" in out and "--batch-size N" in out and "Exit codes" in out
    with pytest.raises(SystemExit) as caught:
        cli.main(["evaluate", "--y-true", files["y_true"], "--batch-size", "0"])
    assert caught.value.code == 2
    assert "expected a whole number of rows >= 1, received '0'" in capsys.readouterr().err
    for timeout in ("-1", "0", "nan", "inf", "1e9", "soon"):
        with pytest.raises(SystemExit) as caught:
            cli.main(["evaluate", "--y-true", files["y_true"], "--timeout", timeout])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert f"expected a number of seconds > 0 and <= 86400, received '{timeout}'" in err
    # The service's own settings are not the command's: an invalid one does not stop it.
    monkeypatch.setenv("LOSS_SERVICE_WORKERS", "zero")
    code, out, err = evaluate(capsys, "--y-true", files["y_true"], "--y-pred", files["y_pred"])
    assert code == 0 and out.startswith("523 samples"), err


def test_csv_cells_are_plain_numbers_and_labels_past_int64_are_not_wrapped(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``0_1`` is a number to Python's float() (label 1, silently); 1e20 and a uint64 of
    2**63 were cast to int64 and refused as -9223372036854775808."""
    y_pred = str(tmp_path / "p.npy")
    np.save(y_pred, Y_PRED[:4])
    underscored = tmp_path / "underscored.csv"
    underscored.write_text("0\n0_1\n2\n1\n")
    code, _, err = evaluate(capsys, "--y-true", str(underscored), "--y-pred", y_pred)
    assert code == 2 and f"--y-true {underscored}, line 2: '0_1' is not a number" in err
    huge = tmp_path / "huge.csv"
    huge.write_text("0\n1e20\n2\n1\n")
    code, _, err = evaluate(capsys, "--y-true", str(huge), "--y-pred", y_pred)
    assert code == 1 and "received 1e+20 at index [1]" in err
    assert "RuntimeWarning" not in err
    wide = tmp_path / "wide.npy"
    np.save(wide, np.array([0, 2**63, 2, 1], np.uint64))
    code, _, err = evaluate(capsys, "--y-true", str(wide), "--y-pred", y_pred)
    assert code == 1 and "received 9.223372036854776e+18 at index [1]" in err
    # The client sends such labels as floats too: refused with their value.
    with LossClient("http://unused") as client:
        from service.client import _wire_array

        assert _wire_array("y_true", np.array([2**64 - 1, 0], np.uint64)).dtype == np.float64
        assert _wire_array("y_true", np.array([7, 0], np.uint64)).dtype == np.int64
        assert client is not None


def test_nan_in_an_option_is_refused_as_not_json(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Python's json reads NaN, which the service would receive as null."""
    loss = '{"name": "categorical_focal_crossentropy", "gamma": NaN}'
    code, _, err = evaluate(
        capsys, "--y-true", files["y_true"], "--y-pred", files["y_pred"], "--loss", loss
    )
    assert code == 2 and "not valid JSON (NaN is not a JSON number" in err


def test_results_that_cannot_be_written_are_said_once(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A full disk on standard output: a message and exit code 1, not a traceback."""
    run = "import sys; from service import cli; sys.exit(cli.main(sys.argv[1:]))"
    with open("/dev/full", "w") as device:
        full = subprocess.run(
            [sys.executable, "-c", run, "evaluate", "--y-true", files["y_true"],
             "--y-pred", files["y_pred"]],
            stdout=device, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert full.returncode == 1, full.stderr
    assert full.stderr.startswith("loss-service evaluate: cannot write the results to standard")
    assert "Traceback" not in full.stderr


def test_ctrl_c_says_what_was_stored_and_exits_130(
    url: str,
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Locally: "interrupted"; with --url, the evaluation that holds the batches accepted
    so far, which --evaluation completes."""
    from service import cli_evaluate

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--batch-size", "100"]
    with monkeypatch.context() as patched:
        patched.setattr(cli_evaluate, "evaluate_locally", interrupted)
        code, out, err = evaluate(capsys, *argv)
    assert (code, out, err) == (130, "", "loss-service evaluate: interrupted\n")
    sent: list[int] = []

    from service.client import Evaluation

    original = Evaluation._put_new

    def put_then_interrupt(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(sent) == 2:
            raise KeyboardInterrupt
        sent.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluation, "_put_new", put_then_interrupt)
    code, out, err = evaluate(capsys, *argv, "--url", url)
    assert code == 130 and out == ""
    assert "interrupted: evaluation " in err
    assert "holds the 2 batch(es) accepted so far (200 of" in err
    assert "--evaluation " in err and "sends every batch again" in err


def test_a_connection_lost_part_way_names_the_evaluation_to_finish(
    url: str,
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service unreachable after some batches (retries spent): the evaluation that
    holds them is named, with how to finish it, as after Ctrl-C."""
    from service.client import Evaluation

    sent: list[int] = []
    original = Evaluation._put_new

    def put_then_lose(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(sent) == 2:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        sent.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluation, "_put_new", put_then_lose)
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--batch-size", "100"]
    code, out, err = evaluate(capsys, *argv, "--url", url)
    assert code == 1 and out == ""
    assert f"cannot reach the service at {url}: [Errno 111] Connection refused" in err
    (evaluation,) = re.findall(r"evaluation (\w+) holds the 2 batch\(es\) accepted so far", err)
    assert f"--evaluation {evaluation} sends every batch again" in err


def test_credentials_in_the_url_and_an_api_key_are_refused_together(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Both go in the Authorization header: the URL's would replace the key's."""
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"]]
    url = "http://user:secret@127.0.0.1:9"
    code, _, err = evaluate(capsys, *argv, "--url", url, "--api-key", "key")
    assert code == 2 and "both go in the Authorization header" in err
    assert "secret" not in err


def test_a_closed_evaluation_is_said_to_be_closed(
    url: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with LossClient(url) as client:
        closed = client.evaluation()
        closed.close()
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--url", url]
    code, _, err = evaluate(capsys, *argv, "--evaluation", closed.id)
    assert code == 1 and f"Evaluation {closed.id} is closed: it takes no new batch" in err
    assert "sends every batch again" not in err


def test_dtype_is_an_option_and_the_advice_to_use_it_names_it(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights past float32's range: the service advises `dtype: "float64"`, which the
    command takes as --dtype float64."""
    weights = str(tmp_path / "huge.npy")
    np.save(weights, np.full(N, 3e38))
    argv = ["--y-true", files["y_true"], "--y-pred", files["y_pred"], "--sample-weight", weights]
    code, _, err = evaluate(capsys, *argv)
    assert code == 1 and err.rstrip().endswith("values, or --dtype float64.")
    document = evaluate_json(capsys, *argv, "--dtype", "float64")
    assert np.isfinite(document["losses"]["sparse_categorical_crossentropy"])


def test_locally_auc_and_confusion_counts_are_not_summed_against_the_services_limit() -> None:
    # The service refuses a request whose AUC counts add up past max_statistic_cells; in
    # this process, as for elements, what NumPy holds is the limit (each AUC still keeps at
    # most the default).
    # 11 × 100,000 thresholds × 4 counts: 4.4 million, past the default 2**22.
    auc = [{"name": "auc", "num_thresholds": 100_000, "as": f"auc{i}"} for i in range(11)]
    arrays = {"y_true": np.array([0, 1, 1]), "y_pred": np.array([0.2, 0.7, 0.9])}
    with pytest.raises(PayloadTooLarge):
        streaming.parse_settings({"metrics": auc})
    got = cli_evaluate.evaluate_locally(arrays, {"metrics": auc}, 2, lambda rows: None)
    assert got["metrics"] == {f"auc{i}": pytest.approx(1.0) for i in range(11)}
