"""fedai's ClientApp (Flower Message API).

Each message carries the experiment config (JSON) from the coordinator. The node's own
settings come from ``node_config``: ``partition-id``/``num-partitions`` in simulation, or
``data-path`` (a local .csv/.npz that never leaves the node), ``client-id``, ``key-dir``
and ``state-dir`` on a real SuperNode.

The round-1 model is built from the experiment seed; later rounds decode the aggregate
``(sum, total weight)`` with the scheme's codec (bounds-checked) and reply with the
encoded weighted contribution ``n * w``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import zlib
from collections.abc import Callable, Hashable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from clients.evaluation import bounded_evaluation
from clients.privacy import LedgerStore, RunRef, train_private, user_level_contribution
from clients.privacy import report as privacy_report
from fedai.aggregation import ClientCodec, PlainCodec
from fedai.config import ExperimentConfig, SecureAggregationSection
from fedai.data import (
    ClientData,
    load_local_file,
    raw_client,
    scaling,
    standardized_view,
    standardizes,
)
from fedai.data.reading import NodeReading
from fedai.errors import (
    ConfigError,
    CorruptPayloadError,
    DataError,
    KeyMismatchError,
    LedgerContinuityError,
    PolicyViolationError,
    PrivacyBudgetExceededError,
    ProtocolError,
    RoundAlreadyChargedError,
)
from fedai.federation import keys
from fedai.federation.records import as_float, as_int, payload_to_record, record_to_payload
from fedai.models import ModelSpec, build_model, get_weights, set_weights
from fedai.policy import NodePolicy
from fedai.schemes import client_codec
from fedai.strategies import build_optimizer, fingerprint, hyperparameters_of
from fedai.training import evaluate, train_local

logger = logging.getLogger(__name__)

app = ClientApp()
Handler = Callable[[Message, Context], Message]


# ---------------------------------------------------------------------- node helpers
def experiment_of(msg: Message) -> ExperimentConfig:
    """Parse the experiment config the coordinator sent."""
    config = msg.content.config_records.get(keys.REC_CONFIG)
    if config is None or keys.KEY_EXPERIMENT not in config:
        raise ProtocolError(
            f"message must carry ConfigRecord {keys.REC_CONFIG!r} with {keys.KEY_EXPERIMENT!r}"
        )
    return _experiment(str(config[keys.KEY_EXPERIMENT]))


@functools.lru_cache(maxsize=8)
def _experiment(text: str) -> ExperimentConfig:
    # Every message of a run carries the same JSON; parsing and validating it took ~1.4 ms
    # a message (1,000 simulated clients). The config is frozen, so sharing it is safe.
    return ExperimentConfig.from_json(text)


def client_id_of(context: Context) -> str:
    """The node's stable identity: ``client-id``, else its partition id, else its node id."""
    cfg = context.node_config
    if keys.NODE_CLIENT_ID in cfg:
        return str(cfg[keys.NODE_CLIENT_ID])
    if keys.NODE_PARTITION_ID in cfg:
        return str(cfg[keys.NODE_PARTITION_ID])
    return str(context.node_id)


@functools.lru_cache(maxsize=4)
def _raw_local_file(
    path: str, client_id: str, reading: NodeReading, state_dir: str | None
) -> ClientData:
    return load_local_file(
        path, client_id=client_id, reading=reading, state_dir=state_dir, standardize=False
    )


def raw_data_of(context: Context, cfg: ExperimentConfig) -> tuple[ClientData, tuple[Hashable, ...]]:
    """This node's unstandardised split and the key naming it in the view cache.

    A node with its own ``data-path`` reads and splits it as its own configuration says
    (:mod:`fedai.data.reading`); nothing in the coordinator's message changes it.
    """
    node = context.node_config
    if keys.NODE_DATA_PATH in node:
        path, cid = str(node[keys.NODE_DATA_PATH]), client_id_of(context)
        policy = policy_of(context)
        raw = _raw_local_file(path, cid, policy.reading, policy.state_dir)
        return raw, ("file", path, cid, policy.reading, policy.state_dir)
    if keys.NODE_PARTITION_ID not in node:
        raise ProtocolError(
            f"node_config must set {keys.NODE_DATA_PATH!r} (a real node) or "
            f"{keys.NODE_PARTITION_ID!r} (simulation); got {sorted(node)}"
        )
    pid = int(node[keys.NODE_PARTITION_ID])
    exp = cfg.experiment
    return raw_client(cfg, pid), ("partition", cfg.data, exp.seed, exp.num_clients, pid)


