"""Evaluation over a synthetic store: TTA averages exactly the stored variants, rows stay aligned."""

from __future__ import annotations

import numpy as np
import pytest

from features.training.evaluation import evaluate_split, predict_variants, scores_from_outputs
from features.training.input_stream import select_rows
from schemas.errors import ConfigError
from schemas.view_spec import FeatureViewSpec
from tests.helpers.synthetic_store import build_encoded_view, labels_by_row, score_of_row

SPEC = FeatureViewSpec(
    name="narrow", taps=("mixed_5b",), weights_id="random:1", variants=("0_0_0", "1_1_1", "orig")
)


def row_and_variant(features: np.ndarray) -> np.ndarray:
    """A fake head: 100 * row + variant index, read from the encoded features."""
    flat = features.reshape(len(features), -1).astype(np.float64)
    return 100.0 * flat[:, 0] + flat[:, 1]


@pytest.fixture(scope="module")
def view_and_labels(tmp_path_factory):
    view = build_encoded_view(str(tmp_path_factory.mktemp("s")), SPEC, 12, 5, frozenset({4}))
    ids = [f"img{i:04d}" for i in range(12)]
    return view, labels_by_row(ids, ["test" if i % 2 else "train" for i in range(12)])


def test_tta_averages_every_stored_variant(view_and_labels) -> None:
    view, labels = view_and_labels
    result = evaluate_split(row_and_variant, view, labels, "test", tta=True)
    rows = np.array([int(i[3:]) for i in result.image_ids])
    assert rows.tolist() == [1, 3, 5, 7, 9, 11]
    np.testing.assert_allclose(result.prediction, 100.0 * rows + (0 + 1 + 2) / 3)
    np.testing.assert_allclose(result.truth, score_of_row(rows))
    assert result.variants == ("0_0_0", "1_1_1", "orig")


def test_plain_evaluation_uses_the_orig_variant_and_skips_bad_rows(view_and_labels) -> None:
    view, labels = view_and_labels
    result = evaluate_split(row_and_variant, view, labels, "train", tta=False)
    rows = np.array([int(i[3:]) for i in result.image_ids])
    assert rows.tolist() == [0, 2, 6, 8, 10]  # row 4 has a failed status
    np.testing.assert_allclose(result.prediction, 100.0 * rows + 2)
    assert result.skipped == {"status_decode_error": 1}
    table = result.predictions_table()
    assert table.column_names == ["image_id", "prediction"]


def test_per_variant_scores_are_in_row_order(view_and_labels) -> None:
    view, labels = view_and_labels
    selection = select_rows(view.committed_index(), labels, None)
    scores = predict_variants(row_and_variant, view, selection, [2, 0], batch_size=4)
    expected = 100.0 * selection.rows[:, None] + np.array([2, 0])[None, :]
    np.testing.assert_allclose(scores, expected)


def test_distribution_outputs_become_mean_scores_and_bad_requests_fail(view_and_labels) -> None:
    peak = np.zeros((2, 10))
    peak[0, 2], peak[1, 9] = 1.0, 1.0
    np.testing.assert_allclose(scores_from_outputs(peak), [3.0, 10.0])
    np.testing.assert_allclose(scores_from_outputs(np.array([[4.5], [6.0]])), [4.5, 6.0])
    view, labels = view_and_labels
    with pytest.raises(ConfigError, match="--split 'nope'"):
        evaluate_split(row_and_variant, view, labels, "nope")
    with pytest.raises(ConfigError, match="--metrics"):
        evaluate_split(row_and_variant, view, labels, "test", metric_set="x")
