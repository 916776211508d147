"""What a node's evaluation releases, and how the node bounds it.

An evaluation reply is a release about the node's test rows: a coordinator that sends
models of its own making learns a function of those rows with every reply (with a
one-row test split and crafted logistic regressions, 65 replies recovered a row). A real
node therefore bounds evaluation itself (``node_config``, :class:`EvaluationRelease`):

* the split and its minimum size are the node's (:mod:`fedai.data.reading`), so every
  metric is an average over at least ``min-test-examples`` rows the coordinator cannot
  choose;
* it answers at most ``max-evaluations-per-round`` distinct models per (run, round), and
  at most ``max-evaluations`` in its lifetime (counted in ``state-dir``, so neither new
  round numbers nor new run ids buy more: the coordinator writes both); the same model
  asked again gets the same answer, which releases nothing new. Without DP that cap is
  what bounds the release: ``k`` exact answers about ``n`` test rows carry at most
  ``k * log2(n + 1)`` bits of accuracy counts plus the losses;
* what the metrics are, by ``evaluation`` mode:

  ``dp``     (default where the node sets ``require-privacy``) the Gaussian mechanism
             (Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014,
             Thm. A.1; tight accounting by Renyi DP, Mironov 2017, Prop. 7): each
             example's loss is clipped to ``[0, L]`` (``evaluation-loss-bound``), the
             vector ``(sum of clipped loss / L, number correct)`` has L2 sensitivity
             ``sqrt(2)`` under adding or removing one example, and each coordinate gets
             Gaussian noise of standard deviation ``z * sqrt(2)``
             (``evaluation-noise-multiplier`` ``z``). That is one Gaussian release of
             noise multiplier ``z``: the event ``(z, q = 1, 1 step)`` in the node's
             privacy ledger, checked against its budget before anything is computed.
             The noise comes from the OS (:class:`random.SystemRandom`).
  ``clear``  (default otherwise) exact loss and accuracy; refused with
             ``require-privacy``.
  ``off``    no metrics: the node still decodes and bounds-checks the aggregate (its
             ``ok`` or ``rejected`` is the only answer) and reports 0 examples.

The test rows are disjoint from the training rows, so charging evaluation to the same
ledger as DP-SGD over-counts (parallel composition would allow the larger of the two
spends); it stays correct if a split ever changes, and is one number to cap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedai.errors import ConfigError

if TYPE_CHECKING:  # fedai.privacy loads torch; node policies are read without it
    from fedai.privacy.accounting import DpSgdEvent

NODE_EVALUATION = "evaluation"
NODE_MAX_EVALUATIONS = "max-evaluations-per-round"
NODE_MAX_EVALUATIONS_TOTAL = "max-evaluations"
NODE_EVALUATION_NOISE = "evaluation-noise-multiplier"
NODE_EVALUATION_LOSS_BOUND = "evaluation-loss-bound"
#: Every node-config key this module reads.
RELEASE_KEYS = (
    NODE_EVALUATION,
    NODE_MAX_EVALUATIONS,
    NODE_MAX_EVALUATIONS_TOTAL,
    NODE_EVALUATION_NOISE,
    NODE_EVALUATION_LOSS_BOUND,
)
MODES = ("dp", "clear", "off")
DEFAULT_NOISE_MULTIPLIER = 8.0
DEFAULT_LOSS_BOUND = 5.0
DEFAULT_MAX_EVALUATIONS = 100
#: L2 sensitivity of (clipped loss sum / L, correct count) to one example.
SENSITIVITY = math.sqrt(2.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationRelease:
    """A node's evaluation settings (see the module docstring).

    Attributes:
        mode: ``dp``, ``clear`` or ``off``.
        max_per_round: Distinct models answered per (run, round).
        max_total: Distinct models answered in the node's lifetime (its ``state-dir``).
        noise_multiplier: ``z`` of the ``dp`` mode.
        loss_bound: ``L``: each example's loss is clipped to ``[0, L]`` in ``dp`` mode.
    """

    mode: str = "clear"
    max_per_round: int = 1
    max_total: int = DEFAULT_MAX_EVALUATIONS
    noise_multiplier: float = DEFAULT_NOISE_MULTIPLIER
    loss_bound: float = DEFAULT_LOSS_BOUND

    @classmethod
    def from_node_config(
        cls, node: Mapping[str, object], *, requires_privacy: bool
    ) -> EvaluationRelease:
        """Read the settings; the mode defaults to ``dp`` where the node requires DP.

        Raises:
            ConfigError: a bad value, or ``clear`` on a node that requires DP (all
                problems at once).
        """
        problems: list[str] = []

        def number(key: str, default: float, *, integer: bool = False) -> float:
            raw = node.get(key)
            if raw is None or str(raw) == "":
                return default
            try:
                value = float(str(raw))
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0) or (integer and value != int(value)):
                kind = "an integer >= 1" if integer else "a number > 0"
                problems.append(f"node_config {key} must be {kind}; got {raw!r}")
                return default
            return value

        raw_mode = node.get(NODE_EVALUATION)
        mode = "dp" if requires_privacy else "clear"
        if raw_mode is not None and str(raw_mode) != "":
            mode = str(raw_mode)
        if mode not in MODES:
            problems.append(f"node_config {NODE_EVALUATION} must be one of {MODES}; got {mode!r}")
        elif mode == "clear" and requires_privacy:
            problems.append(
                f"node_config {NODE_EVALUATION} must be 'dp' or 'off' on a node that sets "
                "require-privacy (clear metrics are a release about its rows outside the "
                "ledger); got 'clear'"
            )
        out = cls(
            mode=mode,
            max_per_round=int(number(NODE_MAX_EVALUATIONS, 1, integer=True)),
            max_total=int(
                number(NODE_MAX_EVALUATIONS_TOTAL, DEFAULT_MAX_EVALUATIONS, integer=True)
            ),
            noise_multiplier=number(NODE_EVALUATION_NOISE, DEFAULT_NOISE_MULTIPLIER),
            loss_bound=number(NODE_EVALUATION_LOSS_BOUND, DEFAULT_LOSS_BOUND),
        )
        if problems:
            raise ConfigError(problems)
        return out

    def event(self) -> DpSgdEvent:
        """The ledger event of one ``dp`` release: a Gaussian of multiplier ``z``, q = 1."""
        from fedai.privacy.accounting import DpSgdEvent

        return DpSgdEvent(self.noise_multiplier, 1.0, 1)


def noisy_metrics(
    *,
    loss_sum: float,
    correct: float,
    num_examples: int,
    release: EvaluationRelease,
    rng: random.Random | None = None,
) -> tuple[float, float]:
    """The ``dp`` mode's (mean loss, accuracy) from clipped sums (see the module docstring).

    Args:
        loss_sum: Sum over the test split of each example's loss clipped to
            ``[0, release.loss_bound]``.
        correct: Number of correctly classified examples.
        num_examples: The test split's size (announced at discovery: public).
        release: The node's settings.
        rng: Noise source; default OS entropy (:class:`random.SystemRandom`). Tests
            pass a seeded :class:`random.Random`.

    Returns:
        Mean loss in ``[0, L]`` and accuracy in ``[0, 1]`` (clamping is post-processing).

    Raises:
        ConfigError: ``num_examples < 1``.
    """
    if num_examples < 1:
        raise ConfigError(f"num_examples must be >= 1; got {num_examples}")
    gen = random.SystemRandom() if rng is None else rng
    std = release.noise_multiplier * SENSITIVITY
    bound = release.loss_bound
    noisy_loss = (loss_sum / bound + gen.gauss(0.0, std)) * bound
    noisy_correct = correct + gen.gauss(0.0, std)
    loss = min(max(noisy_loss / num_examples, 0.0), bound)
    accuracy = min(max(noisy_correct / num_examples, 0.0), 1.0)
    return loss, accuracy


__all__ = [
    "MODES",
    "NODE_EVALUATION",
    "NODE_EVALUATION_LOSS_BOUND",
    "NODE_EVALUATION_NOISE",
    "NODE_MAX_EVALUATIONS",
    "NODE_MAX_EVALUATIONS_TOTAL",
    "RELEASE_KEYS",
    "SENSITIVITY",
    "EvaluationRelease",
    "noisy_metrics",
]
