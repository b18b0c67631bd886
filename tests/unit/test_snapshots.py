"""Snapshots: pruned reads, shards committed after a snapshot, time travel, crashes, bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features import files
from features.store import BACKENDS, FeatureStore, publish_snapshot, snapshot_reader, verify_view
from features.store import snapshot as snapshot_module
from features.store.backends import FeatureArray
from features.store.compaction import run as compact_cli
from features.store.query import run as query_cli
from features.store.view import FeatureView
from schemas.errors import StoreError, UnknownImageIdsError
from tests.unit.test_store import SMALL_NARROW, commit, new_view

ROWS, SHARD_ROWS = 10, 2  # five shards


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


def values_of(n: int) -> np.ndarray:
    """Features whose first value is the row (independent expectation for every read)."""
    values = np.random.default_rng(7).standard_normal((n, 1, 320)).astype(np.float16)
    values[:, 0, 0] = np.arange(n)
    return values


def statuses_of(n: int) -> list[str]:
    return ["decode_error" if row % 4 == 3 else "ok" for row in range(n)]


def commit_rows(view: FeatureView, shard_indexes: list[int]) -> None:
    values, statuses = values_of(ROWS), statuses_of(ROWS)
    for shard in view.shards():
        if shard.index in shard_indexes and not view.is_committed(shard):
            rows = slice(shard.row_start, shard.row_stop)
            commit(view, shard, values[rows], statuses[rows])


def scenario(view: FeatureView) -> None:
    """Commit, publish, commit, publish, commit (the last shard stays after the snapshot)."""
    commit_rows(view, [0, 1])
    publish_snapshot(view, "run-1")
    commit_rows(view, [2, 3])
    publish_snapshot(view, "run-2")
    commit_rows(view, [4])


def assert_reads_exactly(root: str, committed_shards: set[int]) -> None:
    """Readers see exactly the rows of committed shards, with their true features."""
    store = FeatureStore(root)
    index = store.index("narrow")
    expected_rows = [r for r in range(ROWS) if r // SHARD_ROWS in committed_shards]
    assert index.column("row").to_pylist() == expected_rows
    assert index.column("status").to_pylist() == [statuses_of(ROWS)[r] for r in expected_rows]
    for row in range(ROWS):
        image_id = f"img{row:04d}"
        if row // SHARD_ROWS not in committed_shards:
            with pytest.raises(UnknownImageIdsError, match=image_id):
                store.table("narrow", ids=[image_id])
            continue
        table = store.table("narrow", ids=[image_id])
        assert table.column("row").to_pylist() == [row]
        if statuses_of(ROWS)[row] == "ok":
            np.testing.assert_array_equal(
                table.column("features")[0].to_numpy(), values_of(ROWS)[row]
            )


def test_snapshot_reads_match_marker_reads(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    commit_rows(view, [0, 1, 2, 3, 4])
    legacy = FeatureStore(str(tmp_path)).table("narrow")
    assert publish_snapshot(view, "t") == 1
    assert publish_snapshot(view, "t") == 1  # nothing changed: no new snapshot
    assert FeatureStore(str(tmp_path)).table("narrow").equals(legacy)
    wanted = ["img0009", "img0000", "img0004"]
    picked = FeatureStore(str(tmp_path)).table("narrow", ids=wanted, filter="status == 'ok'")
    assert picked.column("image_id").to_pylist() == wanted
    assert picked.equals(legacy.take(pc.index_in(pa.array(wanted), legacy.column("image_id"))))


def test_shards_committed_after_the_snapshot_are_visible(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    scenario(view)
    assert_reads_exactly(str(tmp_path), {0, 1, 2, 3, 4})
    assert view.committed_index().num_rows == ROWS
    assert view.last_read == {"snapshot": 2, "shards_after": [4]}


def test_removed_flags_follow_removed_json(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    commit_rows(view, [0, 1, 2, 3, 4])
    publish_snapshot(view, "t")
    files.atomic_write_text(files.join(view.path, "removed.json"), json.dumps(["img0003"]))
    index = FeatureStore(str(tmp_path)).index("narrow")
    assert index.filter(index.column("removed")).column("image_id").to_pylist() == ["img0003"]
    assert not FeatureStore(str(tmp_path)).index("narrow", as_of=1).column("removed").to_pylist()[3]


def test_time_travel_reads_an_older_snapshot(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    scenario(view)
    store = FeatureStore(str(tmp_path))
    assert store.index("narrow", as_of=1).column("row").to_pylist() == [0, 1, 2, 3]
    assert store.index("narrow", as_of=2).column("row").to_pylist() == list(range(8))
    assert store.table("narrow", ids=["img0002"], as_of=1).column("row").to_pylist() == [2]
    with pytest.raises(UnknownImageIdsError, match="img0005"):
        store.table("narrow", ids=["img0005"], as_of=1)
    with pytest.raises(StoreError, match=r"000009\.json: snapshot 9 does not exist \(as_of=9\)"):
        store.index("narrow", as_of=9)
    assert [item["snapshot"] for item in store.snapshots("narrow")] == [1, 2]


def test_legacy_view_without_snapshots_reads_and_compact_upgrades(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    commit_rows(view, [0, 2])
    before = FeatureStore(str(tmp_path)).table("narrow")
    assert before.column("row").to_pylist() == [0, 1, 4, 5]
    with pytest.raises(
        StoreError, match=r"snapshot 1 does not exist \(as_of=1\); snapshots of this view: none"
    ):
        FeatureStore(str(tmp_path)).index("narrow", as_of=1)
    assert compact_cli(["--store", str(tmp_path), "--view", "narrow"]) == 0
    assert snapshot_module.read_pointer(view.path).snapshot == 1
    assert FeatureStore(str(tmp_path)).table("narrow").equals(before)
    assert not files.exists(files.join(view.path, "lease.json"))


def test_compaction_takes_the_writer_lease(tmp_path) -> None:
    from features.store.lease import ViewLease

    view = new_view(str(tmp_path), "zarr", SMALL_NARROW, ROWS, SHARD_ROWS)
    lease = ViewLease(view.path, "extract-run")
    lease.acquire()
    try:
        assert compact_cli(["--store", str(tmp_path)]) == 1
    finally:
        lease.release()


def test_bad_snapshot_files_give_errors_naming_them(tmp_path) -> None:
    view = new_view(str(tmp_path), "zarr", SMALL_NARROW, ROWS, SHARD_ROWS)
    commit_rows(view, [0, 1])
    publish_snapshot(view, "t")
    snapshot = snapshot_module.read_snapshot(view.path, 1)
    files.remove_file(files.join(view.path, snapshot.index))
    with pytest.raises(StoreError, match=r"index\.parquet: index piece of snapshot 1 is missing"):
        FeatureStore(str(tmp_path)).table("narrow", ids=["img0000"])
    files.atomic_write_text(snapshot_module.pointer_path(view.path), '{"snapshot": 5}')
    with pytest.raises(
        StoreError,
        match=r"000005\.json: snapshot 5 does not exist \(named by .*_latest_snapshot\.json\)",
    ):
        FeatureStore(str(tmp_path)).index("narrow")
    files.atomic_write_text(snapshot_module.pointer_path(view.path), "{")
    with pytest.raises(StoreError, match=r"_latest_snapshot\.json: unreadable snapshot pointer"):
        FeatureStore(str(tmp_path)).index("narrow")


def test_missing_features_object_of_a_committed_shard_is_named(tmp_path) -> None:
    view = new_view(str(tmp_path), "zarr", SMALL_NARROW, ROWS, SHARD_ROWS)
    commit_rows(view, [0, 1])
    publish_snapshot(view, "t")
    files.remove_file(files.join(view.array.path, view.array.shard_key(1)))
    with pytest.raises(StoreError, match=r"c/1/0/0: shard 1 is committed but its features"):
        FeatureStore(str(tmp_path)).table("narrow", ids=["img0002"])


class InjectedWriteError(OSError):
    """The k-th write failed (test injection)."""


def _fail_on_call(monkeypatch, k: int) -> list[int]:
    """Make the k-th write of any kind (array shard, whole file, exclusive create) raise."""
    calls = [0]

    def wrap(function):
        def flaky(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise InjectedWriteError(f"write {k} failed (injected)")
            return function(*args, **kwargs)

        return flaky

    monkeypatch.setattr(files, "atomic_write_bytes", wrap(files.atomic_write_bytes))
    monkeypatch.setattr(files, "create_exclusive", wrap(files.create_exclusive))
    monkeypatch.setattr(files, "replace_if_unchanged", wrap(files.replace_if_unchanged))
    for backend_class in BACKENDS.values():
        monkeypatch.setattr(backend_class, "write_shard", wrap(backend_class.write_shard))
    return calls


def test_a_crash_at_any_write_loses_nothing_and_exposes_nothing(tmp_path, backend) -> None:
    clean_root = str(tmp_path / "clean")
    scenario(new_view(clean_root, backend, SMALL_NARROW, ROWS, SHARD_ROWS))
    clean = FeatureStore(clean_root).table("narrow")
    k = 0
    while True:
        k += 1
        root = str(tmp_path / f"crash{k}")
        view = new_view(root, backend, SMALL_NARROW, ROWS, SHARD_ROWS)
        with pytest.MonkeyPatch.context() as patch:
            _fail_on_call(patch, k)
            try:
                scenario(view)
                crashed = False
            except InjectedWriteError:
                crashed = True
        view.reset_cache()
        assert_reads_exactly(root, {s.index for s in view.shards() if view.is_committed(s)})
        scenario(view)  # the re-run: resumes, publishes
        assert FeatureStore(root).table("narrow").equals(clean), f"write {k}"
        assert_reads_exactly(root, {0, 1, 2, 3, 4})
        if not crashed:
            break
    assert k > 20, k  # every write of the scenario failed once


def test_a_point_lookup_opens_the_same_few_files_at_any_shard_count(tmp_path) -> None:
    counts = []
    for shards in (4, 64):
        root = str(tmp_path / f"s{shards}")
        view = new_view(root, "zarr", SMALL_NARROW, shards * SHARD_ROWS, SHARD_ROWS)
        values = values_of(shards * SHARD_ROWS)
        for shard in view.shards():
            commit(view, shard, values[shard.row_start : shard.row_stop], ["ok"] * SHARD_ROWS)
            if shard.index == shards - 3:
                publish_snapshot(view, "t")  # the last two shards come after the snapshot
        opened: list[str] = []
        hook_root = root

        def hook(event, args, hook_root=hook_root, opened=opened):
            if event == "open" and isinstance(args[0], str) and args[0].startswith(hook_root):
                opened.append(args[0])

        sys.addaudithook(hook)
        FeatureStore(root).table("narrow", ids=["img0003"])
        in_snapshot = len(opened)
        FeatureStore(root).table("narrow", ids=[f"img{shards * SHARD_ROWS - 1:04d}"])
        counts.append((in_snapshot, len(opened) - in_snapshot))
        opened.clear()
    assert counts[0] == counts[1], counts
    assert counts[0][0] <= 12 and counts[0][1] <= 12, counts


def test_query_cli_lists_snapshots_and_reads_as_of(tmp_path, backend, capsys) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    scenario(view)
    assert query_cli(["--store", str(tmp_path), "--view", "narrow", "--snapshots"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert "run-1" in lines[0] and "4 rows, 2/5 shards" in lines[0]
    assert query_cli(["--store", str(tmp_path), "--view", "narrow", "--as-of", "1"]) == 0
    assert "4 row(s)" in capsys.readouterr().out


def test_markers_carry_the_stored_features_checksum(tmp_path, backend) -> None:
    import hashlib

    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    root = tmp_path / "narrow"
    before = {path for path in root.rglob("*") if path.is_file()}
    commit_rows(view, [1])
    added = {path for path in root.rglob("*") if path.is_file()} - before
    # Found on disk, not through the marker: the one features object the commit wrote.
    (written,) = [path for path in added if path.parts[len(root.parts)].startswith("features.")]
    on_disk = json.loads((root / "commits" / "shard-000001.json").read_bytes())
    assert on_disk["features_sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    assert on_disk["features_file"] == written.relative_to(root).as_posix()
    assert view.read_marker(view.shards()[1]).features_sha256 == on_disk["features_sha256"]
    assert isinstance(view.array, FeatureArray)


def test_rows_appended_after_the_snapshot_are_found_once_committed(tmp_path, backend) -> None:
    from features.extraction.planning import allocate_rows
    from tests.unit.test_store import manifest

    view = new_view(str(tmp_path), backend, SMALL_NARROW, 4, SHARD_ROWS)
    for shard in view.shards():
        commit(view, shard, values_of(4)[shard.row_start : shard.row_stop], ["ok"] * 2)
    publish_snapshot(view, "first")
    grown = manifest(6).filter(pa.array([i != 2 for i in range(6)]))  # img0003 leaves
    view.ensure(SMALL_NARROW, allocate_rows(grown), None, backend)
    store = FeatureStore(str(tmp_path))
    with pytest.raises(UnknownImageIdsError, match="img0005"):
        store.table("narrow", ids=["img0005"])
    new_shard = view.shards()[-1]
    assert (new_shard.row_start, new_shard.row_stop) == (4, 6)
    commit(view, new_shard, values_of(6)[4:6], ["ok", "ok"])
    table = store.table("narrow", ids=["img0005", "img0000"])
    assert table.column("row").to_pylist() == [5, 0]
    np.testing.assert_array_equal(table.column("features")[0].to_numpy(), values_of(6)[5])
    index = store.index("narrow")
    assert index.column("row").to_pylist() == list(range(6))
    assert index.filter(index.column("removed")).column("image_id").to_pylist() == ["img0003"]
    assert publish_snapshot(view, "second") == 2
    assert FeatureStore(str(tmp_path)).index("narrow").equals(index)


def _features_first_value(table: pa.Table) -> list[float]:
    values = table.column("features").combine_chunks().storage.values.to_numpy()
    return values.reshape(table.num_rows, -1)[:, 0].astype(np.float32).tolist()


def test_many_ids_read_the_arrow_index_and_match_the_parquet_reads(
    tmp_path, backend, monkeypatch
) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    scenario(view)  # snapshot 2 covers shards 0-3; shard 4 came after it
    arrow_reads: list[str] = []
    original = snapshot_reader.read_arrow_piece

    def counted(path: str, what: str) -> pa.Table:
        arrow_reads.append(path)
        return original(path, what)

    monkeypatch.setattr(snapshot_reader, "read_arrow_piece", counted)
    rows = np.random.default_rng(3).permutation(ROWS)
    wanted = [f"img{row:04d}" for row in rows]
    store = FeatureStore(str(tmp_path))
    monkeypatch.setattr(snapshot_reader, "_ARROW_FROM_IDS", 2)
    through_arrow = store.table("narrow", ids=wanted)
    assert arrow_reads and all(path.endswith(".index.arrow") for path in arrow_reads)
    assert through_arrow.column("row").to_pylist() == rows.tolist()
    ok = [statuses_of(ROWS)[row] == "ok" for row in rows]
    assert through_arrow.column("status").to_pylist() == [statuses_of(ROWS)[r] for r in rows]
    firsts = _features_first_value(through_arrow)
    assert [first for first, good in zip(firsts, ok, strict=True) if good] == [
        float(row) for row, good in zip(rows, ok, strict=True) if good
    ]
    monkeypatch.setattr(snapshot_reader, "_ARROW_FROM_IDS", 10**9)
    arrow_reads.clear()
    assert store.table("narrow", ids=wanted).equals(through_arrow)
    assert not arrow_reads
    monkeypatch.setattr(snapshot_reader, "_ARROW_FROM_IDS", 2)
    assert store.index("narrow").equals(view.marker_index())


def test_format_1_snapshots_without_the_arrow_piece_still_read(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, ROWS, SHARD_ROWS)
    scenario(view)
    snapshots_dir = tmp_path / "narrow" / snapshot_module.SNAPSHOTS_DIR
    for arrow in snapshots_dir.glob("*.index.arrow"):
        arrow.unlink()  # what the previous format wrote: Parquet pieces only
    for record_file in snapshots_dir.glob("*.json"):
        record = json.loads(record_file.read_text())
        del record["index_arrow"], record["sizes"]["index_arrow"]
        record_file.write_text(json.dumps({**record, "format_version": 1}))
    pointer = tmp_path / "narrow" / snapshot_module.POINTER_FILE
    latest = json.loads(pointer.read_text())
    del latest["record"]["index_arrow"], latest["record"]["sizes"]["index_arrow"]
    latest["record"]["format_version"] = 1
    pointer.write_text(json.dumps(latest))
    assert_reads_exactly(str(tmp_path), {0, 1, 2, 3, 4})
    wanted = [f"img{row:04d}" for row in range(ROWS)][::-1]
    assert (
        FeatureStore(str(tmp_path)).table("narrow", ids=wanted).column("row").to_pylist()
        == list(range(ROWS))[::-1]
    )
    assert FeatureStore(str(tmp_path)).snapshots("narrow")[-1]["snapshot"] == 2


def test_verify_checks_the_arrow_index_copy(tmp_path) -> None:
    view = new_view(str(tmp_path), "zarr", SMALL_NARROW, ROWS, SHARD_ROWS)
    scenario(view)
    snapshot = snapshot_module.read_pointer(view.path)
    # (this scenario's failed rows carry values on purpose; only the Arrow copy matters here)
    assert not any(snapshot.index_arrow in problem for problem in verify_view(view).problems)
    arrow_path = files.join(view.path, snapshot.index_arrow)
    original = pa.ipc.open_file(pa.BufferReader(files.read_bytes(arrow_path))).read_all()
    # a copy whose rows differ from the Parquet index (one status changed)
    statuses = original.column("status").to_pylist()
    statuses[0] = "decode_error" if statuses[0] == "ok" else "ok"
    position = original.schema.get_field_index("status")
    tampered = original.set_column(
        position,
        original.schema.field("status"),
        pa.array(statuses, original.schema.field("status").type),
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, tampered.schema) as writer:
        writer.write_table(tampered)
    files.atomic_write_bytes(arrow_path, sink.getvalue().to_pybytes())
    report = verify_view(view)
    assert any(
        snapshot.index_arrow in problem and "differs" in problem for problem in report.problems
    )
    files.remove_file(arrow_path)
    report = verify_view(view)
    assert any(
        snapshot.index_arrow in problem and "missing" in problem for problem in report.problems
    )
