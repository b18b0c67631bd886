"""Streaming input: every (feature, label) pair stays aligned through block and buffer shuffles."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from features.training.input_stream import (
    BlockReader,
    InputConfig,
    iter_all_variants,
    make_dataset,
    plan_blocks,
    select_rows,
    shuffle_capacity,
)
from schemas.errors import ConfigError
from schemas.view_spec import FeatureViewSpec, PoolingSpec
from tests.helpers.synthetic_store import build_encoded_view, labels_by_row, score_of_row

VARIANTS = ("0_0_0", "0_0_1", "1_1_0")
NARROW = FeatureViewSpec(
    name="narrow", taps=("mixed_5b",), weights_id="random:1", variants=VARIANTS
)
WIDE = FeatureViewSpec(
    name="wide",
    taps=("mixed_5b",),
    pooling=PoolingSpec("grid", (2, 2)),
    weights_id="random:1",
    variants=VARIANTS,
)
N_ROWS, BAD_ROWS = 37, frozenset({3, 20})


def labelled_ids() -> tuple[list[str], list[str]]:
    """Labels for rows 0..34 (35, 36 unlabelled) plus two ids the store lacks."""
    ids = [f"img{i:04d}" for i in range(35)] + ["img9998", "img9999"]
    splits = ["val" if i % 6 == 5 else "train" for i in range(len(ids))]
    return ids, splits


@pytest.fixture(scope="module", params=[NARROW, WIDE], ids=["narrow", "wide"])
def store(request, tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("store"))
    view = build_encoded_view(root, request.param, N_ROWS, 4, BAD_ROWS)
    ids, splits = labelled_ids()
    labels = labels_by_row(ids, splits)
    return {"view": view, "labels": labels, "selection": None}


def expected_train_rows() -> set[int]:
    ids, splits = labelled_ids()
    rows = {int(i[3:]) for i, s in zip(ids, splits, strict=True) if s == "train"}
    return {r for r in rows if r < N_ROWS and r not in BAD_ROWS}


def test_selection_keeps_ok_labelled_rows_and_reports_skips(store) -> None:
    selection = select_rows(store["view"].committed_index(), store["labels"], "train")
    assert set(selection.rows.tolist()) == expected_train_rows()
    assert list(selection.rows) == sorted(selection.rows)
    np.testing.assert_allclose(selection.targets[:, 0], score_of_row(selection.rows))
    assert dict(selection.skipped) == {"not_in_store": 1, "status_decode_error": 2}


def test_one_shuffled_epoch_with_variants_is_aligned(store) -> None:
    view = store["view"]
    selection = select_rows(view.committed_index(), store["labels"], "train")
    config = InputConfig(batch_size=5, shuffle=True, seed=3, shuffle_buffer=8)
    dataset = make_dataset(BlockReader(view, selection, config), with_positions=True)
    epochs = []
    for _ in range(2):
        seen_rows, seen_variants = [], []
        for features, targets, positions in dataset:
            flat = features.numpy().reshape(features.shape[0], -1)
            rows = flat[:, 0].astype(np.int64)
            np.testing.assert_array_equal(rows, selection.rows[positions.numpy()])
            np.testing.assert_allclose(targets.numpy()[:, 0], score_of_row(rows), rtol=1e-6)
            assert features.dtype.name == "float16" and features.shape[0] <= 5
            seen_rows += rows.tolist()
            seen_variants += flat[:, 1].astype(int).tolist()
        assert Counter(seen_rows) == Counter(expected_train_rows())
        assert set(seen_variants) == {0, 1, 2}
        epochs.append(seen_rows)
    assert epochs[0] != sorted(epochs[0]) and epochs[0] != epochs[1]


def test_distribution_targets_and_label_noise_stay_aligned(store) -> None:
    view = store["view"]
    selection = select_rows(view.committed_index(), store["labels"], "train", "distribution")
    reader = BlockReader(view, selection, InputConfig(batch_size=7, seed=1))
    for features, targets in make_dataset(reader):
        rows = features.numpy().reshape(features.shape[0], -1)[:, 0].astype(int)
        assert (np.argmax(targets.numpy(), axis=1) == rows % 10).all()
    noisy = select_rows(view.committed_index(), store["labels"], "train")
    reader = BlockReader(view, noisy, InputConfig(batch_size=50, seed=1, label_noise=0.5))
    features, targets = next(iter(make_dataset(reader)))
    rows = features.numpy().reshape(features.shape[0], -1)[:, 0]
    residual = targets.numpy()[:, 0] - score_of_row(rows)
    assert 0.2 < residual.std() < 1.0


def test_fixed_variant_and_row_order_for_evaluation(store) -> None:
    view = store["view"]
    selection = select_rows(view.committed_index(), store["labels"], "val")
    config = InputConfig(batch_size=4, shuffle=False, variant_mode="fixed", variant=2)
    batches = list(BlockReader(view, selection, config).epoch_batches(0))
    stacked = np.concatenate([b[0].reshape(len(b[0]), -1) for b in batches])
    np.testing.assert_array_equal(stacked[:, 0], selection.rows)
    assert set(stacked[:, 1]) == {2}
    for values, positions in iter_all_variants(view, selection, 3, [0, 2]):
        flat = values.reshape(*values.shape[:2], -1)
        expected = np.repeat(selection.rows[positions][:, None], 2, axis=1)
        np.testing.assert_array_equal(flat[:, :, 0], expected)
        np.testing.assert_array_equal(flat[0, :, 1], [0, 2])


def test_blocks_are_chunk_aligned() -> None:
    rows = np.array([0, 1, 5, 6, 7, 8, 15, 16])
    blocks = plan_blocks(rows, 4)
    assert [rows[b].tolist() for b in blocks] == [[0, 1], [5, 6, 7], [8], [15], [16]]
    assert plan_blocks(np.array([], dtype=np.int64), 4) == []


def test_config_validation_and_buffer_cap() -> None:
    with pytest.raises(ConfigError, match="--batch-size"):
        InputConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--label-noise"):
        InputConfig(label_noise=-1.0)
    with pytest.raises(ConfigError, match="unknown"):
        InputConfig.from_dict({"bogus": 1})
    config = InputConfig(shuffle_buffer=10_000, shuffle_buffer_mb=1)
    assert shuffle_capacity(config, 5 * 5 * 16928 * 2) == 1
    assert InputConfig.from_dict(config.to_dict()) == config


def test_retain_freed_memory_is_applied_exactly_on_glibc() -> None:
    import platform

    from features.training.input_stream import retain_freed_memory

    assert retain_freed_memory() is (platform.libc_ver()[0] == "glibc")  # mallopt is glibc's


def _epoch(reader: BlockReader, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(f.copy(), p.copy()) for f, _, p in reader.epoch_batches(epoch)]


def test_windows_hold_whole_batches_and_epochs_are_reproducible(store) -> None:
    view = store["view"]
    selection = select_rows(view.committed_index(), store["labels"], "train")
    config = InputConfig(batch_size=5, seed=7, shuffle_buffer=12)
    reader = BlockReader(view, selection, config)
    assert reader.window_size() == 10  # whole batches, at most the buffer
    first = _epoch(reader, 0)
    sizes = [len(positions) for _, positions in first]
    assert sizes[:-1] == [5] * (len(sizes) - 1) and 0 < sizes[-1] <= 5
    assert sum(sizes) == len(selection)
    again = _epoch(BlockReader(view, selection, config), 0)  # a new reader, same seed
    for (features, positions), (features_again, positions_again) in zip(first, again, strict=True):
        np.testing.assert_array_equal(positions, positions_again)
        np.testing.assert_array_equal(features, features_again)  # same variants drawn
    assert [p.tolist() for _, p in _epoch(reader, 1)] != [p.tolist() for _, p in first]


def test_batches_held_by_tensorflow_survive_later_epochs(store) -> None:
    """Window buffers are recycled only once no batch of them is alive."""
    view = store["view"]
    selection = select_rows(view.committed_index(), store["labels"], "train")
    config = InputConfig(batch_size=4, seed=2, shuffle_buffer=8)
    dataset = make_dataset(BlockReader(view, selection, config), with_positions=True)
    kept = list(dataset)  # epoch 0, every tensor kept alive
    for _ in range(3):
        for _batch in dataset:
            pass
    for features, _, positions in kept:
        rows = features.numpy().reshape(features.shape[0], -1)[:, 0].astype(np.int64)
        np.testing.assert_array_equal(rows, selection.rows[positions.numpy()])


def test_buffer_pool_reuses_only_unreferenced_buffers() -> None:
    from features.training.input_stream import BufferPool

    pool = BufferPool(keep=3)
    first = pool.empty((4, 16), np.dtype(np.float16))
    assert first.ctypes.data % 64 == 0 and first.shape == (4, 16)
    address = first.ctypes.data
    second = pool.empty((4, 16), np.dtype(np.float16))
    assert second.ctypes.data != address  # first is still referenced
    batch = first[:2]
    del first
    third = pool.empty((4, 16), np.dtype(np.float16))
    assert third.ctypes.data != address  # a view of it still is
    del batch  # now nothing references the first buffer
    fourth = pool.empty((4, 16), np.dtype(np.float16))
    assert fourth.ctypes.data == address and len(pool.mappings) == 3
    beyond = pool.empty((4, 16), np.dtype(np.float16))  # all 3 in use: not kept
    assert len(pool.mappings) == 3 and beyond.ctypes.data % 64 == 0
