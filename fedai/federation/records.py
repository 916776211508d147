"""Conversions between fedai payloads and Flower records."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from fedai.aggregation import Payload
from fedai.errors import ProtocolError
from fedai.federation import keys


def payload_to_record(payload: Payload) -> ArrayRecord:
    """Wrap a payload (list of arrays, possibly ciphertext bytes as uint8) in an ArrayRecord."""
    return ArrayRecord([np.ascontiguousarray(a) for a in payload])


def record_to_payload(record: ArrayRecord) -> Payload:
    """Unwrap an ArrayRecord into the payload's arrays, in order."""
    return list(record.to_numpy_ndarrays())


def reply_payload(message: Message) -> Payload:
    """Return the payload carried by a reply; raises ProtocolError if it has none."""
    content = message.content
    if keys.REC_ARRAYS not in content.array_records:
        raise ProtocolError(
            f"reply must carry an ArrayRecord {keys.REC_ARRAYS!r}; got {sorted(content.keys())}"
        )
    return record_to_payload(content.array_records[keys.REC_ARRAYS])


def as_int(value: object, *, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """A record value that must be an integer in ``[lo, hi]`` (a reply is untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProtocolError(f"{what} must be an integer; got {_short(value)}")
    try:
        out = int(value)
    except (ValueError, OverflowError) as err:
        raise ProtocolError(f"{what} must be an integer; got {_short(value)}") from err
    if isinstance(value, float) and out != value:
        raise ProtocolError(f"{what} must be an integer; got {value!r}")
    _check_range(out, what, lo, hi)
    return out


def as_float(
    value: object, *, what: str, lo: float | None = None, hi: float | None = None
) -> float:
    """A record value that must be a finite number in ``[lo, hi]`` (untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what} must be a number; got {_short(value)}")
    try:
        out = float(value)
    except OverflowError as err:  # an int beyond float range
        raise ProtocolError(f"{what} must be finite; got {_short(value)}") from err
    if out != out or out in (float("inf"), float("-inf")):
        raise ProtocolError(f"{what} must be finite; got {_short(value)}")
    _check_range(out, what, lo, hi)
    return out


def _check_range(value: float, what: str, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ProtocolError(f"{what} must be in {bounds}; got {value!r}")


def _short(value: object) -> str:
    """A bounded rendering of an untrusted value for an error message."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # repr may exceed int-str limits
    text = repr(value) if isinstance(value, int | float | bool) else type(value).__name__
    if isinstance(value, str):
        text = repr(value[:60])
    return text if len(text) <= 60 else f"{text[:57]}..."


__all__ = ["as_float", "as_int", "payload_to_record", "record_to_payload", "reply_payload"]
