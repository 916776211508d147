"""Federated feature statistics: the coordinator's stage between discovery and round 1.

When ``data.standardize`` applies to some node's data (it says so in discovery) and
``data.statistics`` resolves to ``federated`` (:func:`fedai.data.scaling.statistics_mode`:
no DP, and public ``data.feature_bounds`` declared), the coordinator asks those nodes once
for their training split's moments (:data:`~fedai.federation.keys.MSG_STATISTICS`). A
node that shares replies with its count ``n_i`` and the limbs of its per-feature mean and
mean square of features clipped to the bounds and mapped to [0, 1], encoded with the run's
scheme and weighted by ``n_i`` (:func:`fedai.data.scaling.share`); one that does not (its
policy, DP, bounds wider than its own ``feature-bounds``) replies ``declined``. The
coordinator checks every reply structurally (:meth:`SecureSum.check`, the count against
what the node announced), leaves out nodes whose count exceeds
``data.max_statistics_weight_share`` of the total, and only **adds** the usable ones, as
it adds model updates: under CKKS or Paillier it never sees one node's moments; in the
clear it sees what the plaintext model updates would reveal anyway.

What is checked where (:func:`fedai.data.scaling.check_moments`: mean within the bounds,
``0 <= variance <= (high - mean)(mean - low)``, Bhatia & Davis 2000):

* In the clear the coordinator checks each node's moments alone and leaves a failing
  node out (recorded under ``failures``): every moment in the sum is then valid, and one
  node moves a pooled mean by at most ``n_i / N`` of the feature's range.
* Under CKKS or Paillier it cannot; it sends the sum to the contributors, each checks the
  pooled moments and the rest of the sum without its own, and if any refuses, the run's
  statistics become ``local`` for every node (``refused`` names who and which check,
  ``reason`` says so). The run goes on. A contribution outside the bounds is then caught
  only if the sum shows it: an encrypted contribution has no range check of its own.
* Every node checks the sum again before it standardises (:func:`fedai.data.scaling.
  pooled`); a coordinator that skipped the stage's checks would see its rounds rejected.

The sum and its total weight then travel with every train and evaluate message
(:data:`~fedai.federation.keys.REC_STATISTICS`; stateless nodes, restarts and resumed runs
all see the same statistics), and are saved in the checkpoint. Fewer usable replies than two,
or than ``secure_aggregation.min_contributors`` if that is more (a sum of one would be
that node's moments, sent to every node), means no federated statistics: every node uses
its own, logged once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message

from fedai.aggregation import Payload, PlainCodec, SecureSum
from fedai.config import ExperimentConfig, SecureAggregationSection
from fedai.data import scaling
from fedai.errors import ConfigError, ContributionError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_int, payload_to_record, reply_payload
from server.transport import ClientInfo, Transport, clip_text

logger = logging.getLogger(__name__)

#: A sum of one node's moments would be that node's moments, sent to every node.
MIN_STATISTICS_CONTRIBUTORS = 2
#: The per-client notes of :class:`Statistics` (client id -> reason), as in results.json.
_NOTES = ("declined", "failures", "refused", "unverified")
#: Where the moments were checked (:attr:`Statistics.checked`).
CHECKED_EACH_NODE = "each node"
CHECKED_SUM = "sum"
_CHECKED = (CHECKED_EACH_NODE, CHECKED_SUM)


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
        checked: Where the moments were checked: ``each node`` (the coordinator, in the
            clear) or ``sum`` (the contributors, under HE); empty before a sum exists.
        refused: Client id -> why it refused the sum (under HE; any refusal makes the
            statistics local).
        unverified: Client id -> why a contributor gave no verdict on the sum.
    """

    mode: str
    payload: Payload | None = None
    total_weight: float = 0.0
    contributors: list[str] = field(default_factory=list)
    reason: str = ""
    declined: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    checked: str = ""
    refused: dict[str, str] = field(default_factory=dict)
    unverified: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` view (no payload)."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "federated":
            out["contributors"] = len(self.contributors)
            out["clients"] = list(self.contributors)
            out["total_count"] = self.total_weight
        if self.checked:
            out["checked"] = self.checked
        if self.reason:
            out["reason"] = self.reason
        for key in _NOTES:
            notes: dict[str, str] = getattr(self, key)
            if notes:
                out[key] = dict(notes)
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
        checked = view.get("checked", "")
        if checked not in ("", *_CHECKED):
            raise ValueError(f"checked must be one of {', '.join(_CHECKED)}; got {checked!r}")
        notes: dict[str, dict[str, str]] = {}
        for key in _NOTES:
            value = view.get(key, {})
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"{key} must map client ids to reasons")
            notes[key] = dict(value)
        return cls(
            mode=str(mode),
            payload=payload,
            total_weight=float(total_weight),
            contributors=list(ids),
            reason=str(reason),
            checked=str(checked),
            declined=notes["declined"],
            failures=notes["failures"],
            refused=notes["refused"],
            unverified=notes["unverified"],
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
    bounds: scaling.FeatureBounds,
) -> None:
    """One node's plaintext moments, checked as the nodes check the sum (``scheme = "none"``).

    In the clear the coordinator sees each contribution anyway, so a node's limbs beyond
    the bound, non-finite values, or moments outside the declared bounds (a mean outside
    them, a negative variance or one above the Bhatia-Davis bound) cost that node its
    place in the sum here, instead of every node rejecting the pooled statistics for the
    whole run. Under CKKS or Paillier only the nodes can check, and only the sum.

    Raises:
        CorruptPayloadError: the contribution fails :func:`fedai.data.scaling.pooled`'s checks.
    """
    codec = scaling.StatisticsCodec(
        inner=PlainCodec(bound=1.0, round_decimals=section.round_decimals, float64=True),
        bounds=bounds,
    )
    scaling.decode_pooled(
        codec, payload, total_count=count, own_count=count, sample_shape=sample_shape, step=step
    )


def _cap_weight_share(good: list[tuple[str, Payload, int]], cap: float, out: Statistics) -> None:
    """Leave out, largest first, every node whose count exceeds ``cap`` of the total.

    A node's pull on the pooled moments is its weight share ``n_i / N``; the count is
    announced, not proven (``data.max_statistics_weight_share``; 1.0 caps nothing).
    """
    while cap < 1.0 and good:
        total = sum(n for _, _, n in good)
        j = max(range(len(good)), key=lambda i: good[i][2])
        share = good[j][2] / total
        if share <= cap:
            return
        out.failures[good[j][0]] = (
            f"training count share {share:.3g} exceeds data.max_statistics_weight_share {cap:g}"
        )
        del good[j]


def _verify(
    transport: Transport,
    clients: dict[int, ClientInfo],
    contributors: list[int],
    payload: Payload,
    out: Statistics,
) -> None:
    """Under HE: every contributor checks the sum; any refusal makes the statistics local.

    The sum is exactly what every node would receive with round 1, so a bad one is caught
    once, here, instead of every node rejecting every round. A contributor that gives no
    verdict (no reply, an error) is recorded under ``unverified``; it checks again before
    it standardises.
    """
    replies = transport.send(
        contributors,
        keys.MSG_STATISTICS,
        0,
        ArrayRecord(),
        {keys.KEY_STATISTICS_WEIGHT: float(out.total_weight)},
        records={keys.REC_STATISTICS: payload_to_record(payload)},
    )
    for nid in contributors:
        cid = clients[nid].client_id
        rec, missing = _fedai_reply(transport, replies.get(nid))
        if rec is None:  # no verdict: no reply, an error, or a malformed one
            out.unverified[cid] = missing
            continue
        status = str(rec.get(keys.KEY_STATUS, ""))
        if status == keys.STATUS_REJECTED:
            out.refused[cid] = clip_text(rec.get(keys.KEY_REASON, status))
        elif status != keys.STATUS_OK:
            out.unverified[cid] = clip_text(rec.get(keys.KEY_REASON, status or "no status"))
    out.checked = CHECKED_SUM
    if out.refused:
        out.mode = "local"
        out.payload = None
        out.reason = (
            f"{len(out.refused)} of {len(contributors)} contributor(s) refused the pooled "
            "statistics (a contribution outside data.feature_bounds): every node uses its own "
            "training split's statistics"
        )
        for cid, why in sorted(out.refused.items()):
            logger.warning("federated statistics refused by client %s: %s", cid, why)
        logger.warning("federated statistics: %s", out.reason)
    for cid, why in sorted(out.unverified.items()):
        logger.warning("federated statistics: client %s gave no verdict: %s", cid, why)


def _fedai_reply(transport: Transport, reply: Message | None) -> tuple[ConfigRecord | None, str]:
    """A reply's fedai record, or None and why there is none (no reply, an error, malformed)."""
    if reply is None:
        return None, f"no reply within {transport.timeout:g} s"
    if reply.has_error():
        return None, clip_text(reply.error.reason or f"error code {reply.error.code}")
    try:
        return transport.fedai_record(reply), ""
    except Exception as err:  # one bad reply costs only that node
        return None, f"{type(err).__name__}: {clip_text(err)}"


def gather(
    cfg: ExperimentConfig,
    transport: Transport,
    summer: SecureSum,
    clients: dict[int, ClientInfo],
) -> Statistics:
    """Run the statistics stage (see the module docstring); never raises for a bad node.

    Raises:
        ConfigError: ``data.statistics`` is ``federated`` with DP on or without bounds
            (already refused when the config is built).
    """
    standardizing = sorted(nid for nid, c in clients.items() if c.standardizes)
    if not standardizing:
        return Statistics(mode="none")
    data = cfg.data
    mode = scaling.statistics_mode(
        data.statistics, privacy_mode=cfg.privacy.mode, bounded=bool(data.feature_bounds)
    )
    if mode == "local":
        why = (
            f"privacy.mode {cfg.privacy.mode!r}"
            if cfg.privacy.mode != "none"
            else "no data.feature_bounds (without public bounds one node's moments could "
            "move the pooled ones arbitrarily)"
        )
        return Statistics(
            mode="local",
            reason=f"data.statistics {data.statistics!r} with {why}: every node uses its own "
            "training split's statistics",
        )
    first = clients[standardizing[0]]
    bounds = scaling.FeatureBounds.from_config(data)
    num_features = math.prod(first.input_shape)
    try:
        if bounds is None:  # statistics_mode resolved federated: bounds are declared
            raise ConfigError("data.feature_bounds must be declared; got none")
        bounds.arrays(num_features)
    except ConfigError as err:
        reason = f"{err}: every node uses its own training split's statistics"
        logger.warning("federated statistics: %s", reason)
        return Statistics(mode="local", reason=reason)
    section = cfg.secure_aggregation
    step = scaling.grid_step(section)
    shapes = scaling.shapes_of(num_features, step=step)
    replies = transport.send(standardizing, keys.MSG_STATISTICS, 0, ArrayRecord(), {})
    out = Statistics(mode="federated")
    good: list[tuple[str, Payload, int]] = []
    nid_of: dict[str, int] = {}
    for nid in standardizing:
        client = clients[nid]
        cid = client.client_id
        nid_of[cid] = nid
        reply = replies.get(nid)
        rec, missing = _fedai_reply(transport, reply)
        if rec is None or reply is None:
            out.failures[cid] = missing
            continue
        try:
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
                _check_plain(payload, count, first.input_shape, step, section, bounds)
        except Exception as err:  # one bad reply costs only that node's contribution
            out.failures[cid] = f"{type(err).__name__}: {clip_text(err)}"
            continue
        good.append((cid, payload, count))
    _cap_weight_share(good, data.max_statistics_weight_share, out)
    need = max(MIN_STATISTICS_CONTRIBUTORS, cfg.secure_aggregation.min_contributors)
    while len(good) >= need and good:
        try:
            out.payload = summer.sum([p for _, p, _ in good], shapes=shapes)
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
    if section.scheme == "none":
        out.checked = CHECKED_EACH_NODE
    else:
        nids = [nid_of[cid] for cid in out.contributors]
        _verify(transport, clients, nids, out.payload, out)
        if out.mode != "federated":
            return out
    logger.info(
        "federated statistics from %d of %d node(s) (%g training samples)",
        len(good),
        len(standardizing),
        out.total_weight,
    )
    return out


__all__ = ["Statistics", "gather"]
