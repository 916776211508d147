"""The SuperNode's object pull turns Flower's RunNotRunningException into a failure.

flwr 1.41 ignores a message whose run stopped while its objects were pulled, but leaves
its task open; the agent, which acquired the task, then waits for objects that never
come. As an ``Exception`` the SuperNode finishes the task as failed instead.
"""

import time

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError
from flwr.supercore.run import RunNotRunningException
from flwr.supernode import start_client_internal as sci

from fedai.federation import agent


@pytest.fixture
def tuned(monkeypatch):
    monkeypatch.setattr(sci, "time", time)
    monkeypatch.setattr(sci, "pull_objects", inflatable_utils.pull_objects)
    assert agent.tune_supernode_polling(0.2)
    return sci.pull_objects


def test_a_run_no_longer_running_is_an_ordinary_error(tuned):
    def pull(_object_id: str) -> bytes:
        raise RunNotRunningException

    with pytest.raises(RuntimeError, match="no longer running") as caught:
        tuned(["a"], pull_object_fn=pull)
    assert isinstance(caught.value.__cause__, RunNotRunningException)


def test_objects_still_pulled_and_other_errors_unchanged(tuned):
    assert tuned(["a", "b"], pull_object_fn=lambda oid: oid.encode()) == {"a": b"a", "b": b"b"}

    def missing(object_id: str) -> bytes:
        raise ObjectPullError(object_id, "gone")

    with pytest.raises(ObjectPullError):
        tuned(["a"], pull_object_fn=missing)
