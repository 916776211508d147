import numpy as np
import pytest

from fedai.aggregation import PlainCodec, PlainSum
from fedai.errors import CorruptPayloadError


def test_plain_fedavg_is_the_weighted_mean():
    codec, summer = PlainCodec(), PlainSum()
    w1 = [np.array([1.0, 2.0], np.float32), np.array([[3.0]], np.float32)]
    w2 = [np.array([3.0, 6.0], np.float32), np.array([[5.0]], np.float32)]
    payloads = [codec.encode(w1, 1.0), codec.encode(w2, 3.0)]
    for p in payloads:
        summer.check(p)
    out = codec.decode(summer.sum(payloads), 4.0, [(2,), (1, 1)])
    np.testing.assert_allclose(out[0], [2.5, 5.0])
    np.testing.assert_allclose(out[1], [[4.5]])


def test_plain_rejects_bad_payloads():
    summer, codec = PlainSum(), PlainCodec(bound=10.0)
    with pytest.raises(CorruptPayloadError, match="at least one array"):
        summer.check([])
    with pytest.raises(CorruptPayloadError, match="must be finite"):
        summer.check([np.array([np.nan])])
    with pytest.raises(CorruptPayloadError, match="must be a float array"):
        summer.check([np.zeros(3, np.uint8)])
    with pytest.raises(CorruptPayloadError, match="shapes must be"):
        summer.sum([[np.zeros(2)], [np.zeros(3)]])
    with pytest.raises(CorruptPayloadError, match=r"within \+-10; got 1e\+31"):
        codec.decode([np.array([1e31])], 1.0, [(1,)])
    with pytest.raises(CorruptPayloadError, match="total weight must be > 0"):
        codec.decode([np.array([1.0])], 0.0, [(1,)])
