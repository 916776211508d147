"""Client-chosen text on the coordinator: client ids and reasons reach terminals and logs."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord

from fedai.errors import ProtocolError
from fedai.federation import keys
from server.transport import clip_text, parse_hello


def hello(client_id: str) -> ConfigRecord:
    return ConfigRecord(
        {
            keys.KEY_CLIENT_ID: client_id,
            keys.KEY_NUM_TRAIN: 10,
            keys.KEY_NUM_TEST: 2,
            keys.KEY_INPUT_SHAPE: "4",
            keys.KEY_NUM_CLASSES: 2,
        }
    )


def test_a_reason_loses_its_escape_sequences_and_line_breaks() -> None:
    text = clip_text("refused\x1b[2J\x1b]0;owned\x07\nsecond line\ttab")

    assert "\x1b" not in text
    assert "\x07" not in text
    assert text == "refused?[2J?]0;owned? second line tab"


def test_a_long_reason_is_cut_and_printable_text_is_kept() -> None:
    assert clip_text("é ok") == "é ok"
    assert clip_text("x" * 400, limit=10) == "xxxxxxx..."


def test_a_client_id_with_control_characters_is_refused_at_discovery() -> None:
    assert parse_hello(7, hello("site-1")).client_id == "site-1"

    with pytest.raises(ProtocolError, match="printable") as err:
        parse_hello(7, hello("site\x1b[31m-1"))
    assert "\x1b" not in str(err.value)
