"""The ClientApp's per-node decode cache (``clients.app._decode_once``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import clients.app as client_app


class _CountingCodec:
    """Decodes by dividing the first array by the total; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, payload: list[np.ndarray], total: float, shapes: object) -> list[np.ndarray]:
        self.calls += 1
        return [payload[0].astype(np.float64) / total]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    client_app._last_aggregate.clear()
    client_app._last_decoded.clear()
    yield
    client_app._last_aggregate.clear()
    client_app._last_decoded.clear()


def _decode(codec: _CountingCodec, payload: list[np.ndarray], total: float, node: int) -> float:
    out = client_app._decode_once(codec, payload, total, [(4,)], node_id=node)  # type: ignore[arg-type]
    return float(out[0][0])


def test_each_node_decodes_an_aggregate_once_and_gets_a_private_copy() -> None:
    codec = _CountingCodec()
    payload = [np.arange(4, dtype=np.uint8) + 8]

    first = client_app._decode_once(codec, payload, 2.0, [(4,)], node_id=1)  # type: ignore[arg-type]
    first[0][:] = -1  # the caller may train on it in place
    again = _decode(codec, payload, 2.0, node=1)
    _decode(codec, [a.copy() for a in payload], 2.0, node=2)

    assert again == 4.0
    assert codec.calls == 2  # node 1 once, node 2 once: decodes are never shared
    assert len(client_app._last_aggregate) == 1  # one aggregate copy for all nodes


def test_a_changed_byte_or_total_decodes_again() -> None:
    codec = _CountingCodec()
    payload = [np.zeros(4, dtype=np.uint8)]
    _decode(codec, payload, 2.0, node=1)

    flipped = [payload[0].copy()]
    flipped[0][3] ^= 1
    _decode(codec, flipped, 2.0, node=1)
    _decode(codec, flipped, 3.0, node=1)
    payload[0][0] = 7  # the caller's buffer changes after the call: the cache kept a copy
    assert _decode(codec, [np.zeros(4, dtype=np.uint8)], 2.0, node=1) == 0.0

    assert codec.calls == 4
