"""The reference-reader baseline delivers what the reference would: every row once, fp16."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.reference_hdf5 import reference_batches, write_reference_file


def test_reference_reader_delivers_each_row_once_from_one_variant_per_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.random((50, 3, 4)).astype(np.float16)
    ids = [f"{index:04d}" for index in range(50)]
    path = str(tmp_path / "reference.h5")
    write_reference_file(path, ids, features)
    targets = np.arange(50.0)
    batches = list(reference_batches(path, ids, targets, 8, seed=1, workers=2, max_queue_size=3))
    assert [len(y) for _, y in batches] == [8] * 6 + [2]
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == targets.tolist()
    for x, y in batches:
        assert x.dtype == np.float16
        rows = features[y.astype(int)]  # [batch, variants, 4]
        matches = [np.array_equal(x, rows[:, variant]) for variant in range(3)]
        assert sum(matches) == 1  # the whole batch from one variant group, as kutils reads it
    as_float32 = next(reference_batches(path, ids, targets, 8, seed=1, dtype=np.float32))[0]
    assert as_float32.dtype == np.float32
    assert np.array_equal(as_float32, batches[0][0].astype(np.float32))
