"""Typed, validated experiment configuration.

One :class:`ExperimentConfig` holds every setting of a run. It is built from a TOML file
(:meth:`ExperimentConfig.from_toml`), from Flower's flat ``run_config``
(:meth:`ExperimentConfig.from_flat`, keys such as ``"train.lr"``) and from command-line
overrides (``--set train.lr=0.1``). Unknown keys, wrong types and out-of-range values are
collected and reported together in one :class:`~fedai.errors.ConfigError` whose message
names each key, what was expected and what was given.

Example:
    >>> cfg = ExperimentConfig.from_mapping({"experiment": {"rounds": 3}})
    >>> cfg.experiment.rounds
    3
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedai.errors import ConfigError

PartitionName = Literal["iid", "dirichlet", "shards"]
StandardizeMode = Literal["auto", "none", "zscore"]
StatisticsMode = Literal["auto", "federated", "local"]
PrivacyMode = Literal["none", "local", "local+user"]
AccountantName = Literal["rdp", "prv"]
GradSampleMode = Literal["hooks", "ew", "ghost", "fused"]
#: A registered scheme name (``fedai.schemes.scheme_names()``); checked in problems().
SecureScheme = str
ClientSampling = Literal["poisson", "fixed"]
OptimizerName = Literal["sgd", "adam"]
LogFormat = Literal["text", "json"]
#: Largest ``experiment.seed``: int64, what torch's generators and Flower's run_config take.
MAX_SEED = 2**63 - 1


def _problems_range(
    name: str,
    value: float,
    lo: float | None,
    hi: float | None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> list[str]:
    """Return a one-element problem list if ``value`` lies outside [lo, hi] (or open ends)."""
    bad = (
        (lo is not None and (value <= lo if lo_open else value < lo))
        or (hi is not None and (value >= hi if hi_open else value > hi))
        or (isinstance(value, float) and not math.isfinite(value))
    )
    if not bad:
        return []
    left = "(" if lo_open else "["
    right = ")" if hi_open or hi is None else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return [f"{name} must be in {left}{lo_s}, {hi_s}{right}; got {value!r}"]


def _problems_unused(
    prefix: str, section: Any, names: tuple[str, ...], *, applies: str
) -> list[str]:
    """One problem per key in ``names`` that ``section`` sets to other than its default.

    For options that would have no effect: ``applies`` says when they do (a default is
    never "set", so configs that leave the key alone are unaffected).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    return [
        f"{prefix}.{name} applies only {applies}; got {name}={getattr(section, name)!r}"
        for name in names
        if getattr(section, name) != defaults[name]
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentSection:
    """``[experiment]``: identity and shape of the federation, and its drop-out rules.

    ``round_timeout``: seconds the coordinator waits for the replies of one exchange of a
    round (train, then evaluate); then it goes on with the replies it has, if at least
    ``min_replies`` of the clients sent a train message answered (fewer: the round fails
    and the previous model is kept; with fewer sampled, all of them). A client that missed
    ``max_missed_rounds`` rounds in a row (no reply, or an error reply from its node), or
    whose node failed discovery, is marked unavailable and not sampled; every
    ``retry_unavailable_every`` rounds it is sent a discovery hello without waiting, and
    once it answers it is sampled again (a node that reconnects under a new id is re-
    identified at once). ``max_missed_rounds = 0`` never marks a client.
    """

    name: str = "quickstart"
    seed: int = 0
    rounds: int = 20
    num_clients: int = 10
    clients_per_round: int = 10
    round_timeout: float = 3600.0
    min_replies: int = 1
    max_missed_rounds: int = 2
    retry_unavailable_every: int = 5

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out = _problems_range("experiment.rounds", self.rounds, 1, 100_000)
        if not 0 <= self.seed <= MAX_SEED:  # numpy refuses < 0; torch, Flower stop at int64
            out.append(f"experiment.seed must be in [0, 2**63 - 1]; got {self.seed!r}")
        out += _problems_range("experiment.num_clients", self.num_clients, 1, 100_000)
        out += _problems_range(
            "experiment.clients_per_round", self.clients_per_round, 1, self.num_clients
        )
        out += _problems_range(
            "experiment.round_timeout", self.round_timeout, 0, 7 * 86_400, lo_open=True
        )
        out += _problems_range(
            "experiment.min_replies", self.min_replies, 1, self.clients_per_round
        )
        out += _problems_range("experiment.max_missed_rounds", self.max_missed_rounds, 0, 100_000)
        out += _problems_range(
            "experiment.retry_unavailable_every", self.retry_unavailable_every, 1, 100_000
        )
        if not self.name or any(c in self.name for c in "/\\\0"):
            out.append(
                f"experiment.name must be a non-empty name without slashes; got {self.name!r}"
            )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSection:
    """``[data]``: where samples come from and how they are split across clients.

    ``dataset`` is one of ``digits``, ``breast_cancer``, ``synthetic`` (FedProx
    Synthetic(alpha, beta), its own natural split), ``csv:PATH``, ``npz:PATH`` or
    ``hub:NAME`` (``mnist``, ``cifar10``, ``femnist``; needs the ``hub`` extra).

    ``standardize``: ``zscore`` scales each feature by a mean and standard deviation from
    training splits (``statistics`` says whose; test splits reuse them); ``none`` uses the
    features as loaded; ``auto`` (default) is ``zscore`` for file
    sources (``csv:``, ``npz:``, a node's ``data-path``) and ``none`` for the built-in and
    hub sets, which are already scaled (see :mod:`fedai.data.scaling`).

    ``statistics``: whose mean and standard deviation standardise the features.
    ``federated``: every node's training split, pooled before round 1 (the nodes share
    their count, per-feature mean and mean square, encoded with the run's scheme; the
    coordinator only sums them); ``local``: the node's own training split (nothing
    leaves the node, but label-skewed nodes then disagree on the feature axes);
    ``auto`` (default): ``federated`` when ``privacy.mode`` is ``none`` and
    ``feature_bounds`` are declared, else ``local`` (the shared moments are not
    differentially private, and without bounds one node's moments could move the pooled
    ones arbitrarily far). ``federated`` needs ``feature_bounds``.

    ``feature_bounds``: the public per-feature bounds every node clips its features to
    before sharing moments and before standardising with the pooled ones, as JSON text:
    one ``[low, high]`` pair for every feature, or a list of pairs, one per (flattened)
    feature, each ``low < high``. One node can then move the pooled mean of a feature by
    at most its weight share times ``high - low`` (:mod:`fedai.data.scaling`). Empty
    (default): none declared.

    ``max_statistics_weight_share``: the coordinator leaves out of the federated
    statistics any node whose announced training count exceeds this share of the
    contributors' total (1.0, the default: no cap). Counts are announced, not proven.
    """

    dataset: str = "digits"
    partition: PartitionName = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    test_fraction: float = 0.2
    label_column: str = "label"
    standardize: StandardizeMode = "auto"
    statistics: StatisticsMode = "auto"
    feature_bounds: str = ""
    max_statistics_weight_share: float = 1.0
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    synthetic_dim: int = 60
    synthetic_classes: int = 10
    min_samples: int = 2

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out = _problems_range("data.alpha", self.alpha, 0, None, lo_open=True)
        out += _problems_range("data.shards_per_client", self.shards_per_client, 1, 10_000)
        out += _problems_range(
            "data.test_fraction", self.test_fraction, 0, 1, lo_open=True, hi_open=True
        )
        out += _problems_range("data.synthetic_alpha", self.synthetic_alpha, 0, None)
        out += _problems_range("data.synthetic_beta", self.synthetic_beta, 0, None)
        out += _problems_range("data.synthetic_dim", self.synthetic_dim, 1, 100_000)
        out += _problems_range("data.synthetic_classes", self.synthetic_classes, 2, 10_000)
        out += _problems_range("data.min_samples", self.min_samples, 2, None)
        known = ("digits", "breast_cancer", "synthetic")
        if not (self.dataset in known or self.dataset.split(":", 1)[0] in ("csv", "npz", "hub")):
            out.append(
                "data.dataset must be one of digits, breast_cancer, synthetic, "
                f"csv:PATH, npz:PATH, hub:NAME; got {self.dataset!r}"
            )
        if self.standardize not in get_args(StandardizeMode):
            out.append(
                "data.standardize must be one of "
                f"{', '.join(repr(m) for m in get_args(StandardizeMode))}; "
                f"got {self.standardize!r}"
            )
        if self.statistics not in get_args(StatisticsMode):
            out.append(
                "data.statistics must be one of "
                f"{', '.join(repr(m) for m in get_args(StatisticsMode))}; "
                f"got {self.statistics!r}"
            )
        elif self.standardize == "none":
            out += _problems_unused(
                "data",
                self,
                ("statistics", "feature_bounds", "max_statistics_weight_share"),
                applies="when features are standardised, not with data.standardize 'none'",
            )
        elif self.statistics == "local":
            out += _problems_unused(
                "data",
                self,
                ("feature_bounds", "max_statistics_weight_share"),
                applies="to federated statistics, not with data.statistics 'local'",
            )
        if self.feature_bounds:
            try:
                self.parse_feature_bounds(self.feature_bounds, what="data.feature_bounds")
            except ConfigError as err:
                out += err.problems
        elif self.statistics == "federated":
            out.append(
                "data.statistics 'federated' needs data.feature_bounds (public [low, high] "
                "bounds that limit what one node's moments can move); got none"
            )
        out += _problems_range(
            "data.max_statistics_weight_share",
            self.max_statistics_weight_share,
            0,
            1,
            lo_open=True,
        )
        if self.dataset == "synthetic":  # options with no effect are refused
            out += _problems_unused(
                "data",
                self,
                ("partition", "alpha", "shards_per_client", "min_samples"),
                applies="to a pooled data set (synthetic has its own natural split per "
                "client), not to data.dataset 'synthetic'",
            )
        else:
            names = ("synthetic_alpha", "synthetic_beta", "synthetic_dim", "synthetic_classes")
            out += _problems_unused(
                "data", self, names, applies=f"to data.dataset 'synthetic', not {self.dataset!r}"
            )
            if self.partition != "dirichlet":
                out += _problems_unused(
                    "data",
                    self,
                    ("alpha",),
                    applies=f"to data.partition 'dirichlet', not {self.partition!r}",
                )
            if self.partition != "shards":
                out += _problems_unused(
                    "data",
                    self,
                    ("shards_per_client",),
                    applies=f"to data.partition 'shards', not {self.partition!r}",
                )
        return out

    @staticmethod
    def parse_feature_bounds(text: str, *, what: str) -> tuple[tuple[float, float], ...]:
        """Parse feature bounds (``data.feature_bounds``, a node's ``feature-bounds`` file).

        Args:
            text: JSON: one ``[low, high]`` pair (every feature) or a list of them (one
                per feature), finite numbers with ``low < high``.
            what: Names the setting in messages.

        Returns:
            The pairs (one pair: it applies to every feature).

        Raises:
            ConfigError: not JSON, not that shape, or a pair that is not finite and
                increasing (every problem at once).
        """
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{what} must be JSON [low, high] or [[low, high], ...]; got {text[:40]!r} "
                f"({err.msg})"
            ) from err

        def number(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)

        def is_pair(v: object) -> bool:
            return isinstance(v, list) and len(v) == 2 and all(number(x) for x in v)

        if is_pair(value):
            pairs = [value]
        elif isinstance(value, list) and value and all(is_pair(v) for v in value):
            pairs = value
        else:
            raise ConfigError(
                f"{what} must be one [low, high] pair or a non-empty list of them; "
                f"got {text[:40]!r}"
            )
        problems = [
            f"{what} pair {i} must be finite with low < high and |values| <= 1e12; "
            f"got [{lo!r}, {hi!r}]"
            for i, (lo, hi) in enumerate(pairs)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi)
            or max(abs(lo), abs(hi)) > 1e12
        ]
        if problems:
            raise ConfigError(problems)
        return tuple((float(lo), float(hi)) for lo, hi in pairs)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSection:
    """``[model]``: which registered model to train (see :mod:`fedai.models`)."""

    name: str = "mlp"
    hidden: int = 128

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out = _problems_range("model.hidden", self.hidden, 1, 65_536)
        from fedai.models import MODEL_NAMES  # local import: models imports torch

        if self.name not in MODEL_NAMES:
            out.append(f"model.name must be one of {', '.join(MODEL_NAMES)}; got {self.name!r}")
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSection:
    """``[train]``: the local optimisation each client runs per round.

    ``lr_decay`` multiplies the learning rate once per round (1.0: constant).
    """

    local_epochs: int = 3
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: OptimizerName = "sgd"
    lr_decay: float = 1.0

    def lr_at(self, round_: int) -> float:
        """Learning rate of round ``round_`` (1-based): ``lr * lr_decay ** (round_ - 1)``."""
        return self.lr * self.lr_decay ** max(round_ - 1, 0)

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out = _problems_range("train.local_epochs", self.local_epochs, 1, 10_000)
        out += _problems_range("train.lr_decay", self.lr_decay, 0, 1, lo_open=True)
        out += _problems_range("train.batch_size", self.batch_size, 1, 1_000_000)
        out += _problems_range("train.lr", self.lr, 0, 100, lo_open=True)
        out += _problems_range("train.momentum", self.momentum, 0, 1, hi_open=True)
        out += _problems_range("train.weight_decay", self.weight_decay, 0, 10)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySection:
    """``[privacy]``: local DP-SGD (Opacus) and optional user-level DP of the aggregate.

    ``mode = "none"`` trains without privacy. ``local`` runs DP-SGD on every client with
    either a fixed ``noise_multiplier`` or a ``target_epsilon`` that calibrates sigma per
    client for the planned rounds. ``local+user`` additionally clips each client's whole
    update to ``user_clipping_norm`` and adds distributed Gaussian noise so that the sum
    carries ``user_noise_multiplier * user_clipping_norm``.

    ``client_sampling`` (``local+user`` only) is how the coordinator picks a round's
    clients, and the user-level epsilon is accounted for exactly that sampling:
    ``poisson`` (the default) lets every client join each round independently with
    probability ``clients_per_round / num_clients``; ``fixed`` draws exactly
    ``clients_per_round`` (accounted under the replace-one relation, a much larger
    epsilon). Both draw from OS entropy, never from ``experiment.seed``: amplification by
    sampling needs a sample the adversary cannot recompute. Other modes sample exactly
    ``clients_per_round`` from the seed (bit-reproducible), so setting the key there is an
    error. See :mod:`fedai.privacy.client_sampling`.
    """

    mode: PrivacyMode = "none"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: AccountantName = "rdp"
    budget_epsilon: float | None = None
    grad_sample_mode: GradSampleMode = "hooks"  # fused: Linear-only models, fastest
    secure_mode: bool = False
    user_clipping_norm: float = 1.0
    user_noise_multiplier: float = 1.0
    client_sampling: ClientSampling | None = None  # local+user only; None = "poisson"

    @property
    def user_client_sampling(self) -> ClientSampling | None:
        """The client sampling user-level DP runs and accounts; None outside ``local+user``."""
        if self.mode != "local+user":
            return None
        return self.client_sampling or "poisson"

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out: list[str] = []
        if self.noise_multiplier is not None:
            out += _problems_range(
                "privacy.noise_multiplier", self.noise_multiplier, 0, None, lo_open=True
            )
        if self.target_epsilon is not None:
            out += _problems_range(
                "privacy.target_epsilon", self.target_epsilon, 0, None, lo_open=True
            )
        if self.budget_epsilon is not None:
            out += _problems_range(
                "privacy.budget_epsilon", self.budget_epsilon, 0, None, lo_open=True
            )
        if self.delta is not None:
            out += _problems_range("privacy.delta", self.delta, 0, 1, lo_open=True, hi_open=True)
        out += _problems_range("privacy.max_grad_norm", self.max_grad_norm, 0, None, lo_open=True)
        out += _problems_range(
            "privacy.user_clipping_norm", self.user_clipping_norm, 0, None, lo_open=True
        )
        out += _problems_range(
            "privacy.user_noise_multiplier", self.user_noise_multiplier, 0, None, lo_open=True
        )
        if self.client_sampling is not None and self.mode != "local+user":
            out.append(
                "privacy.client_sampling applies only when privacy.mode is 'local+user' "
                "(other modes sample exactly clients_per_round from experiment.seed); got "
                f"client_sampling={self.client_sampling!r} with mode {self.mode!r}"
            )
        if self.mode != "none" and (self.noise_multiplier is None) == (self.target_epsilon is None):
            out.append(
                "privacy: exactly one of privacy.noise_multiplier and "
                f"privacy.target_epsilon must be set when mode is {self.mode!r}; got "
                f"noise_multiplier={self.noise_multiplier!r}, "
                f"target_epsilon={self.target_epsilon!r}"
            )
        if self.mode == "none":  # DP-SGD knobs without DP-SGD (delta and user_* feed plans;
            # grad_sample_mode, a speed setting, is warned about by fedai.preflight)
            out += _problems_unused(
                "privacy",
                self,
                (
                    "noise_multiplier",
                    "target_epsilon",
                    "budget_epsilon",
                    "max_grad_norm",
                    "accountant",
                    "secure_mode",
                ),
                applies="when privacy.mode is 'local' or 'local+user', not 'none'",
            )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureAggregationSection:
    """``[secure_aggregation]``: homomorphic secure aggregation.

    ``scheme = "none"`` aggregates in the clear. ``ckks`` (TenSEAL) and ``paillier``
    (``phe``) need a key directory made by ``fedai keys create``: clients read the secret
    bundle, the coordinator only the public one. ``min_contributors``: a round with fewer
    usable contributions fails instead of revealing a lone client's model to the others.
    ``flood_sigma``: Gaussian noise clients add to a decrypted aggregate before rounding
    (noise flooding against CKKS key recovery, Li & Micciancio 2021); 0 = rounding only.
    The allowed ``scheme`` values come from the scheme registry (:mod:`fedai.schemes`).

    Paillier quantises every value to ``quantization_bits`` bits over
    ``[-update_bound, update_bound]`` and reserves ``ceil(log2(max_total_weight))``
    headroom bits per packed slot: a round's total weight (sum of the contributors'
    example counts) must not exceed ``max_total_weight``. ``workers``: processes for
    Paillier encryption/decryption (0 = one per available core, 1 = none).
    """

    scheme: SecureScheme = "none"
    key_dir: str = ""
    update_bound: float = 100.0
    round_decimals: int = 6
    min_contributors: int = 1
    flood_sigma: float = 0.0
    quantization_bits: int = 32
    max_total_weight: int = 1_048_576
    workers: int = 0

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        from fedai.schemes import REGISTRY

        out: list[str] = []
        if self.scheme not in REGISTRY:
            names = ", ".join(repr(n) for n in REGISTRY)
            out.append(f"secure_aggregation.scheme must be one of {names}; got {self.scheme!r}")
        out += _problems_range(
            "secure_aggregation.update_bound", self.update_bound, 0, None, lo_open=True
        )
        out += _problems_range(
            "secure_aggregation.min_contributors", self.min_contributors, 1, 100_000
        )
        out += _problems_range("secure_aggregation.flood_sigma", self.flood_sigma, 0, 1)
        out += _problems_range("secure_aggregation.round_decimals", self.round_decimals, 1, 12)
        out += _problems_range(
            "secure_aggregation.quantization_bits", self.quantization_bits, 2, 32
        )
        out += _problems_range(
            "secure_aggregation.max_total_weight", self.max_total_weight, 1, 2**30
        )
        out += _problems_range("secure_aggregation.workers", self.workers, 0, 256)
        if self.scheme == "none":  # key and ciphertext settings without encryption
            out += _problems_unused(
                "secure_aggregation",
                self,
                ("key_dir", "flood_sigma", "quantization_bits", "max_total_weight", "workers"),
                applies=f"to a secure scheme ({', '.join(n for n in REGISTRY if n != 'none')}), "
                "not secure_aggregation.scheme 'none'",
            )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSection:
    """``[audit]``: membership-inference audit of the trained model (``fedai audit``).

    The pooled data set is shuffled and halved: ``member_fraction`` of the first half are
    members (the audited model's training set), as many again are non-members, and the
    second half feeds ``shadow_models`` offline-LiRA shadow models. The audited model is
    trained centrally for ``epochs`` epochs with the ``[train]`` and ``[privacy]`` settings.
    """

    attacks: str = "loss,lira"
    shadow_models: int = 4
    member_fraction: float = 0.5
    epochs: int = 50

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out = _problems_range("audit.shadow_models", self.shadow_models, 1, 256)
        out += _problems_range("audit.member_fraction", self.member_fraction, 0, 0.5, lo_open=True)
        out += _problems_range("audit.epochs", self.epochs, 1, 100_000)
        names = [a.strip() for a in self.attacks.split(",") if a.strip()]
        if not names or any(a not in ("loss", "lira") for a in names):
            out.append(f"audit.attacks must be a comma list of loss, lira; got {self.attacks!r}")
        if "lira" in names and self.shadow_models < 2:
            out.append(
                f"audit.shadow_models must be >= 2 for the lira attack; got {self.shadow_models}"
            )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategySection:
    """``[strategy]``: how the next global model follows each round's average.

    ``name`` is a registered strategy (:mod:`fedai.strategies.registry`): ``fedavg``,
    ``fedprox`` (clients add ``proximal_mu * (w - w_global)`` to every step's gradient, Li
    et al. 2020), or a server optimiser of Reddi et al. 2021 (``fedavgm``, ``fedadam``,
    ``fedyogi``, ``fedadagrad``) with ``server_lr`` (default 1.0 for fedavgm, 0.1 for the
    adaptive ones), ``server_momentum`` (fedavgm), ``beta1``, ``beta2`` and ``tau``.

    ``straggler_fraction`` of each round's sampled clients (chosen from the seed) do only a
    uniformly random fraction of their local steps (systems heterogeneity, as in FedProx's
    experiments); ``drop_stragglers`` leaves them out instead (FedAvg's behaviour there).
    ``evaluate_clients``: clients that evaluate (and bounds-check) each round's candidate,
    sampled from the seed; 0 = every client. With a sample, every client evaluates the
    final model once at the end.
    """

    name: str = "fedavg"
    proximal_mu: float = 0.0
    server_lr: float | None = None
    server_momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    straggler_fraction: float = 0.0
    drop_stragglers: bool = False
    evaluate_clients: int = 0

    @property
    def effective_server_lr(self) -> float:
        """``server_lr``, or the strategy's default (1.0 for fedavgm, else 0.1)."""
        if self.server_lr is not None:
            return self.server_lr
        return 1.0 if self.name in ("fedavg", "fedprox", "fedavgm") else 0.1

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        from fedai.strategies.registry import REGISTRY as STRATEGIES

        out: list[str] = []
        if self.name not in STRATEGIES:
            names = ", ".join(repr(n) for n in STRATEGIES)
            out.append(f"strategy.name must be one of {names}; got {self.name!r}")
        out += _problems_range("strategy.proximal_mu", self.proximal_mu, 0, 1e4)
        if self.proximal_mu != 0 and self.name != "fedprox":
            out.append(
                "strategy.proximal_mu applies only to strategy.name 'fedprox'; got "
                f"proximal_mu={self.proximal_mu!r} with name {self.name!r}"
            )
        if self.server_lr is not None:
            out += _problems_range("strategy.server_lr", self.server_lr, 0, 100, lo_open=True)
            if self.name in ("fedavg", "fedprox"):
                out.append(
                    "strategy.server_lr applies only to a server optimiser (fedavgm, fedadam, "
                    f"fedyogi, fedadagrad); got server_lr={self.server_lr!r} with name "
                    f"{self.name!r}"
                )
        out += _problems_range("strategy.server_momentum", self.server_momentum, 0, 1, hi_open=True)
        out += _problems_range("strategy.beta1", self.beta1, 0, 1, hi_open=True)
        out += _problems_range("strategy.beta2", self.beta2, 0, 1, hi_open=True)
        out += _problems_range("strategy.tau", self.tau, 0, 1, lo_open=True)
        out += _problems_range("strategy.straggler_fraction", self.straggler_fraction, 0, 1)
        out += _problems_range("strategy.evaluate_clients", self.evaluate_clients, 0, 100_000)
        if self.drop_stragglers and self.straggler_fraction == 0:
            out.append(
                "strategy.drop_stragglers needs strategy.straggler_fraction > 0; got "
                f"straggler_fraction={self.straggler_fraction!r}"
            )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringSection:
    """``[monitoring]``: the coordinator's Prometheus endpoint and log format.

    ``metrics_port`` > 0 serves the run's metrics (see :mod:`fedai.monitoring`) at
    ``http://metrics_host:metrics_port/metrics`` while the run lasts; 0 (the default)
    serves nothing. ``metrics_host`` defaults to loopback: expose it wider only behind a
    firewall, it has no authentication. ``log_format = "json"`` makes the entry points
    log one JSON object per line with a UTC timestamp.
    """

    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_format: LogFormat = "text"

    def problems(self) -> list[str]:
        """Return every range problem of this section."""
        out = _problems_range("monitoring.metrics_port", self.metrics_port, 0, 65_535)
        if not self.metrics_host or any(c.isspace() for c in self.metrics_host):
            out.append(
                "monitoring.metrics_host must be a host name or address without spaces; "
                f"got {self.metrics_host!r}"
            )
        return out


