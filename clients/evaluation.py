"""Evaluation on a node with its own data: bounded per round and, in ``dp`` mode, charged.

The math and the node's settings are in :mod:`fedai.release`; this is the glue: which
models the node has answered in which (run, round) (kept in ``Context.state``, which
Flower keeps for the run), the ledger charge of a noisy release, and the reply's metrics.
Nothing here quotes the node's data to the coordinator.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from torch import nn

from clients.privacy import LedgerStore
from fedai.config import ExperimentConfig
from fedai.data import ClientData
from fedai.errors import PolicyViolationError, PrivacyBudgetExceededError
from fedai.federation import keys
from fedai.fileio import atomic_write
from fedai.policy import NodePolicy
from fedai.release import noisy_metrics
from fedai.training import evaluate

logger = logging.getLogger(__name__)

STATE_EVALUATIONS = "fedai.evaluations"  # Context.state ConfigRecord: the answered models
COUNT_FILE = "evaluations-{client_id}.json"  # in state-dir: answers in the node's lifetime
#: Rounds remembered; older ones are forgotten (a coordinator reaching back that far gets
#: one more answer per forgotten round, each still counted by the ledger in ``dp`` mode).
MAX_ROUNDS_KEPT = 512
#: Config entries that, with the array records, name the model an evaluate message asks for.
_MODEL_KEYS = (
    keys.KEY_INIT,
    keys.KEY_TOTAL_WEIGHT,
    keys.KEY_MODEL_WEIGHT,
    keys.KEY_SERVER_STEP,
    keys.KEY_NUM_CLASSES,
)

Metrics = dict[str, float]


def model_digest(msg: Message) -> str:
    """SHA-256 of everything in an evaluate message that decides the evaluated model."""
    h = hashlib.sha256(b"fedai.evaluate\0")
    content = msg.content
    for name in sorted(content.array_records):
        h.update(name.encode() + b"\0")
        for key, array in content.array_records[name].items():
            h.update(f"{key}\0{array.dtype}\0{array.shape}\0".encode())
            h.update(array.data)
    config = content.config_records.get(keys.REC_CONFIG, ConfigRecord())
    for key in _MODEL_KEYS:
        h.update(f"{key}={config.get(key)!r}\0".encode())
    return h.hexdigest()


class EvaluationLog:
    """The models this node answered per (run, round), what it answered, and how many ever.

    The per-round answers live in ``Context.state`` (Flower keeps it for the run); the
    lifetime count in ``state-dir`` (``evaluations-<client id>.json``, atomic writes) where
    the node has one, so no new run id resets it. Without a state dir it lives in
    ``Context.state`` too, and a new Flower run starts it again (logged).
    """

    def __init__(self, context: Context, *, client_id: str, state_dir: str | None) -> None:
        self._context = context
        record = context.state.config_records.get(STATE_EVALUATIONS)
        text = str(record["log"]) if record is not None and "log" in record else "{}"
        self._log: dict[str, dict[str, Metrics]] = json.loads(text)
        self._path = (
            None if state_dir is None else Path(state_dir) / COUNT_FILE.format(client_id=client_id)
        )
        self.total = self._load_total(record)

    def _load_total(self, record: ConfigRecord | None) -> int:
        if self._path is None:
            value = record.get("total", 0) if record is not None else 0
            return int(value) if isinstance(value, int) else 0
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            raise PolicyViolationError(
                f"evaluation count {self._path.name} must be readable JSON; it is not "
                f"({type(err).__name__}): the node answers no evaluation until it is fixed"
            ) from err
        total = raw.get("answered") if isinstance(raw, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise PolicyViolationError(
                f"evaluation count {self._path.name} must hold an integer 'answered' >= 0; "
                f"got {total!r}"
            )
        return total

    @staticmethod
    def _slot(run_id: str, round_: int) -> str:
        return f"{run_id}/{round_}"

    def answer(self, run_id: str, round_: int, digest: str) -> Metrics | None:
        """What the node answered for this model in this round, or None."""
        return self._log.get(self._slot(run_id, round_), {}).get(digest)

    def count(self, run_id: str, round_: int) -> int:
        """Distinct models answered in this round."""
        return len(self._log.get(self._slot(run_id, round_), {}))

    def count_one(self) -> None:
        """Count a new answer in the lifetime total, durably, before it is computed."""
        self.total += 1
        if self._path is not None:
            atomic_write(
                self._path, json.dumps({"format": "fedai.evaluations", "answered": self.total})
            )
        self._save()

    def add(self, run_id: str, round_: int, digest: str, metrics: Metrics) -> None:
        """Remember an answer (in ``Context.state``)."""
        self._log.setdefault(self._slot(run_id, round_), {})[digest] = metrics
        while len(self._log) > MAX_ROUNDS_KEPT:
            del self._log[next(iter(self._log))]
        self._save()

    def _save(self) -> None:
        self._context.state.config_records[STATE_EVALUATIONS] = ConfigRecord(
            {"log": json.dumps(self._log), "total": self.total}
        )


def bounded_evaluation(
    model: nn.Module,
    data: ClientData,
    *,
    msg: Message,
    context: Context,
    cfg: ExperimentConfig,
    policy: NodePolicy,
    client_id: str,
    run_id: str,
    round_: int,
) -> Metrics:
    """Evaluate ``model`` on the node's test split within the node's evaluation policy.

    Returns:
        ``num-examples``, ``loss`` and ``accuracy`` as the node's ``evaluation`` mode
        releases them (the same answer again for a model already answered this round).

    Raises:
        PolicyViolationError: the test split is below the node's minimum, or the round's
            evaluations are used up.
        PrivacyBudgetExceededError: a ``dp`` release would pass the node's budget.
    """
    release = policy.evaluation
    n = len(data.y_test)
    if n < policy.reading.min_test_examples:
        raise PolicyViolationError(
            f"the evaluation split must hold >= {policy.reading.min_test_examples} rows "
            f"(node policy min-test-examples); it holds {n}"
        )
    log = EvaluationLog(context, client_id=client_id, state_dir=policy.state_dir)
    digest = model_digest(msg)
    known = log.answer(run_id, round_, digest)
    if known is not None:  # the same answer again releases nothing new
        return known
    if log.count(run_id, round_) >= release.max_per_round:
        raise PolicyViolationError(
            f"at most {release.max_per_round} model(s) are evaluated per round (node policy "
            f"max-evaluations-per-round); round {round_} of run {run_id or '?'} had them"
        )
    if release.mode != "off":
        if log.total >= release.max_total:
            raise PolicyViolationError(
                f"at most {release.max_total} evaluations are answered in the node's "
                f"lifetime (node policy max-evaluations); {log.total} were"
            )
        if policy.state_dir is None:
            logger.warning(
                "client %s: no state-dir: the lifetime evaluation count restarts with each run",
                client_id,
            )
    if release.mode == "off":
        metrics: Metrics = {keys.KEY_NUM_EXAMPLES: 0.0, keys.KEY_LOSS: 0.0, keys.KEY_ACCURACY: 0.0}
    elif release.mode == "clear":
        log.count_one()
        res = evaluate(model, data.x_test, data.y_test)
        metrics = {keys.KEY_NUM_EXAMPLES: float(n), keys.KEY_LOSS: res.loss}
        metrics[keys.KEY_ACCURACY] = res.accuracy
    else:
        log.count_one()
        metrics = _dp_release(
            model, data, context=context, cfg=cfg, policy=policy, cid=client_id, round_=round_
        )
    log.add(run_id, round_, digest, metrics)
    return metrics


def _dp_release(
    model: nn.Module,
    data: ClientData,
    *,
    context: Context,
    cfg: ExperimentConfig,
    policy: NodePolicy,
    cid: str,
    round_: int,
) -> Metrics:
    """A Gaussian release of the clipped loss sum and the correct count, charged first."""
    if policy.own_data and policy.state_dir is None:
        raise PolicyViolationError(
            f"node_config must set {keys.NODE_STATE_DIR!r} for evaluation 'dp' (the ledger "
            "that charges it must outlive the agent)"
        )
    release = policy.evaluation
    store = LedgerStore(context, cid)
    ledger = store.open(
        cfg,
        num_samples=len(data.y_train),
        budget_epsilon=policy.budget(cfg.privacy.budget_epsilon),
    )
    event = release.event()
    floor = policy.sigma_violation(release.noise_multiplier)
    if floor is not None:
        raise PolicyViolationError(f"evaluation {floor}")
    try:
        before = ledger.epsilon()
        projected = ledger.check(event)  # refuses before anything about the rows is computed
    except PrivacyBudgetExceededError:
        store.save(ledger)
        raise
    too_much = policy.round_epsilon_violation(projected - before)
    if too_much is not None:
        raise PolicyViolationError(f"evaluation {too_much}")
    # Charged first: once computed, the release is spent whatever happens next.
    ledger.record(round=round_, event=event)
    store.save(ledger)
    n = len(data.y_test)
    res = evaluate(model, data.x_test, data.y_test, loss_bound=release.loss_bound)
    loss, accuracy = noisy_metrics(
        loss_sum=res.loss * n, correct=res.accuracy * n, num_examples=n, release=release
    )
    logger.info(
        "client %s: evaluation released with noise multiplier %g (epsilon now %.4f)",
        cid,
        release.noise_multiplier,
        ledger.epsilon(),
    )
    return {keys.KEY_NUM_EXAMPLES: float(n), keys.KEY_LOSS: loss, keys.KEY_ACCURACY: accuracy}


__all__ = ["EvaluationLog", "bounded_evaluation", "model_digest"]
