"""The hostile-load suite, bounded (``make hostile`` runs the full one): every attack of
``bench/hostile.py`` against ``loss-service serve`` with default settings."""

from __future__ import annotations

import pytest

from bench import hostile


@pytest.mark.timeout(600)
def test_the_service_holds_up_under_the_bounded_hostile_load() -> None:
    report = hostile.run("bounded")
    print("\n" + hostile.table(report))
    assert hostile.failures(report) == []
    attacks = {a["name"]: a for a in report["attacks"]}
    # Each attack got the answer it should (not only "some allowed status").
    assert set(attacks["slow_headers"]["answers"]) == {"408"}
    assert set(attacks["slow_bodies"]["answers"]) == {"408"}
    assert set(attacks["idle_declared"]["answers"]) <= {"408", "503"}
    for name in ("many_headers", "huge_header", "endless_header"):
        assert attacks[name]["answers"] == {"431": 1}
    assert attacks["many_heads"]["answers"] == {"413": 1}
    assert set(attacks["big_binary_uint8"]["answers"]) == {"413"}
    for name in ("big_json_lists", "big_json_escaped", "big_typed_arrays", "big_binary"):
        assert attacks[name]["answers"].get("200", 0) >= 1, attacks[name]
