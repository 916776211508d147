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


def as_int(value: object, *, what: str) -> int:
    """A record value that must be an integer (a reply is untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProtocolError(f"{what} must be an integer; got {value!r}")
    try:
        out = int(value)
    except ValueError as err:
        raise ProtocolError(f"{what} must be an integer; got {value!r}") from err
    if isinstance(value, float) and out != value:
        raise ProtocolError(f"{what} must be an integer; got {value!r}")
    return out


def as_float(value: object, *, what: str) -> float:
    """A record value that must be a finite number (a reply is untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what} must be a number; got {value!r}")
    out = float(value)
    if out != out or out in (float("inf"), float("-inf")):
        raise ProtocolError(f"{what} must be finite; got {value!r}")
    return out


__all__ = ["as_float", "as_int", "payload_to_record", "record_to_payload", "reply_payload"]
