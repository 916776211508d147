"""If a Flower upgrade moves an internal fedai relies on, this file fails, nowhere else."""

from flwr.app import Context, Message, RecordDict

from fedai.federation import flower_internals as fi


def test_task_identity_lets_message_be_created():
    fi.set_task_identity(run_id=42, node_id=fi.SUPERLINK_NODE_ID)
    msg = Message(RecordDict(), dst_node_id=7, message_type="train")
    assert msg.metadata.run_id == 42
    assert msg.metadata.src_node_id == fi.SUPERLINK_NODE_ID
    assert msg.metadata.dst_node_id == 7


def test_message_id_can_be_assigned_and_replies_point_to_it():
    fi.set_task_identity(run_id=1, node_id=fi.SUPERLINK_NODE_ID)
    msg = Message(RecordDict(), dst_node_id=7, message_type="evaluate")
    fi.set_message_id(msg, "abc")
    reply = Message(RecordDict(), reply_to=msg)
    assert msg.metadata.message_id == "abc"
    assert reply.metadata.reply_to_message_id == "abc"
    assert reply.metadata.dst_node_id == fi.SUPERLINK_NODE_ID


def test_context_and_run_records():
    ctx = fi.make_context(run_id=3, node_id=9, node_config={"partition-id": 0}, run_config={})
    assert isinstance(ctx, Context)
    assert ctx.node_config["partition-id"] == 0
    assert len(ctx.state) == 0
    assert fi.make_run(3, {"a": 1}).run_id == 3