_SectionT = TypeVar("_SectionT")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentConfig:
    """A complete, validated experiment configuration."""

    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    secure_aggregation: SecureAggregationSection = field(default_factory=SecureAggregationSection)
    audit: AuditSection = field(default_factory=AuditSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    monitoring: MonitoringSection = field(default_factory=MonitoringSection)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for f in dataclasses.fields(self):
            problems += getattr(self, f.name).problems()
        if (
            self.privacy.mode != "none"
            and self.privacy.grad_sample_mode == "fused"
            and self.model.name not in ("logreg", "mlp")
        ):
            problems.append(
                "privacy.grad_sample_mode 'fused' needs a Linear-only model (logreg or mlp); "
                f"got model.name {self.model.name!r} (use hooks, ew or ghost)"
            )
        if self.data.statistics == "federated" and self.privacy.mode != "none":
            problems.append(
                "data.statistics 'federated' needs privacy.mode 'none' (the shared feature "
                "moments are not differentially private; use 'local' or 'auto'); got "
                f"privacy.mode {self.privacy.mode!r}"
            )
        if self.secure_aggregation.scheme != "none" and not problems:
            from fedai.schemes import config_problems

            problems += config_problems(self)  # the scheme's own checks (e.g. headroom)
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a nested mapping ``{section: {key: value}}`` (e.g. parsed TOML).

        Raises:
            ConfigError: listing every unknown key, wrong type and out-of-range value.
        """
        problems: list[str] = []
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"config must be a table of sections; got {type(mapping).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        built: dict[str, Any] = {}
        for key, value in mapping.items():
            if key not in sections:
                problems.append(
                    f"unknown section [{key}]; expected one of {', '.join(sorted(sections))}"
                )
                continue
            if not isinstance(value, Mapping):
                problems.append(f"[{key}] must be a table; got {value!r}")
                continue
            section_type = _section_types()[key]
            kwargs, section_problems = _coerce_section(key, section_type, value)
            problems += section_problems
            if not section_problems:
                try:
                    built[key] = section_type(**kwargs)
                except ConfigError as err:  # pragma: no cover - sections validate lazily
                    problems += err.problems
        if problems:
            raise ConfigError(problems)
        return cls(**built)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
        """Load a TOML experiment file, then apply ``section.key=value`` overrides.

        Raises:
            ConfigError: if the file is missing, is not TOML, or holds invalid values.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"config file {str(p)!r} cannot be read: {err.strerror}") from err
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {err}") from err
        return cls.from_mapping(apply_overrides(data, overrides or []))

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
        """A TOML file (or, without one, the built-in quickstart defaults) plus overrides."""
        if path:
            return cls.from_toml(path, overrides)
        return cls.from_mapping(apply_overrides({}, overrides or []))

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> ExperimentConfig:
        """Build from Flower's flat ``run_config`` (``{"train.lr": 0.1, ...}``).

        A ``config-file`` key names an experiment TOML that the other keys override.
        """
        base: dict[str, Any] = {}
        rest = dict(flat)
        config_file = rest.pop("config-file", None)
        if isinstance(config_file, str) and config_file:
            try:
                base = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as err:
                raise ConfigError(
                    f"run_config config-file {config_file!r} cannot be loaded: {err}"
                ) from err
        problems = []
        for key, value in rest.items():
            section, _, name = key.partition(".")
            if not name:
                problems.append(f"run_config key {key!r} must look like section.key")
                continue
            base.setdefault(section, {})
            if isinstance(base[section], dict):
                base[section][name] = value
        if problems:
            raise ConfigError(problems)
        return cls.from_mapping(base)

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the nested plain-dict form (``None`` values kept)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Return Flower's flat form; ``None`` values are omitted (run_config has no null)."""
        flat: dict[str, bool | int | float | str] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                if value is not None:
                    flat[f"{section}.{key}"] = value
        return flat

    def to_json(self) -> str:
        """Serialise to a JSON string (round-trips through :meth:`from_json`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        """Parse the output of :meth:`to_json`, dropping ``None`` values."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config JSON is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config JSON must be an object; got {type(data).__name__}")
        cleaned = {
            s: {k: v for k, v in vals.items() if v is not None} if isinstance(vals, dict) else vals
            for s, vals in data.items()
        }
        return cls.from_mapping(cleaned)

    def replace(self, **sections: Any) -> ExperimentConfig:
        """Return a copy with whole sections replaced (``cfg.replace(train=...)``)."""
        return dataclasses.replace(self, **sections)


