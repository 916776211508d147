import numpy as np
import pytest

from fedai.data.files import load_csv, load_npz
from fedai.errors import DataError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_loads_features_and_labels(tmp_path):
    p = write(tmp_path / "d.csv", "a,label,b\n1.0,0,2\n3,1,4.5\n")
    x, y = load_csv(p)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, [[1.0, 2.0], [3.0, 4.5]])
    np.testing.assert_array_equal(y, [0, 1])


def test_csv_custom_label_column(tmp_path):
    p = write(tmp_path / "d.csv", "target,a\n1,5\n0,6\n")
    _, y = load_csv(p, label_column="target")
    np.testing.assert_array_equal(y, [1, 0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", r"label column 'label' not found; columns are \['a', 'b'\]"),
        ("a,label\n1,0\nnan,1\n", r"features must be finite; got NaN/inf in row\(s\) \[1\]"),
        ("a,label\n1,0\nx,1\n", r"line 3 column 'a' must be numeric; got 'x'"),
        ("a,label\n1,0\n2\n", "line 3 must have 2 fields; got 1"),
        ("a,label\n1,0.5\n", "labels must be integers"),
        ("a,label\n1,\n", "must be numeric"),
        ("a,label\n", "at least one data row"),
        ("label\n1\n", "at least one feature column"),
    ],
)
def test_csv_bad_files_give_clear_errors(tmp_path, text, message):
    p = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=message):
        load_csv(p)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DataError, match="cannot be read as CSV"):
        load_csv(binary)
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"cannot be read as \.npz"):
        load_npz(fake)


def test_npz_roundtrip_and_errors(tmp_path):
    good = tmp_path / "g.npz"
    np.savez(good, X=np.ones((4, 3)), y=np.array([0, 1, 1, 0]))
    x, y = load_npz(good)
    assert x.shape == (4, 3)
    assert y.tolist() == [0, 1, 1, 0]
    missing = tmp_path / "m.npz"
    np.savez(missing, X=np.ones((4, 3)))
    with pytest.raises(DataError, match=r"expected arrays X and y; missing \['y'\]"):
        load_npz(missing)
    mismatch = tmp_path / "mm.npz"
    np.savez(mismatch, X=np.ones((4, 3)), y=np.array([0, 1]))
    with pytest.raises(DataError, match="same non-zero length; got 4 and 2"):
        load_npz(mismatch)
    nan = tmp_path / "nan.npz"
    np.savez(nan, X=np.full((2, 2), np.nan), y=np.array([0, 1]))
    with pytest.raises(DataError, match="finite"):
        load_npz(nan)
    strings = tmp_path / "s.npz"
    np.savez(strings, X=np.array([["a", "b"]]), y=np.array([0]))
    with pytest.raises(DataError, match="features must be numeric"):
        load_npz(strings)
