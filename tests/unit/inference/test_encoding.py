import pytest

from fedai.errors import InferenceError
from fedai.inference.encoding import (
    DEFAULT_PROFILE,
    Layout,
    choose_layout,
    chunk_rows,
    ciphertext_sizes,
    rows_per_ciphertext,
)


def test_rows_layout_packs_slots_divided_by_features():
    assert rows_per_ciphertext(Layout.ROWS, 30, DEFAULT_PROFILE) == 4096 // 30
    assert rows_per_ciphertext(Layout.COLUMNS, 30, DEFAULT_PROFILE) == 4096


def test_ciphertext_sizes_rows_and_columns():
    # Arrange: 200 rows of 64 features -> ROWS holds 64 rows per ciphertext.
    # Act
    rows = ciphertext_sizes(Layout.ROWS, 200, 64, DEFAULT_PROFILE)
    cols = ciphertext_sizes(Layout.COLUMNS, 200, 3, DEFAULT_PROFILE)
    # Assert
    assert rows == [64 * 64, 64 * 64, 64 * 64, 8 * 64]
    assert cols == [200, 200, 200, 200]  # 3 features + bias column
    assert chunk_rows(Layout.ROWS, 200, 64, DEFAULT_PROFILE) == [64, 64, 64, 8]


def test_choose_layout_prefers_rows_for_single_query_and_columns_for_wide_outputs():
    assert choose_layout(1, 30, 1, DEFAULT_PROFILE) is Layout.ROWS
    assert choose_layout(360, 64, 128, DEFAULT_PROFILE) is Layout.COLUMNS


def test_rows_layout_rejects_rows_wider_than_a_ciphertext():
    with pytest.raises(InferenceError, match="features <= 4096"):
        rows_per_ciphertext(Layout.ROWS, 5000, DEFAULT_PROFILE)


def test_zero_features_rejected():
    with pytest.raises(InferenceError, match="features must be >= 1; got 0"):
        rows_per_ciphertext(Layout.COLUMNS, 0, DEFAULT_PROFILE)
