"""features.store.verify finds tampering and leaks, and passes clean views (every backend)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.store import BACKENDS, verify
from tests.unit.test_store import SMALL_NARROW, commit, new_view


@pytest.fixture(params=sorted(BACKENDS))
def view(request, tmp_path):
    view = new_view(str(tmp_path), request.param, SMALL_NARROW, 6, 2)
    values = np.random.default_rng(0).standard_normal((6, 1, 320)).astype(np.float16)
    values[3] = np.nan
    for shard in view.shards()[:2]:
        rows = slice(shard.row_start, shard.row_stop)
        statuses = [
            "ok" if row != 3 else "decode_error" for row in range(shard.row_start, shard.row_stop)
        ]
        commit(view, shard, values[rows], statuses)
    return view


def test_clean_view_verifies_with_a_note_for_uncommitted_bytes(view, capsys) -> None:
    report = verify.verify_view(view)
    assert report.ok and report.shards_checked == 2 and report.rows_checked == 4
    view.array.write_shard(4, np.ones((2, 1, 320), np.float16))  # crash before its marker
    report = verify.verify_view(view)
    assert report.ok
    assert any("uncommitted bytes" in note for note in report.notes)
    assert verify.run(["--store", view.store_root]) == 0
    assert "narrow: OK: 2 committed shard(s)" in capsys.readouterr().out


def test_nan_in_an_ok_row_fails(view) -> None:
    values = view.array.read_range(0, 2)
    values[1, 0, 7] = np.nan
    view.array.write_shard(0, values)
    report = verify.verify_view(view)
    assert not report.ok and "row 1 is ok but has NaN" in report.problems[0]


def test_values_in_a_failed_row_fail(view) -> None:
    values = view.array.read_range(2, 4)
    values[1] = 1.0
    view.array.write_shard(2, values)
    assert any(
        "row 3 is decode_error but has values" in p for p in verify.verify_view(view).problems
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("status_counts", {"ok": 2}, "status counts"),
        ("image_ids_sha256", "0" * 64, "image-id digest"),
    ],
)
def test_tampered_marker_fails(view, capsys, field, value, message) -> None:
    path = view.marker_path(view.shards()[1])
    with open(path) as handle:
        marker = json.load(handle)
    marker[field] = value
    with open(path, "w") as handle:
        json.dump(marker, handle)
    report = verify.verify_view(view)
    assert not report.ok and any(message in problem for problem in report.problems)
    assert verify.run(["--store", view.store_root]) == 1
    assert "FAILED" in capsys.readouterr().out
