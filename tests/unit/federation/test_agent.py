"""The client agent's pieces: Flower internals it tunes, torch threads, FAB check, polling."""

import io
import time
import zipfile
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable import inflatable_utils
from flwr.supernode import start_client_internal as sci

from fedai.federation import agent
from fedai.federation import flower_internals as fi
from fedai.federation.polling import send_and_receive, shorten_object_backoff

REPO = Path(__file__).resolve().parents[3]


def test_supernode_polling_is_tuned_through_flowers_own_module_attributes(monkeypatch):
    # Arrange: undo whatever the test changes
    monkeypatch.setattr(sci, "time", time)
    monkeypatch.setattr(sci, "pull_objects", inflatable_utils.pull_objects)
    # Act
    changed = agent.tune_supernode_polling(0.2)
    # Assert: sleeps capped, object-pull backoff shortened, other time functions intact
    assert changed
    assert sci.time._cap == 0.2
    assert sci.time.monotonic is time.monotonic
    assert sci.pull_objects.func is inflatable_utils.pull_objects
    assert sci.pull_objects.keywords == {"initial_backoff": 0.02, "backoff_cap": 0.5}


def test_poll_interval_of_three_seconds_leaves_flower_alone(monkeypatch):
    monkeypatch.setattr(sci, "time", time)
    assert not agent.tune_supernode_polling(3.0)
    assert sci.time is time


def test_a_moved_flower_internal_is_an_error_not_a_silent_no_op(monkeypatch):
    monkeypatch.setattr(sci, "time", object())
    with pytest.raises(RuntimeError, match="poll-interval 3"):
        agent.tune_supernode_polling(0.2)


def test_torch_threads_from_node_config():
    before = torch.get_num_threads()
    try:
        assert agent.set_torch_threads({}) == 1
        assert torch.get_num_threads() == 1
        assert agent.set_torch_threads({"torch-threads": 2}) == 2
        for bad in ("0", "two", "1.5", -1):
            with pytest.raises(ValueError, match="torch-threads"):
                agent.set_torch_threads({"torch-threads": bad})
    finally:
        torch.set_num_threads(before)


def _fab(clientapp: str) -> Fab:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    text = text.replace('clientapp = "clients.app:app"', f'clientapp = "{clientapp}"')
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pyproject.toml", text)
    return Fab(hash_str="0" * 64, content=buffer.getvalue(), verifications={})


def test_the_agent_runs_only_fedais_installed_clientapp():
    assert agent.fab_problem(_fab("clients.app:app")) == ""
    problem = agent.fab_problem(_fab("evil.app:app"))
    assert "clients.app:app" in problem
    assert "evil.app:app" in problem
    assert "readable" in agent.fab_problem(Fab("0" * 64, b"not a zip", {}))


class _SlowGrid:
    """A grid whose replies arrive after a number of pulls (or never)."""

    def __init__(self, pulls_needed: int | None) -> None:
        self.pulls_needed = pulls_needed
        self.pulls = 0
        self.pending: dict[str, Message] = {}

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            fi.set_message_id(msg, mid)
            self.pending[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.pulls_needed is None or self.pulls < self.pulls_needed:
            return []
        out = []
        for mid in message_ids:
            reply = Message(RecordDict({"r": ConfigRecord({"ok": 1})}), reply_to=self.pending[mid])
            out.append(reply)
        return out


def _messages(n: int) -> list[Message]:
    fi.set_task_identity(run_id=1, node_id=fi.SUPERLINK_NODE_ID)
    return [
        Message(RecordDict(), dst_node_id=10 + i, message_type="train", group_id="1")
        for i in range(n)
    ]


def test_send_and_receive_polls_until_every_reply_is_in():
    grid = _SlowGrid(pulls_needed=3)
    replies = send_and_receive(grid, _messages(2), timeout=60, interval=0.01)
    assert len(replies) == 2
    assert grid.pulls == 3


def test_send_and_receive_returns_what_it_has_at_the_timeout():
    grid = _SlowGrid(pulls_needed=None)
    assert send_and_receive(grid, _messages(2), timeout=0.05, interval=0.01) == []
    assert grid.pulls >= 2


def test_object_backoff_is_left_alone_for_other_grids():
    assert not shorten_object_backoff(_SlowGrid(pulls_needed=1))
