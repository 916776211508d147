"""Drop-outs on the coordinator: deadline, quorum, unavailable nodes and their return.

The nodes are in-process ClientApps behind a Grid that can make a node hang (its
messages are never answered, as a node whose ClientApp is stuck) or die (the SuperLink
stops listing it and answers for it with NODE_UNAVAILABLE, as Flower does after missed
heartbeats). Replies are polled (push, then pull until every reply is in or the
deadline passes), so a hung node really costs the round its deadline.
"""

import collections
import itertools
import logging
import time
import urllib.request

import numpy as np
import pytest
from flwr.app import Error, Message

from clients.app import app as client_app
from fedai.config import ExperimentConfig
from fedai.federation import flower_internals as fi
from fedai.federation.deploy import free_port
from fedai.federation.inprocess import InProcessGrid
from server.app import build_server_app

pytestmark = pytest.mark.integration

NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE
DEADLINE = 0.5  # seconds; in-process replies arrive at once, only hung nodes wait it out


class FlakyGrid(InProcessGrid):
    """In-process nodes that can hang or die."""

    def __init__(self, nodes):
        super().__init__(client_app, nodes, run_id=1, run_config={})
        self.hung: set[int] = set()  # listed, never answer
        self.dead: set[int] = set()  # not listed; the "SuperLink" answers with an error
        self.erroring: set[int] = set()  # listed, but the "SuperLink" answers with an error
        self.pushed = collections.Counter()  # messages pushed per node
        self._withheld: dict[str, Message] = {}
        self._flaky_ids = itertools.count(1)

    def get_node_ids(self):
        return [n for n in super().get_node_ids() if n not in self.dead]

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            self.pushed[nid] += 1
            if nid in self.hung:
                mid = f"h{next(self._flaky_ids)}"
                fi.set_message_id(msg, mid)
                self._withheld[mid] = msg
                ids.append(mid)
            elif nid in self.dead or nid in self.erroring:
                mid = f"d{next(self._flaky_ids)}"
                fi.set_message_id(msg, mid)
                reply = Message(
                    Error(
                        code=NODE_UNAVAILABLE,
                        reason="Node Unavailable - The destination node failed to report a "
                        "heartbeat within 2x its expected interval.",
                    ),
                    reply_to=msg,
                )
                # Flower's error replies come from the SuperLink, not the dead node.
                reply.metadata.__dict__["_src_node_id"] = fi.SUPERLINK_NODE_ID
                fi.set_message_id(reply, f"r{mid}")
                self._pending[mid] = reply
                ids.append(mid)
            else:
                ids.extend(super().push_messages([msg]))
        return ids

    def send_and_receive(self, messages, *, timeout=None):
        # Flower's contract; fedai's transport polls push/pull itself (fedai.federation.
        # polling), which the overrides above serve just the same.
        waiting = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        out = []
        while True:
            got = list(self.pull_messages(waiting))
            out += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or time.monotonic() >= end:
                return out
            time.sleep(0.01)


def _cfg(rounds, clients, **experiment):
    return ExperimentConfig.from_mapping(
        {
            "experiment": {
                "rounds": rounds,
                "num_clients": clients,
                "clients_per_round": clients,
                "round_timeout": DEADLINE,
                **experiment,
            },
            "train": {"local_epochs": 1},
        }
    )


def _run(cfg, grid, on_round=None):
    outcomes = []
    fi.set_task_identity(run_id=1, node_id=fi.SUPERLINK_NODE_ID)
    app = build_server_app(cfg, on_round=on_round, sink=outcomes.append)
    app(
        grid, fi.make_context(run_id=1, node_id=fi.SUPERLINK_NODE_ID, node_config={}, run_config={})
    )
    return outcomes[0]


def _nodes(n):
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


def _sample_value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")


def test_a_hung_node_is_waited_for_until_the_deadline_marked_and_taken_back(caplog):
    # Arrange: node 1001 (client "1") hangs after round 1 and recovers after round 3;
    # two missed rounds mark it, a probe every 2 rounds brings it back. Metrics are on.
    grid = FlakyGrid(_nodes(4))
    port = free_port()
    cfg = _cfg(6, 4, min_replies=3, max_missed_rounds=2, retry_unavailable_every=2)
    cfg = cfg.replace(monitoring=cfg.monitoring.__class__(metrics_port=port))
    scrapes = {}

    def on_round(record, total):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            scrapes[record.round] = r.read().decode()
        if record.round == 1:
            grid.hung.add(1001)
        if record.round == 3:
            grid.hung.discard(1001)

    # Act
    with caplog.at_level(logging.INFO):
        outcome = _run(cfg, grid, on_round)
    # Assert: rounds 2 and 3 went on without it after the deadline
    rounds = outcome.summary.rounds
    assert [r.status for r in rounds] == ["ok"] * 6
    assert rounds[0].trained == ["0", "1", "2", "3"]
    for r in rounds[1:3]:
        assert "1" in r.sampled
        assert sorted(r.trained) == ["0", "2", "3"]
        assert r.failures["1"].startswith("no reply within experiment.round_timeout (0.5 s)")
    # ... then it was not sampled until a probe found it again
    assert rounds[3].sampled == ["0", "2", "3"]
    assert rounds[4].sampled == ["0", "2", "3"]
    assert rounds[5].sampled == ["0", "1", "2", "3"]
    assert sorted(rounds[5].trained) == ["0", "1", "2", "3"]
    # ... and the coordinator said so, one line per failed client and round
    text = caplog.text
    assert "round 2: client 1 failed: no reply within experiment.round_timeout" in text
    assert "round 3: client 1 (node 1001) marked unavailable: missed 2 round(s) in a row" in text
    assert "round 6: client 1 (node 1001) answered again" in text
    # ... and the metrics endpoint counted the same
    assert _sample_value(scrapes[3], 'fedai_client_failures_total{reason="timeout"}') == 2
    assert _sample_value(scrapes[4], 'fedai_clients{state="unavailable"}') == 1
    assert _sample_value(scrapes[6], 'fedai_clients{state="available"}') == 4
    assert _sample_value(scrapes[6], 'fedai_rounds_completed_total{status="ok"}') == 6