def standardizes_here(context: Context, cfg: ExperimentConfig) -> bool:
    """Whether this node z-scores its data with statistics of rows: its own choice on a node.

    Never on a node that requires DP: a z-score fit on its rows is a release outside
    DP-SGD's guarantee (which assumes data-independent preprocessing); such a node scales
    by its public ``feature-bounds`` or not at all (:func:`public_scaler`).
    """
    if keys.NODE_DATA_PATH in context.node_config:
        policy = policy_of(context)
        if policy.require_privacy is not None:
            return False
        return scaling.resolve(policy.reading.standardize, file_source=True)
    return standardizes(cfg.data)


def public_scaler(context: Context, sample_shape: tuple[int, ...]) -> scaling.Standardizer | None:
    """The data-independent scaling of a node that requires DP, from its ``feature-bounds``.

    None unless the node has its own data, requires DP, standardises (``auto``) and names
    a bounds file.

    Raises:
        ConfigError: the bounds file cannot be read or does not fit the features.
    """
    node = context.node_config
    policy = policy_of(context)
    path = str(node.get(scaling.NODE_FEATURE_BOUNDS, ""))
    if not (policy.own_data and policy.require_privacy and path):
        return None
    if policy.reading.standardize == "none":
        return None
    return _public_scaler(path, sample_shape)


@functools.lru_cache(maxsize=8)
def _public_scaler(path: str, sample_shape: tuple[int, ...]) -> scaling.Standardizer:
    return scaling.public_scaling(scaling.FeatureBounds.from_file(path), sample_shape)


def uses_federated_statistics(context: Context, cfg: ExperimentConfig) -> str | None:
    """None if this node shares and uses federated statistics; else the reason it does not.

    Sharing and using go together: a node that keeps its moments to itself (its policy,
    DP) standardises with its own statistics, whatever the coordinator sends. A node whose
    operator set ``feature-bounds`` (a JSON file of ``[low, high]`` pairs) takes part only
    if the run's ``data.feature_bounds`` lie within them: the coordinator may narrow the
    bounds that limit one node's pull on the pooled moments, never widen them.

    Raises:
        ConfigError: the node's ``feature-bounds`` file cannot be read or parsed.
    """
    if not standardizes_here(context, cfg):
        return f"data.standardize {cfg.data.standardize!r} does not apply to this node's data"
    mode = scaling.statistics_mode(
        cfg.data.statistics,
        privacy_mode=cfg.privacy.mode,
        bounded=bool(cfg.data.feature_bounds),
    )
    if mode != "federated":
        return f"data.statistics {cfg.data.statistics!r} resolves to local statistics"
    refusal = policy_of(context).statistics_refusal()
    if refusal is not None:
        return refusal
    own_bounds = str(context.node_config.get(scaling.NODE_FEATURE_BOUNDS, ""))
    if policy_of(context).own_data:
        # A node's moments are exact: with bounds of the coordinator's choosing (a narrow
        # window per feature) every statistics request would be a counting query on its
        # rows. A node with its own data shares only within its own bounds, exactly, so
        # every request gets the same answer.
        if not own_bounds:
            return (
                f"node_config {scaling.NODE_FEATURE_BOUNDS} is not set: a node with its own "
                "data shares feature moments only within its own public bounds"
            )
        run_bounds = scaling.FeatureBounds.from_config(cfg.data)
        limit = scaling.FeatureBounds.from_file(own_bounds)
        d = math.prod(raw_data_of(context, cfg)[0].input_shape)
        if run_bounds is None or not all(
            np.array_equal(a, b) for a, b in zip(run_bounds.arrays(d), limit.arrays(d), strict=True)
        ):
            return (
                f"data.feature_bounds must equal the node's {scaling.NODE_FEATURE_BOUNDS} "
                "(a node with its own data shares moments within its own bounds only)"
            )
    elif own_bounds:
        run_bounds = scaling.FeatureBounds.from_config(cfg.data)
        limit = scaling.FeatureBounds.from_file(own_bounds)
        narrowing = None if run_bounds is None else run_bounds.narrowing(limit)
        if narrowing is not None:
            return narrowing
    if cfg.secure_aggregation.scheme == "ckks" and cfg.secure_aggregation.flood_sigma > 0:
        # Flooding noise of sigma * BOUND on the leading limb would swamp the statistics;
        # without it the decryption would be shared unflooded: neither is acceptable.
        return "secure_aggregation.flood_sigma > 0: CKKS-flooded statistics are unusable"
    return None