@functools.cache
def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(ExperimentConfig)
    return {name: hints[name] for name in (f.name for f in dataclasses.fields(ExperimentConfig))}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    """Return (ok, coerced value) for ``value`` against annotation ``tp``."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in get_args(tp):
            if arg is type(None):
                continue
            ok, out = _coerce(arg, value)
            if ok:
                return True, out
        return False, value
    if origin is Literal:
        return (value in get_args(tp) and isinstance(value, str)), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, value
        return (not math.isnan(float(value))), float(value)
    if tp is str:
        return isinstance(value, str), value
    return False, value  # pragma: no cover - every field uses the types above


@functools.cache
def _hints(section_type: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(section_type)


def _coerce_section(
    section: str, section_type: type[_SectionT], values: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    hints = _hints(section_type)  # type: ignore[arg-type]
    names = [f.name for f in dataclasses.fields(section_type)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in values.items():
        if key not in names:
            problems.append(f"unknown key {section}.{key}; expected one of {', '.join(names)}")
            continue
        ok, coerced = _coerce(hints[key], value)
        if not ok:
            problems.append(f"{section}.{key} must be {_type_name(hints[key])}; got {value!r}")
            continue
        kwargs[key] = coerced
    if not problems:
        try:
            section_type(**kwargs)
        except ConfigError as err:  # pragma: no cover - sections validate in problems()
            problems += err.problems
        else:
            problems += section_type(**kwargs).problems()  # type: ignore[attr-defined]
    return kwargs, problems


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as TOML, else as a bare string.

    Raises:
        ConfigError: if ``text`` is not of the form ``section.key=value``.
    """
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set expects section.key=value; got {text!r}")
    raw = raw.strip()
    try:
        value: Any = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, name, value


def apply_overrides(data: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested ``data`` with every ``section.key=value`` override applied."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for text in overrides:
        section, name, value = parse_override(text)
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}] must be a table; got {target!r}")
        target[name] = value
    return out


__all__ = [
    "AuditSection",
    "DataSection",
    "ExperimentConfig",
    "ExperimentSection",
    "ModelSection",
    "MonitoringSection",
    "PrivacySection",
    "SecureAggregationSection",
    "StrategySection",
    "TrainSection",
    "apply_overrides",
    "parse_override",
]
