"""Federated feature statistics: the coordinator's stage between discovery and round 1.

When ``data.standardize`` applies to some node's data (it says so in discovery) and
``data.statistics`` resolves to ``federated`` (:func:`fedai.data.scaling.statistics_mode`),
the coordinator asks those nodes once for their training split's moments
(:data:`~fedai.federation.keys.MSG_STATISTICS`). A node that shares replies with its
count ``n_i`` and the limbs of its per-feature mean and mean square, encoded with the run's
scheme and weighted by ``n_i`` (:func:`fedai.data.scaling.share`); one that does not
(its policy, DP) replies ``declined``. The coordinator checks every reply structurally
(:meth:`SecureSum.check`, the count against what the node announced) and only **adds**
the usable ones, as it adds model updates: under CKKS or Paillier it never sees one
node's moments; in the clear it sees what the plaintext model updates would reveal anyway.

The sum and its total weight then travel with every train and evaluate message
(:data:`~fedai.federation.keys.REC_STATISTICS`; stateless nodes, restarts and resumed runs
all see the same statistics), and are saved in the checkpoint. Fewer usable replies than two,
or than ``secure_aggregation.min_contributors`` if that is more (a sum of one would be
that node's moments, sent to every node), means no federated statistics: every node uses
its own, logged once. In the clear each node's moments are also checked alone (bounds,
finite, variance >= 0), so one bad node loses its own place in the sum, not the run's
statistics; under CKKS or Paillier only the nodes can check, and only the sum: a
key-holding node can still skew it within the bounds, as it can skew a model update
(docs/threat_model.md).
Nodes validate the aggregate before use (:func:`fedai.data.scaling.pooled`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord

from fedai.aggregation import Payload, PlainCodec, SecureSum
from fedai.config import ExperimentConfig, SecureAggregationSection
from fedai.data import scaling
from fedai.errors import ContributionError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_int, payload_to_record, reply_payload
from server.transport import ClientInfo, Transport, clip_text

logger = logging.getLogger(__name__)

#: A sum of one node's moments would be that node's moments, sent to every node.
MIN_STATISTICS_CONTRIBUTORS = 2


@dataclass(slots=True)
class Statistics:
    """What the stage ended with.

    Attributes:
        mode: ``federated`` (a usable sum exists), ``local`` (every node uses its own) or
            ``none`` (no node standardises: the stage did not run).
        payload: The summed (encoded) moments, or None.
        total_weight: Their total weight (sum of the contributors' training counts).
        contributors: Client ids whose moments are in the sum.
        reason: Why ``local`` (empty otherwise).
        declined: Client id -> why it did not share.
        failures: Client id -> why its reply was not used.
    """

    mode: str
    payload: Payload | None = None
    total_weight: float = 0.0
    contributors: list[str] = field(default_factory=list)
    reason: str = ""
    declined: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` view (no payload)."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "federated":
            out["contributors"] = len(self.contributors)
            out["clients"] = list(self.contributors)
            out["total_count"] = self.total_weight
        if self.reason:
            out["reason"] = self.reason
        if self.declined:
            out["declined"] = dict(self.declined)
        if self.failures:
            out["failures"] = dict(self.failures)
        return out

    @classmethod
    def from_dict(
        cls, view: dict[str, Any], *, payload: Payload | None, total_weight: float
    ) -> Statistics:
        """Rebuild from :meth:`to_dict` and the stored sum (a checkpoint).

        Raises:
            ValueError: the view and the sum do not fit together.
        """
        mode = view.get("mode")
        if mode not in ("federated", "local", "none"):
            raise ValueError(f"mode must be federated, local or none; got {mode!r}")
        if (mode == "federated") != (payload is not None):
            raise ValueError(f"a sum must be stored exactly when mode is federated; mode {mode}")
        if mode == "federated" and not total_weight > 0:
            raise ValueError(f"total weight must be > 0; got {total_weight!r}")
        ids = view.get("clients", [])
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            raise ValueError("clients must be a list of client ids")
        reason = view.get("reason", "")
        notes: list[dict[str, str]] = []
        for key in ("declined", "failures"):
            value = view.get(key, {})
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"{key} must map client ids to reasons")
            notes.append(dict(value))
        return cls(
            mode=str(mode),
            payload=payload,
            total_weight=float(total_weight),
            contributors=list(ids),
            reason=str(reason),
            declined=notes[0],
            failures=notes[1],
        )

    def attach(self, transport: Transport) -> None:
        """Send the sum with every later message (nothing when not federated)."""
        if self.mode != "federated" or self.payload is None:
            return
        transport.shared_records[keys.REC_STATISTICS] = payload_to_record(self.payload)
        transport.shared[keys.KEY_STATISTICS_WEIGHT] = float(self.total_weight)


def _check_plain(
    payload: Payload,
    count: int,
    sample_shape: tuple[int, ...],
    step: float,
    section: SecureAggregationSection,
) -> None:
    """One node's plaintext moments, checked as the nodes check the sum (``scheme = "none"``).

    In the clear the coordinator sees each contribution anyway, so a node's limbs beyond
    the bound, non-finite values or a negative variance cost that node its place in the
    sum here, instead of every node rejecting the pooled statistics for the whole run.
    Under CKKS or Paillier only the nodes can check, and only the sum.

    Raises:
        CorruptPayloadError: the contribution fails :func:`fedai.data.scaling.pooled`'s checks.
    """
    codec = PlainCodec(bound=1.0, round_decimals=section.round_decimals, float64=True)
    scaling.decode_pooled(
        codec, payload, total_count=count, own_count=count, sample_shape=sample_shape, step=step
    )


def gather(
    cfg: ExperimentConfig,
    transport: Transport,
    summer: SecureSum,
    clients: dict[int, ClientInfo],
) -> Statistics:
    """Run the statistics stage (see the module docstring); never raises for a bad node.

    Raises:
        ConfigError: ``data.statistics`` is ``federated`` with DP on (already refused when
            the config is built).
    """
    standardizing = sorted(nid for nid, c in clients.items() if c.standardizes)
    if not standardizing:
        return Statistics(mode="none")
    mode = scaling.statistics_mode(cfg.data.statistics, privacy_mode=cfg.privacy.mode)
    if mode == "local":
        return Statistics(
            mode="local",
            reason=f"data.statistics {cfg.data.statistics!r} with privacy.mode "
            f"{cfg.privacy.mode!r}: every node uses its own training split's statistics",
        )
    first = clients[standardizing[0]]
    section = cfg.secure_aggregation
    step = scaling.grid_step(section)
    shapes = scaling.shapes_of(math.prod(first.input_shape), step=step)
    replies = transport.send(standardizing, keys.MSG_STATISTICS, 0, ArrayRecord(), {})
    out = Statistics(mode="federated")
    good: list[tuple[str, Payload, int]] = []
    for nid in standardizing:
        client = clients[nid]
        cid = client.client_id
        reply = replies.get(nid)
        if reply is None:
            out.failures[cid] = f"no reply within {transport.timeout:g} s"
            continue
        if reply.has_error():
            out.failures[cid] = clip_text(reply.error.reason or f"error code {reply.error.code}")
            continue
        try:
            rec = transport.fedai_record(reply)
            status = str(rec.get(keys.KEY_STATUS, keys.STATUS_OK))
            if status != keys.STATUS_OK:
                reason = clip_text(rec.get(keys.KEY_REASON, status))
                if status == keys.STATUS_DECLINED:
                    out.declined[cid] = reason
                else:
                    out.failures[cid] = reason
                continue
            payload = reply_payload(reply)
            summer.check(payload, shapes)
            metrics = reply.content.metric_records.get(keys.REC_METRICS)
            if metrics is None or keys.KEY_NUM_EXAMPLES not in metrics:
                raise ProtocolError(f"statistics reply must carry {keys.KEY_NUM_EXAMPLES!r}")
            count = as_int(
                metrics[keys.KEY_NUM_EXAMPLES],
                what="statistics num-examples",
                lo=client.num_train,
                hi=client.num_train,
            )
            if section.scheme == "none":  # in the clear: each node's moments checked alone
                _check_plain(payload, count, first.input_shape, step, section)
        except Exception as err:  # one bad reply costs only that node's contribution
            out.failures[cid] = f"{type(err).__name__}: {clip_text(err)}"
            continue
        good.append((cid, payload, count))
    need = max(MIN_STATISTICS_CONTRIBUTORS, cfg.secure_aggregation.min_contributors)
    while len(good) >= need and good:
        try:
            out.payload = summer.sum([p for _, p, _ in good])
            break
        except ContributionError as err:
            cid = good[err.index][0]
            out.failures[cid] = f"{type(err).__name__}: {clip_text(err)}"
            del good[err.index]
        except Exception as err:  # the run goes on with local statistics
            out.failures["sum"] = f"{type(err).__name__}: {clip_text(err)}"
            good = []
    for cid, reason in sorted(out.failures.items()):
        logger.warning("federated statistics: client %s not used: %s", cid, reason)
    if out.payload is None:
        out.mode = "local"
        out.reason = (
            f"{len(good)} of {len(standardizing)} node(s) shared usable feature statistics; "
            f"at least {need} needed (2, or secure_aggregation.min_contributors if more): "
            "every node uses its own training split's statistics"
        )
        logger.warning("federated statistics: %s", out.reason)
        return out
    out.contributors = [cid for cid, _, _ in good]
    out.total_weight = float(sum(n for _, _, n in good))
    logger.info(
        "federated statistics from %d of %d node(s) (%g training samples)",
        len(good),
        len(standardizing),
        out.total_weight,
    )
    return out


__all__ = ["Statistics", "gather"]