def statistics_codec(
    context: Context, cfg: ExperimentConfig
) -> tuple[scaling.StatisticsCodec, float]:
    """The run's codec for statistics limbs (bound 1, one process), and its grid step.

    The codec carries the run's ``data.feature_bounds``, so whatever decodes the pooled
    statistics with it (:func:`fedai.data.scaling.decode_pooled`) checks them against,
    and clips the features to, those bounds.

    Raises:
        ConfigError: no ``data.feature_bounds`` are declared (federated statistics need
            them).
    """
    section = cfg.secure_aggregation
    bounds = scaling.FeatureBounds.from_config(cfg.data)
    if bounds is None:
        raise ConfigError(
            "data.statistics 'federated' needs data.feature_bounds (public [low, high] "
            "bounds that limit what one node's moments can move); got none"
        )
    stats = dataclasses.replace(
        section,
        update_bound=1.0,
        workers=1 if section.scheme == "paillier" else section.workers,
    )
    step = scaling.grid_step(section)
    inner: ClientCodec
    if section.scheme == "none":  # float64 out: a float32 average would cost 7 digits
        inner = PlainCodec(bound=1.0, round_decimals=section.round_decimals, float64=True)
    else:
        inner = codec_of(context, cfg, section=stats)
    return scaling.StatisticsCodec(inner=inner, bounds=bounds), step


