"""Keys of the records fedai's ServerApp and ClientApp exchange (one place, never retyped)."""

from __future__ import annotations

from typing import Final

from fedai import policy

# Message types (Flower categories).
MSG_QUERY: Final = "query"
MSG_TRAIN: Final = "train"
MSG_EVALUATE: Final = "evaluate"
MSG_STATISTICS: Final = "query.statistics"  # federated feature statistics, before round 1

# RecordDict entries.
REC_ARRAYS: Final = "arrays"  # ArrayRecord: the (possibly encrypted) payload
REC_CONFIG: Final = "config"  # ConfigRecord: instructions from the coordinator
REC_METRICS: Final = "metrics"  # MetricRecord: numbers in a reply
REC_FEDAI: Final = "fedai"  # ConfigRecord: client identity, status, privacy history

# ConfigRecord keys sent by the coordinator.
KEY_SERVER_ROUND: Final = "server-round"
KEY_EXPERIMENT: Final = "fedai.experiment"  # the experiment config as JSON
KEY_INIT: Final = "fedai.init"  # True: build the round-1 model from the seed, no payload
KEY_TOTAL_WEIGHT: Final = "fedai.total-weight"  # the aggregate's total weight
KEY_NUM_SAMPLED: Final = "fedai.num-sampled"  # clients sampled this round (user-level DP)
KEY_RUN_ID: Final = "fedai.run-id"  # random id of the run, kept across coordinator resumes
KEY_RUN_SESSION: Final = "fedai.run-session"  # random id of this coordinator start
KEY_RESUMED_AFTER: Final = "fedai.resumed-after"  # last completed round at this start (0: new)
# The coordinator's checkpointed view of the receiving client's ledger (train messages): a
# node whose ledger holds less refuses to train (clients.privacy); a lower claim is a no-op.
KEY_SEEN_CHARGES: Final = "fedai.seen-charges"  # rounds of this run it saw the client charge
KEY_SEEN_EPSILON: Final = "fedai.seen-epsilon"  # the cumulative epsilon it last reported

# Reply keys.
KEY_NUM_EXAMPLES: Final = "num-examples"
KEY_LOSS: Final = "loss"
KEY_ACCURACY: Final = "accuracy"
KEY_TRAIN_LOSS: Final = "train-loss"
KEY_CLIENT_ID: Final = "fedai.client-id"
KEY_STATUS: Final = "fedai.status"
KEY_REASON: Final = "fedai.reason"
KEY_INPUT_SHAPE: Final = "fedai.input-shape"
KEY_NUM_CLASSES: Final = "fedai.num-classes"
KEY_NUM_TRAIN: Final = "fedai.num-train"
KEY_NUM_TEST: Final = "fedai.num-test"
KEY_PRIVACY: Final = "fedai.privacy"  # JSON: the client's privacy report (epsilon, history)
KEY_STANDARDIZES: Final = "fedai.standardizes"  # discovery: data.standardize applies here

# Federated feature statistics (fedai.data.scaling, server.statistics).
REC_STATISTICS: Final = "fedai.statistics"  # ArrayRecord: the summed (encoded) moments
KEY_STATISTICS_WEIGHT: Final = "fedai.statistics-weight"  # their total weight (count)

# Reply statuses.
STATUS_OK: Final = "ok"
STATUS_REFUSED: Final = "refused"  # the client will not train (privacy budget exhausted)
STATUS_REJECTED: Final = "rejected"  # the client rejected the aggregate (bounds check)
STATUS_FAILED: Final = "failed"  # the client could not serve the request (reason: kind only)
STATUS_ALREADY_CHARGED: Final = "already-charged"  # the ledger holds this (run, round)
STATUS_DECLINED: Final = "declined"  # the node does not share its feature statistics

# node_config keys (set by Flower in simulation, by the operator on a real SuperNode).
NODE_PARTITION_ID: Final = "partition-id"
NODE_NUM_PARTITIONS: Final = "num-partitions"
NODE_CLIENT_ID: Final = "client-id"
# The node's own data, ledger and keys are part of its policy (fedai.policy).
NODE_DATA_PATH: Final = policy.NODE_DATA_PATH
NODE_STATE_DIR: Final = policy.NODE_STATE_DIR
NODE_KEY_DIR: Final = policy.NODE_KEY_DIR

# Strategies (fedai.strategies): stragglers and the server step under HE.
KEY_WORK_FRACTION: Final = "fedai.work-fraction"  # a straggler's share of its local steps
KEY_SERVER_STEP: Final = "fedai.server-step"  # evaluators run the server optimiser step
KEY_MODEL_WEIGHT: Final = "fedai.model-weight"  # total weight of REC_MODEL's payload
KEY_FINGERPRINT: Final = "fedai.fingerprint"  # SHA-256 of the stepped model and state
REC_MODEL: Final = "fedai.model"  # ArrayRecord: the current global model (server step)
REC_STATE: Final = "fedai.opt-state"  # ArrayRecord: the server optimiser's state
