"""How a client reads the coordinator's run identity from a train message."""

from __future__ import annotations

import pytest

from clients.privacy import RunRef
from fedai.errors import ProtocolError
from fedai.federation import keys


def test_a_message_without_a_run_id_is_a_protocol_error() -> None:
    # Without a run id a re-sent round could not be claimed once: it would be charged again.
    with pytest.raises(ProtocolError, match=r"must carry 'fedai\.run-id'"):
        RunRef.from_config({keys.KEY_SERVER_ROUND: 3}, round_=3)


def test_run_id_session_and_resume_point_are_read() -> None:
    config = {keys.KEY_RUN_ID: "abc", keys.KEY_RUN_SESSION: "s2", keys.KEY_RESUMED_AFTER: 2}
    assert RunRef.from_config(config, round_=3) == RunRef("abc", "s2", 2)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({keys.KEY_RUN_ID: ""}, "fedai.run-id must be"),
        ({keys.KEY_RUN_ID: 5}, "fedai.run-id must be"),
        ({keys.KEY_RUN_ID: "a" * 65}, "fedai.run-id must be"),
        ({keys.KEY_RUN_ID: "a", keys.KEY_RUN_SESSION: "x\x00"}, "fedai.run-session must be"),
        ({keys.KEY_RUN_ID: "a", keys.KEY_RESUMED_AFTER: 3}, r"resumed-after must be in \[0, 2\]"),
        ({keys.KEY_RUN_ID: "a", keys.KEY_RESUMED_AFTER: -1}, "resumed-after must be in"),
        ({keys.KEY_RUN_ID: "a", keys.KEY_RESUMED_AFTER: "two"}, "resumed-after must be"),
    ],
)
def test_a_malformed_run_identity_is_a_protocol_error(
    config: dict[str, object], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        RunRef.from_config(config, round_=3)