def data_for(msg: Message, context: Context, cfg: ExperimentConfig) -> ClientData:
    """This node's data, standardised with the statistics this message calls for.

    Federated statistics (the aggregate every train/evaluate message carries) if the node
    uses them (:func:`uses_federated_statistics`) and the message has them; else the
    node's own training split's. Decoded (and validated) once per node's data and
    aggregate: the standardised view is cached by the aggregate's digest.

    Raises:
        CorruptPayloadError / KeyMismatchError: the aggregate fails decoding or validation
            (:func:`fedai.data.scaling.pooled`); the node refuses it.
    """
    raw, key = raw_data_of(context, cfg)
    public = public_scaler(context, raw.input_shape)
    if public is not None:
        return standardized_view(raw, key=key, statistics=lambda: public, digest="public")
    if not standardizes_here(context, cfg):
        return raw
    record = msg.content.array_records.get(keys.REC_STATISTICS)
    if record is None or uses_federated_statistics(context, cfg) is not None:
        return standardized_view(raw, key=key)
    config = msg.content.config_records[keys.REC_CONFIG]
    weight = config.get(keys.KEY_STATISTICS_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise CorruptPayloadError(
            f"{keys.KEY_STATISTICS_WEIGHT} must be a number beside {keys.REC_STATISTICS}; "
            f"got {type(weight).__name__}"
        )
    payload = record_to_payload(record)

    def decode() -> scaling.Standardizer:  # only when this view is not cached yet
        codec, step = statistics_codec(context, cfg)
        return scaling.decode_pooled(
            codec,
            payload,
            total_count=float(weight),
            own_count=len(raw.y_train),
            sample_shape=raw.input_shape,
            step=step,
        )

    digest = scaling.digest(payload, float(weight))
    return standardized_view(raw, key=key, statistics=decode, digest=digest)


@functools.lru_cache(maxsize=4)
def _codec(section: SecureAggregationSection, key_dir: str | None) -> ClientCodec:
    return client_codec(section, key_dir=key_dir)


def codec_of(
    context: Context,
    cfg: ExperimentConfig,
    *,
    section: SecureAggregationSection | None = None,
) -> ClientCodec:
    """The scheme's client codec; a node's ``key-dir`` overrides the config's.

    A real node (one with its own ``data-path``) never opens a key directory the
    coordinator names: without its own ``key-dir`` it can only run ``scheme = "none"``.
    ``section`` replaces ``cfg.secure_aggregation`` (the statistics' bound-1 codec).

    Raises:
        ConfigError: a real node without ``key-dir`` asked for a secure scheme.
    """
    policy = policy_of(context)
    section = cfg.secure_aggregation if section is None else section
    if policy.key_dir is None and policy.own_data and section.scheme != "none":
        raise ConfigError(
            f"node_config must set {keys.NODE_KEY_DIR!r} for secure_aggregation.scheme "
            f"{section.scheme!r}; a node with its own data never opens the coordinator's "
            "key_dir"
        )
    if policy.own_data:
        section = dataclasses.replace(section, key_dir="")
    return _codec(section, policy.key_dir)


@functools.lru_cache(maxsize=16)
def _policy(items: tuple[tuple[str, str], ...]) -> NodePolicy:
    return NodePolicy.from_node_config(dict(items))


def policy_of(context: Context) -> NodePolicy:
    """The node's own policy, from its ``node_config`` (see :mod:`fedai.policy`)."""
    return _policy(tuple(sorted((k, str(v)) for k, v in context.node_config.items())))


def round_seed(cfg: ExperimentConfig, client_id: str, round_: int) -> int:
    """A per-(seed, client, round) seed, identical under every backend."""
    return zlib.crc32(f"{cfg.experiment.seed}/{client_id}/{round_}".encode())


def spec_of(msg: Message, cfg: ExperimentConfig, data: ClientData) -> ModelSpec:
    """The global model's spec (class count as agreed in discovery)."""
    config = msg.content.config_records[keys.REC_CONFIG]
    num_classes = as_int(
        config.get(keys.KEY_NUM_CLASSES, data.num_classes),
        what="num-classes",
        lo=data.num_classes,  # fewer classes than the node's labels: refused, never a crash
        hi=100_000,
    )
    return ModelSpec(
        name=cfg.model.name,
        input_shape=data.input_shape,
        num_classes=num_classes,
        hidden=cfg.model.hidden,
    )


def global_model(
    msg: Message, cfg: ExperimentConfig, spec: ModelSpec, codec: ClientCodec, *, node_id: int
) -> nn.Module:
    """Build the round-1 model from the seed, or decode the aggregate the message carries.

    Raises:
        CorruptPayloadError / KeyMismatchError: the aggregate fails decoding or bounds.
    """
    model = build_model(spec, seed=cfg.experiment.seed)
    config = msg.content.config_records[keys.REC_CONFIG]
    if bool(config.get(keys.KEY_INIT, False)):
        return model
    shapes = [tuple(v.shape) for v in model.state_dict().values()]
    payload = record_to_payload(msg.content.array_records.get(keys.REC_ARRAYS, ArrayRecord()))
    total = float(config.get(keys.KEY_TOTAL_WEIGHT, 0.0))  # type: ignore[arg-type]
    set_weights(model, _decode_once(codec, payload, total, shapes, node_id=node_id))
    return model


#: The last aggregate this process decoded (total weight, a private copy of its arrays),
#: shared by every simulated node, and node id -> (that aggregate's serial, its decode).
_last_aggregate: list[tuple[int, float, list[np.ndarray]]] = []
_last_decoded: dict[int, tuple[int, list[np.ndarray]]] = {}


def _decode_once(
    codec: ClientCodec,
    payload: list[np.ndarray],
    total: float,
    shapes: list[tuple[int, ...]],
    *,
    node_id: int,
) -> list[np.ndarray]:
    """Decode, reusing this node's result when the same aggregate arrives again.

    Evaluate, then the next round's train, carry the same aggregate. Decodes are kept per
    node, so simulated clients never share each other's decryptions; a hit needs the same
    total weight and equal arrays (compared, not hashed: memcmp is ~20x cheaper than
    SHA-256 on a 2 MB aggregate, and a changed byte always misses). The process keeps one
    copy of the last aggregate however many nodes it simulates.
    """
    if (
        _last_aggregate
        and _last_aggregate[0][1] == total
        and (_same_arrays(_last_aggregate[0][2], payload))
    ):
        serial = _last_aggregate[0][0]
    else:
        serial = _last_aggregate[0][0] + 1 if _last_aggregate else 0
        _last_aggregate[:] = [(serial, total, [np.array(a, copy=True) for a in payload])]
    cached = _last_decoded.get(node_id)
    if cached is not None and cached[0] == serial:
        return [a.copy() for a in cached[1]]
    out = codec.decode(payload, total, shapes)
    _last_decoded[node_id] = (serial, [a.copy() for a in out])
    return out


def _same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def reject(msg: Message, client_id: str, err: Exception) -> Message:
    """Reply that the aggregate failed decoding.

    The detail (which may quote decrypted values) stays in the client's log; the
    coordinator gets only the error type.
    """
    _log_failure(client_id, "decode", err, "client %s rejected the aggregate: %s: %s")
    return status_reply(
        msg, keys.STATUS_REJECTED, f"aggregate rejected: {type(err).__name__}", client_id
    )


#: In-process simulation only: the driver's collector of its clients' own errors
#: (:meth:`fedai.verdict.ClientErrors.add`, called as ``(client id, stage, error)``). Those
#: clients run in the driver's process, so their full error reaches the user once,
#: counted, instead of once per client, and never crosses a network. None (the default,
#: and on every real node): errors go to the node's log.
error_sink: Callable[[str, str, Exception], None] | None = None


def _log_failure(client_id: str, stage: str, err: Exception, template: str) -> None:
    """Log a failed handler (``template`` takes client id, error type, error) or sink it."""
    sink = error_sink
    if sink is not None:
        sink(client_id, stage, err)
    level = logging.DEBUG if sink is not None else logging.WARNING
    logger.log(level, template, client_id, type(err).__name__, err)


def guarded(stage: str) -> Callable[[Handler], Handler]:
    """Turn any error of a handler into a reply that names only its kind.

    Errors may quote the node's data (a file's header, a cell, a key file's bytes) or its
    paths; they go to the node's own log in full, and the coordinator gets the stage and
    the error type. The process keeps serving.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(msg: Message, context: Context) -> Message:
            try:
                return handler(msg, context)
            except Exception as err:
                cid = client_id_of(context)
                _log_failure(cid, stage, err, f"client %s: {stage} failed: %s: %s")
                reason = f"{stage} failed: {type(err).__name__} (details in the node's log)"
                return status_reply(msg, keys.STATUS_FAILED, reason, cid)

        return run

    return wrap


def status_reply(msg: Message, status: str, reason: str, client_id: str) -> Message:
    """A reply that carries only a status (refused / rejected) and its reason."""
    return Message(
        RecordDict(
            {
                keys.REC_FEDAI: ConfigRecord(
                    {
                        keys.KEY_CLIENT_ID: client_id,
                        keys.KEY_STATUS: status,
                        keys.KEY_REASON: reason,
                    }
                )
            }
        ),
        reply_to=msg,
    )


# ---------------------------------------------------------------------- handlers
@app.query()
@guarded("discovery")
def hello(msg: Message, context: Context) -> Message:
    """Discovery: report identity and data shape (never the data)."""
    cfg = experiment_of(msg)
    data, _ = raw_data_of(context, cfg)
    return Message(
        RecordDict(
            {
                keys.REC_FEDAI: ConfigRecord(
                    {
                        keys.KEY_CLIENT_ID: client_id_of(context),
                        keys.KEY_NUM_TRAIN: len(data.y_train),
                        keys.KEY_NUM_TEST: len(data.y_test),
                        keys.KEY_INPUT_SHAPE: "x".join(str(d) for d in data.input_shape),
                        keys.KEY_NUM_CLASSES: data.num_classes,
                        keys.KEY_STANDARDIZES: standardizes_here(context, cfg),
                    }
                )
            }
        ),
        reply_to=msg,
    )


@app.query("statistics")
@guarded("statistics")
def share_statistics(msg: Message, context: Context) -> Message:
    """Federated statistics: share this node's training-split moments, or check the sum.

    Replies ``declined`` (with the setting that decides it, never data) when the node does
    not share; else the limbs of its per-feature normalised mean and mean square (features
    clipped to ``data.feature_bounds``, :func:`fedai.data.scaling.moments`) encoded with
    weight ``n`` = its training count.

    A message that carries the sum (:data:`~fedai.federation.keys.REC_STATISTICS`, sent
    to the contributors under CKKS or Paillier, where the coordinator cannot check it)
    asks the node to check it before round 1: the pooled moments and, since this node is
    in the sum, the rest without its own must pass
    :func:`fedai.data.scaling.check_moments`. The reply is ``ok`` or ``rejected`` naming
    the error type and the failed check only (never a value).
    """
    cfg = experiment_of(msg)
    cid = client_id_of(context)
    reason = uses_federated_statistics(context, cfg)
    if reason is None and policy_of(context).violations(cfg):
        reason = "the request is outside the node policy"
    if reason is not None:
        logger.info("client %s does not share feature statistics: %s", cid, reason)
        return status_reply(msg, keys.STATUS_DECLINED, reason, cid)
    raw, _ = raw_data_of(context, cfg)
    codec, step = statistics_codec(context, cfg)
    record = msg.content.array_records.get(keys.REC_STATISTICS)
    try:
        own = scaling.moments(raw.x_train, bounds=codec.bounds)
        payload = codec.encode_moments(own, step=step) if record is None else []
    except (ConfigError, DataError) as err:  # the detail stays in the node's log
        logger.warning("client %s cannot share feature statistics: %s", cid, err)
        return status_reply(
            msg, keys.STATUS_DECLINED, f"statistics cannot be encoded: {type(err).__name__}", cid
        )
    if record is not None:  # the sum, to check before anyone standardises with it
        config = msg.content.config_records[keys.REC_CONFIG]
        try:
            weight = as_float(
                config.get(keys.KEY_STATISTICS_WEIGHT),
                what=keys.KEY_STATISTICS_WEIGHT,
                lo=0.0,
                hi=scaling.MAX_TOTAL_COUNT,
            )
            scaling.decode_pooled(
                codec,
                record_to_payload(record),
                total_count=weight,
                own_count=own.count,
                sample_shape=raw.input_shape,
                step=step,
                own=own,
            )
        except (CorruptPayloadError, KeyMismatchError, ProtocolError) as err:
            _log_failure(cid, "statistics", err, "client %s refuses the statistics: %s: %s")
            check = err.check if isinstance(err, scaling.StatisticsBoundsError) else ""
            detail = f" ({check})" if check else ""
            return status_reply(
                msg,
                keys.STATUS_REJECTED,
                f"statistics rejected: {type(err).__name__}{detail}",
                cid,
            )
        return status_reply(msg, keys.STATUS_OK, "the pooled statistics pass", cid)
    return Message(
        RecordDict(
            {
                keys.REC_ARRAYS: payload_to_record(payload),
                keys.REC_METRICS: MetricRecord({keys.KEY_NUM_EXAMPLES: own.count}),
                keys.REC_FEDAI: ConfigRecord(
                    {keys.KEY_CLIENT_ID: cid, keys.KEY_STATUS: keys.STATUS_OK}
                ),
            }
        ),
        reply_to=msg,
    )


@app.train()
@guarded("train")
def train(msg: Message, context: Context) -> Message:
    """Decode the global model, train locally (DP-SGD if configured), reply encoded.

    With privacy on, the client first opens its ledger (never reset); if the round would
    pass its budget, or the ledger holds less than the coordinator's checkpointed view of
    it (lost or replaced), it refuses with the reason instead of training. A message
    without a run id or a round is refused (ProtocolError) in every privacy mode.
    """
    cfg = experiment_of(msg)
    cid = client_id_of(context)
    config = msg.content.config_records[keys.REC_CONFIG]
    policy = policy_of(context)
    # Untrusted numbers from the coordinator: checked before anything trains.
    round_ = as_int(config.get(keys.KEY_SERVER_ROUND), what="server round", lo=1, hi=10**9)
    run = RunRef.from_config(config, round_=round_)  # mandatory in every privacy mode
    num_sampled = as_int(config.get(keys.KEY_NUM_SAMPLED, 1), what="num-sampled", lo=1, hi=10**9)
    refused = policy.violations(cfg, num_sampled=num_sampled)
    if refused:
        logger.warning("client %s refuses the round: %s", cid, "; ".join(refused))
        return status_reply(msg, keys.STATUS_REFUSED, "; ".join(refused), cid)
    codec = codec_of(context, cfg)
    try:
        data = data_for(msg, context, cfg)
        spec = spec_of(msg, cfg, data)
        model = global_model(msg, cfg, spec, codec, node_id=context.node_id)
    except (CorruptPayloadError, KeyMismatchError) as err:
        return reject(msg, cid, err)
    n = len(data.y_train)
    if cfg.train.lr_decay != 1.0:
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, lr=cfg.train.lr_at(round_)))
    fedai_rec: dict[str, str] = {keys.KEY_CLIENT_ID: cid, keys.KEY_STATUS: keys.STATUS_OK}
    mu = cfg.strategy.proximal_mu
    work = as_float(config.get(keys.KEY_WORK_FRACTION, 1.0), what="work fraction", lo=1e-12, hi=1.0)
    if cfg.privacy.mode == "none":
        loss, _steps = train_local(
            model,
            data.x_train,
            data.y_train,
            cfg.train,
            seed=round_seed(cfg, cid, round_),
            proximal_mu=mu,
            work_fraction=work,
        )
        weights, weight = get_weights(model), float(n)
    else:
        store = LedgerStore(context, cid)
        budget = policy.budget(cfg.privacy.budget_epsilon)
        try:
            ledger = store.open(cfg, num_samples=n, budget_epsilon=budget, run=run)
        except LedgerContinuityError as err:  # lost or replaced: never train from zero
            return status_reply(msg, keys.STATUS_REFUSED, str(err), cid)
        global_weights = get_weights(model)
        try:
            loss, sigma = train_private(
                model,
                data,
                cfg,
                ledger=ledger,
                round_=round_,
                policy=policy,
                proximal_mu=mu,
                work_fraction=work,
                run=run,
            )
        except PolicyViolationError as err:  # the ledger is left as it was
            logger.warning("client %s refuses the round: %s", cid, err)
            return status_reply(msg, keys.STATUS_REFUSED, str(err), cid)
        except RoundAlreadyChargedError as err:  # a resumed coordinator re-sent the round
            logger.warning("client %s does not train: %s", cid, err)
            reply = status_reply(msg, keys.STATUS_ALREADY_CHARGED, str(err), cid)
            reply.content.config_records[keys.REC_FEDAI][keys.KEY_PRIVACY] = privacy_report(
                ledger, noise_multiplier=None, run_id=run.run_id
            )
            return reply
        except PrivacyBudgetExceededError as err:
            store.save(ledger)  # persist the exhausted mark with the unchanged history
            reply = status_reply(msg, keys.STATUS_REFUSED, str(err), cid)
            reply.content.config_records[keys.REC_FEDAI][keys.KEY_PRIVACY] = privacy_report(
                ledger, noise_multiplier=None, run_id=run.run_id
            )
            return reply
        store.save(ledger)
        fedai_rec[keys.KEY_PRIVACY] = privacy_report(
            ledger, noise_multiplier=sigma, run_id=run.run_id
        )
        weights, weight = get_weights(model), float(n)
        if cfg.privacy.mode == "local+user":
            weights, _info = user_level_contribution(
                global_weights, weights, cfg, num_sampled=num_sampled
            )
            weight = 1.0  # an example-count weight would multiply the sensitivity
    payload = codec.encode(weights, weight)
    metrics: dict[str, int | float | list[int] | list[float]] = {keys.KEY_NUM_EXAMPLES: weight}
    if cfg.privacy.mode == "none":  # under DP the raw training loss is not released
        metrics[keys.KEY_TRAIN_LOSS] = loss
    return Message(
        RecordDict(
            {
                keys.REC_ARRAYS: payload_to_record(payload),
                keys.REC_METRICS: MetricRecord(metrics),
                keys.REC_FEDAI: ConfigRecord(fedai_rec),  # type: ignore[arg-type]
            }
        ),
        reply_to=msg,
    )


@app.evaluate()
@guarded("evaluate")
def evaluate_global(msg: Message, context: Context) -> Message:
    """Decode the candidate aggregate, bounds-check it, evaluate on the local test split.

    A node with its own data answers within its evaluation policy
    (:func:`clients.evaluation.bounded_evaluation`): its own split, a bounded number of
    models per round, and in ``dp`` mode noisy metrics charged to its ledger. A refusal
    names the setting, never the data.
    """
    cfg = experiment_of(msg)
    cid = client_id_of(context)
    policy = policy_of(context)
    refused = policy.violations(cfg)
    if refused:
        return status_reply(msg, keys.STATUS_FAILED, "; ".join(refused), cid)
    codec = codec_of(context, cfg)
    config = msg.content.config_records[keys.REC_CONFIG]
    round_ = as_int(config.get(keys.KEY_SERVER_ROUND), what="server round", lo=1, hi=10**9)
    stepped: tuple[list[np.ndarray], list[np.ndarray]] | None = None
    try:
        data = data_for(msg, context, cfg)
        spec = spec_of(msg, cfg, data)
        if bool(config.get(keys.KEY_SERVER_STEP, False)):
            stepped = server_step(msg, cfg, spec, codec)
            model = build_model(spec, seed=cfg.experiment.seed)
            set_weights(model, [a.astype(np.float32) for a in stepped[0]])
        else:
            model = global_model(msg, cfg, spec, codec, node_id=context.node_id)
    except (CorruptPayloadError, KeyMismatchError) as err:
        return reject(msg, cid, err)
    if policy.own_data:
        run_id = config.get(keys.KEY_RUN_ID, "")
        try:
            metrics = bounded_evaluation(
                model,
                data,
                msg=msg,
                context=context,
                cfg=cfg,
                policy=policy,
                client_id=cid,
                run_id=run_id if isinstance(run_id, str) else "",
                round_=round_,
            )
        except (PolicyViolationError, PrivacyBudgetExceededError) as err:
            logger.warning("client %s does not evaluate: %s", cid, err)
            return status_reply(msg, keys.STATUS_REFUSED, str(err), cid)
    else:  # simulation: the experimenter's own data, evaluated in the clear
        res = evaluate(model, data.x_test, data.y_test)
        metrics = {
            keys.KEY_NUM_EXAMPLES: float(res.num_examples),
            keys.KEY_LOSS: res.loss,
            keys.KEY_ACCURACY: res.accuracy,
        }
    content = RecordDict(
        {
            keys.REC_METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
            keys.REC_FEDAI: ConfigRecord(
                {keys.KEY_CLIENT_ID: cid, keys.KEY_STATUS: keys.STATUS_OK}
            ),
        }
    )
    if stepped is not None:
        new_x, new_state = stepped
        content.config_records[keys.REC_FEDAI][keys.KEY_FINGERPRINT] = fingerprint(new_x, new_state)
        content.array_records[keys.REC_ARRAYS] = payload_to_record(codec.encode(new_x, 1.0))
        content.array_records[keys.REC_STATE] = payload_to_record(codec.encode(new_state, 1.0))
    return Message(content, reply_to=msg)


def server_step(
    msg: Message, cfg: ExperimentConfig, spec: ModelSpec, codec: ClientCodec
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Under HE, run the strategy's server optimiser step on the decrypted average.

    Decodes (bounds-checked) the candidate sum, the current global model and the
    optimiser state the coordinator holds encrypted, and returns the next model and state
    snapped to the codec grid (see :mod:`server.strategy` for the design).

    Raises:
        CorruptPayloadError / KeyMismatchError: a payload fails decoding or bounds.
    """
    config = msg.content.config_records[keys.REC_CONFIG]
    optimizer = build_optimizer(cfg.strategy.name, hyperparameters_of(cfg.strategy))
    model = build_model(spec, seed=cfg.experiment.seed)
    shapes = [tuple(v.shape) for v in model.state_dict().values()]
    state_shapes = [s for _ in range(optimizer.state_slots) for s in shapes]
    records = msg.content.array_records
    total = float(config.get(keys.KEY_TOTAL_WEIGHT, 0.0))  # type: ignore[arg-type]
    average = codec.decode(record_to_payload(records[keys.REC_ARRAYS]), total, shapes)
    if bool(config.get(keys.KEY_INIT, False)):
        current = get_weights(model)
        state = [a.astype(np.float32) for a in optimizer.initial_state(shapes)]
    else:
        weight = float(config.get(keys.KEY_MODEL_WEIGHT, 0.0))  # type: ignore[arg-type]
        current = codec.decode(record_to_payload(records[keys.REC_MODEL]), weight, shapes)
        state = codec.decode(record_to_payload(records[keys.REC_STATE]), 1.0, state_shapes)
    return optimizer.step(
        model=current,
        average=average,
        state=state,
        round_decimals=cfg.secure_aggregation.round_decimals,
    )