def test_without_a_quorum_the_round_fails_and_the_previous_model_is_kept():
    # Arrange: 3 clients, quorum 2; two of them hang in round 2
    grid = FlakyGrid(_nodes(3))

    def on_round(record, total):
        if record.round == 1:
            grid.hung.update({1001, 1002})

    # Act
    hung = _run(_cfg(2, 3, min_replies=2), grid, on_round)
    one_round = _run(_cfg(1, 3), FlakyGrid(_nodes(3)))
    # Assert
    second = hung.summary.rounds[1]
    assert second.status == "failed"
    assert second.reason.startswith(
        "quorum not reached: 1 of 3 sampled client(s) answered within "
        "experiment.round_timeout (0.5 s); experiment.min_replies is 2"
    )
    assert set(second.failures) == {"1", "2"}
    assert all(np.array_equal(a, b) for a, b in zip(hung.payload, one_round.payload, strict=True))


def test_a_node_the_superlink_reports_unavailable_is_marked_after_missed_rounds(caplog):
    # Arrange: node 1002 still listed, but every message to it gets NODE_UNAVAILABLE
    grid = FlakyGrid(_nodes(3))

    def on_round(record, total):
        if record.round == 1:
            grid.erroring.add(1002)

    # Act
    with caplog.at_level(logging.WARNING):
        outcome = _run(_cfg(4, 3, max_missed_rounds=2, retry_unavailable_every=10), grid, on_round)
    # Assert
    rounds = outcome.summary.rounds
    assert "Node Unavailable" in rounds[1].failures["2"]
    assert "Node Unavailable" in rounds[2].failures["2"]
    assert rounds[3].sampled == ["0", "1"]
    assert "round 2: client 2 failed: Node Unavailable" in caplog.text
    assert "client 2 (node 1002) marked unavailable: missed 2 round(s)" in caplog.text


def test_a_node_that_leaves_is_dropped_at_once_and_asked_again_when_it_is_back():
    # Arrange: node 1002 disappears after round 1 and is listed again after round 3
    grid = FlakyGrid(_nodes(3))

    def on_round(record, total):
        if record.round == 1:
            grid.dead.add(1002)
        if record.round == 3:
            grid.dead.discard(1002)

    # Act
    outcome = _run(_cfg(5, 3, retry_unavailable_every=10), grid, on_round)
    # Assert: no round waited on it or failed it; a probe went out as soon as it was
    # listed again (round 4) and it trained in round 5
    rounds = outcome.summary.rounds
    assert [r.sampled for r in rounds[1:4]] == [["0", "1"]] * 3
    assert all(not r.failures for r in rounds)
    assert rounds[4].sampled == ["0", "1", "2"]
    assert sorted(rounds[4].trained) == ["0", "1", "2"]


def test_a_node_that_failed_discovery_is_not_asked_every_round_and_joins_when_it_answers():
    # Arrange: node 1003 hangs from the start and recovers after round 2
    grid = FlakyGrid(_nodes(4))
    grid.hung.add(1003)

    def on_round(record, total):
        if record.round == 2:
            grid.hung.discard(1003)

    # Act
    outcome = _run(_cfg(4, 4, retry_unavailable_every=2), grid, on_round)
    # Assert: one hello at discovery, one probe (round 3), nothing else; it joined in round 4
    rounds = outcome.summary.rounds
    assert [r.sampled for r in rounds[:3]] == [["0", "1", "2"]] * 3
    assert rounds[3].sampled == ["0", "1", "2", "3"]
    assert sorted(rounds[3].trained) == ["0", "1", "2", "3"]
    assert grid.pushed[1003] == 2 + 2  # hello, probe, then round 4's train and evaluate


def test_when_every_client_is_unavailable_they_are_all_sampled_again():
    # Arrange: both nodes hang from round 2 on; they are marked after one missed round
    grid = FlakyGrid(_nodes(2))

    def on_round(record, total):
        if record.round == 1:
            grid.hung.update({1000, 1001})

    # Act
    outcome = _run(_cfg(3, 2, max_missed_rounds=1, retry_unavailable_every=50), grid, on_round)
    # Assert: round 3 still samples both (and fails for want of contributions)
    rounds = outcome.summary.rounds
    assert rounds[2].sampled == ["0", "1"]
    assert rounds[2].status == "failed"
    assert outcome.summary.stop_reason == ""
