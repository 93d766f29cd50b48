"""A short run of the load test (``make load`` is the full one): no errors, the numbers
printed; the server's RSS stays within 10% of its size after the warm-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_RSS_GROWTH_PCT = 10.0


@pytest.mark.timeout(120)
def test_short_load_run() -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "load.py"),
        "--seconds",
        "5",
        "--warmup",
        "3",
        "--clients",
        "4",
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=ROOT)
    print("\n" + result.stdout)
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    numbers = json.loads(lines[-1])
    assert numbers["errors"] == 0, numbers["first_errors"]
    assert numbers["warmup_errors"] == 0
    assert numbers["small"] > 0
    assert numbers["large"] > 0
    assert numbers["server_exit_code"] == 0
    assert numbers["rss_growth_pct"] <= MAX_RSS_GROWTH_PCT, numbers
    assert result.returncode == 0, result.stderr[-3000:]
