"""A node's own policy: what protects the node comes from the node, never the coordinator.

The coordinator sends every client its experiment config (privacy mode, sigma or target
epsilon, budget, secure-aggregation scheme, data source, number of sampled clients). On
its own that lets an honest-but-curious coordinator switch encryption off, lower the noise,
raise an exhausted budget, inflate ``num-sampled`` (which shrinks each client's share of
the user-level noise) or point a node at a file of its choosing. A :class:`NodePolicy`,
read from the node's own configuration (Flower ``node_config`` keys set by the operator
when the SuperNode starts), bounds all of that: a request may *narrow* what the policy
allows, never widen it; a request that would widen it is refused with a reason that names
the setting and never quotes the node's data.

Node-config keys (all optional):

=========================  ===============================================================
``data-path``              The node's own .csv/.npz. Its presence makes this a *real node*:
                           the coordinator's ``data.dataset`` and ``secure_aggregation.
                           key_dir`` are never opened.
``key-dir``                The node's key directory. Implies ``require-scheme`` = the
                           scheme its bundles were made for (read from their metadata):
                           a node with keys never sends plaintext.
``state-dir``              Where the privacy ledger lives. A real node with DP on must set
                           it (or the ledger would reset with every process start).
``require-scheme``         A registered scheme (``none``, ``ckks``, ``paillier``, ...):
                           the only scheme the node encodes with.
``require-privacy``        ``local`` (local or local+user) | ``local+user``.
``min-noise-multiplier``   The smallest DP-SGD sigma the node accepts.
``max-epsilon-per-round``  The largest epsilon one round may add to the ledger.
``max-budget-epsilon``     The node's budget cap: used when the coordinator names none;
                           a larger requested budget is refused.
``max-num-sampled``        The largest ``num-sampled`` the node accepts (user-level DP
                           noise share is sigma / sqrt(num-sampled)).
``feature-bounds``        A JSON file of public ``[low, high]`` feature bounds
                           (:class:`fedai.data.scaling.FeatureBounds`): the node takes part
                           in federated statistics only if the run's bounds lie within it.
``share-statistics``      ``true`` (default) | ``false``: whether the node contributes its
                           training split's feature moments to federated standardisation
                           (``data.statistics``). A node that does not share (also any node
                           with ``require-privacy``: the moments are not DP) standardises
                           with its own statistics and still trains.
=========================  ===============================================================

How a node with its own file reads and splits it (``label-column``, ``num-classes``,
``test-fraction``, ``min-test-examples``, ``standardize``, ``split-seed``) is in
:mod:`fedai.data.reading`; what its evaluation replies release (``evaluation``,
``max-evaluations-per-round``, ``evaluation-noise-multiplier``, ``evaluation-loss-bound``)
in :mod:`fedai.release`. Both are parsed here, so ``fedai client`` refuses a bad value
before it starts.

In simulation the node config holds only ``partition-id``/``num-partitions``: the policy
then allows what the experiment config asks (the coordinator *is* the experimenter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedai.config import ExperimentConfig
from fedai.crypto.bundle import scheme_of_key_dir
from fedai.data.reading import NodeReading
from fedai.errors import ConfigError, KeyFileError
from fedai.release import EvaluationRelease
from fedai.schemes import scheme_names

NODE_DATA_PATH = "data-path"
NODE_KEY_DIR = "key-dir"
NODE_STATE_DIR = "state-dir"
REQUIRE_SCHEME = "require-scheme"
REQUIRE_PRIVACY = "require-privacy"
MIN_NOISE_MULTIPLIER = "min-noise-multiplier"
MAX_EPSILON_PER_ROUND = "max-epsilon-per-round"
MAX_BUDGET_EPSILON = "max-budget-epsilon"
MAX_NUM_SAMPLED = "max-num-sampled"
SHARE_STATISTICS = "share-statistics"

#: Every registered scheme (from the registry, :mod:`fedai.schemes`).
SCHEMES = scheme_names()
PRIVACY_LEVELS = {"local": ("local", "local+user"), "local+user": ("local+user",)}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePolicy:
    """What a node allows, from its own configuration.

    Attributes:
        own_data: The node trains on its own file (``data-path``); coordinator-named
            paths (data source, key directory) are never opened.
        key_dir: The node's key directory, or None.
        state_dir: The node's ledger directory, or None.
        require_scheme: The only secure-aggregation scheme accepted, or None (any).
        require_privacy: ``local`` or ``local+user``, or None (any, including none).
        min_noise_multiplier: Smallest DP-SGD sigma accepted, or None.
        max_epsilon_per_round: Largest per-round epsilon increment accepted, or None.
        max_budget_epsilon: Budget cap, or None.
        max_num_sampled: Largest ``num-sampled`` accepted, or None.
        share_statistics: The node may share its feature moments (federated statistics).
        reading: How a node with its own data reads and splits its file
            (:mod:`fedai.data.reading`).
        evaluation: What its evaluation replies release (:mod:`fedai.release`).
    """

    own_data: bool = False
    key_dir: str | None = None
    state_dir: str | None = None
    require_scheme: str | None = None
    require_privacy: str | None = None
    min_noise_multiplier: float | None = None
    max_epsilon_per_round: float | None = None
    max_budget_epsilon: float | None = None
    max_num_sampled: int | None = None
    share_statistics: bool = True
    reading: NodeReading = field(default_factory=NodeReading)
    evaluation: EvaluationRelease = field(default_factory=EvaluationRelease)

    @classmethod
    def from_node_config(cls, node: Mapping[str, object]) -> NodePolicy:
        """Read the policy from Flower ``node_config`` keys (see the module docstring).

        Raises:
            ConfigError: A policy key has a value of the wrong type or range (all
                problems at once).
        """
        problems: list[str] = []

        def text(key: str) -> str | None:
            value = node.get(key)
            return None if value is None or str(value) == "" else str(value)

        def positive(key: str) -> float | None:
            value = node.get(key)
            if value is None or value == "":
                return None
            try:
                out = float(str(value))
            except ValueError:
                out = math.nan
            if not (math.isfinite(out) and out > 0):
                problems.append(f"node_config {key} must be a number > 0; got {value!r}")
                return None
            return out

        key_dir = text(NODE_KEY_DIR)
        scheme = text(REQUIRE_SCHEME)
        if scheme is None and key_dir is not None:
            try:
                scheme = scheme_of_key_dir(key_dir)
            except KeyFileError as err:
                problems.append(f"node_config {NODE_KEY_DIR} must hold a key set; {err}")
        if scheme is not None and scheme not in SCHEMES:
            problems.append(
                f"node_config {REQUIRE_SCHEME} must be one of {SCHEMES}; got {scheme!r}"
            )
        if scheme == "none" and key_dir is not None:
            problems.append(
                f"node_config {REQUIRE_SCHEME} must not be 'none' when {NODE_KEY_DIR} is set"
            )
        privacy = text(REQUIRE_PRIVACY)
        if privacy is not None and privacy not in PRIVACY_LEVELS:
            problems.append(
                f"node_config {REQUIRE_PRIVACY} must be one of {sorted(PRIVACY_LEVELS)}; "
                f"got {privacy!r}"
            )
        max_sampled = positive(MAX_NUM_SAMPLED)
        if max_sampled is not None and max_sampled != int(max_sampled):
            problems.append(f"node_config {MAX_NUM_SAMPLED} must be an integer; got {max_sampled}")
        share = (text(SHARE_STATISTICS) or "true").lower()
        if share not in ("true", "false"):
            problems.append(f"node_config {SHARE_STATISTICS} must be true or false; got {share!r}")
        reading, evaluation = NodeReading(), EvaluationRelease()
        try:
            reading = NodeReading.from_node_config(node)
        except ConfigError as err:
            problems.extend(err.problems)
        try:
            evaluation = EvaluationRelease.from_node_config(
                node, requires_privacy=privacy is not None
            )
        except ConfigError as err:
            problems.extend(err.problems)
        if privacy is not None and reading.standardize == "zscore":
            problems.append(
                "node_config standardize must be 'auto' or 'none' on a node that sets "
                "require-privacy: a z-score fit on the node's rows is a release outside DP "
                "(set feature-bounds for a public scaling); got 'zscore'"
            )
        policy = cls(
            reading=reading,
            evaluation=evaluation,
            own_data=text(NODE_DATA_PATH) is not None,
            key_dir=key_dir,
            state_dir=text(NODE_STATE_DIR),
            require_scheme=scheme,
            require_privacy=privacy,
            min_noise_multiplier=positive(MIN_NOISE_MULTIPLIER),
            max_epsilon_per_round=positive(MAX_EPSILON_PER_ROUND),
            max_budget_epsilon=positive(MAX_BUDGET_EPSILON),
            max_num_sampled=None if max_sampled is None else int(max_sampled),
            share_statistics=share != "false",
        )
        if problems:
            raise ConfigError(problems)
        return policy

    def violations(self, cfg: ExperimentConfig, *, num_sampled: int | None = None) -> list[str]:
        """Return every way ``cfg`` (the coordinator's request) would widen this policy.

        Args:
            cfg: The experiment config the coordinator sent.
            num_sampled: The ``num-sampled`` the coordinator sent (user-level DP), if any.

        Returns:
            One reason per violated setting (empty if the request is within the policy).
            Reasons name the setting, what the node allows and what was asked.
        """
        out: list[str] = []
        scheme = cfg.secure_aggregation.scheme
        if self.require_scheme is not None and scheme != self.require_scheme:
            out.append(
                f"secure_aggregation.scheme must be {self.require_scheme!r} (node policy); "
                f"the coordinator asked for {scheme!r}"
            )
        mode = cfg.privacy.mode
        if self.require_privacy is not None and mode not in PRIVACY_LEVELS[self.require_privacy]:
            out.append(
                f"privacy.mode must be one of {PRIVACY_LEVELS[self.require_privacy]} (node "
                f"policy); the coordinator asked for {mode!r}"
            )
        if mode != "none" and self.own_data and self.state_dir is None:
            out.append(
                f"node_config must set {NODE_STATE_DIR!r} (a durable ledger location) for "
                "a node with its own data and DP on; without it epsilon would reset "
                "whenever the agent restarts"
            )
        budget = cfg.privacy.budget_epsilon
        cap = self.max_budget_epsilon
        if mode != "none" and cap is not None and budget is not None and budget > cap:
            out.append(
                f"privacy.budget_epsilon must be <= {cap:g} (node policy); the coordinator "
                f"asked for {budget:g}"
            )
        if (
            mode == "local+user"
            and self.max_num_sampled is not None
            and num_sampled is not None
            and num_sampled > self.max_num_sampled
        ):
            out.append(
                f"num-sampled must be <= {self.max_num_sampled} (node policy); the "
                f"coordinator asked for {num_sampled}"
            )
        return out

    def statistics_refusal(self) -> str | None:
        """Why this node's own policy forbids sharing (and using) federated statistics, or None.

        The moments are not differentially private: a node that requires DP never shares
        them, whatever the coordinator asks, and neither does one whose operator set
        ``share-statistics = false``. Such a node standardises with its own statistics.
        (A DP run's config never asks: ``data.statistics`` resolves to local under DP,
        :func:`fedai.data.scaling.statistics_mode`.)
        """
        if not self.share_statistics:
            return f"node policy {SHARE_STATISTICS} is false"
        if self.require_privacy is not None:
            return (
                f"node policy {REQUIRE_PRIVACY} is {self.require_privacy!r}: feature "
                "statistics are not differentially private"
            )
        return None

    def budget(self, requested: float | None) -> float | None:
        """The budget to apply: the coordinator's if it narrows the cap, else the cap."""
        if self.max_budget_epsilon is None:
            return requested
        if requested is None:
            return self.max_budget_epsilon
        return min(requested, self.max_budget_epsilon)

    def sigma_violation(self, noise_multiplier: float) -> str | None:
        """A reason if ``noise_multiplier`` is below the node's floor, else None."""
        floor = self.min_noise_multiplier
        if floor is not None and noise_multiplier < floor:
            return (
                f"DP-SGD noise_multiplier must be >= {floor:g} (node policy); the "
                f"coordinator's settings give {noise_multiplier:.4g}"
            )
        return None

    def round_epsilon_violation(self, increment: float) -> str | None:
        """A reason if one round would add more than the node's per-round maximum."""
        cap = self.max_epsilon_per_round
        if cap is not None and increment > cap:
            return (
                f"epsilon per round must be <= {cap:g} (node policy); this round would add "
                f"{increment:.4g}"
            )
        return None


__all__ = ["NodePolicy"]
