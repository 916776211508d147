"""FedAdagrad, FedAdam, FedYogi: Reddi et al., "Adaptive Federated Optimization", ICLR 2021.

Algorithm 2 with pseudo-gradient ``delta = average - model`` (the paper's
``Delta_t = mean_i (x_i - x_t)``):

* ``m <- beta1 m + (1 - beta1) delta``
* FedAdagrad: ``v <- v + delta^2``;
  FedYogi: ``v <- v - (1 - beta2) delta^2 sign(v - delta^2)``;
  FedAdam: ``v <- beta2 v + (1 - beta2) delta^2``
* ``x <- x + server_lr * m / (sqrt(v) + tau)``

No bias correction, as in the paper. The state travels as ``(m, sqrt(v))``: ``sqrt(v)`` has
the units of the weights, so the codec grid (``10**-round_decimals``) keeps its precision
where ``v`` itself (order ``delta^2``) would round to zero; ``v`` is ``sqrt(v)^2`` inside
the step. The snapping is part of the algorithm here, in the clear as under HE.
"""

from __future__ import annotations

import numpy as np

from fedai.strategies.base import Arrays, ServerOptimizer


class _Adaptive(ServerOptimizer):
    state_slots = 2

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update(
        self, model: Arrays, delta: Arrays, slots: list[Arrays]
    ) -> tuple[Arrays, list[Arrays]]:
        """One step of Reddi et al. Algorithm 2 (see the module docstring)."""
        p = self.params
        m = [p.beta1 * a + (1.0 - p.beta1) * d for a, d in zip(slots[0], delta, strict=True)]
        v = [
            np.maximum(self.second_moment(s * s, d * d), 0.0)
            for s, d in zip(slots[1], delta, strict=True)
        ]
        x = [
            xi + p.server_lr * mi / (np.sqrt(vi) + p.tau)
            for xi, mi, vi in zip(model, m, v, strict=True)
        ]
        return x, [m, [np.sqrt(vi) for vi in v]]


class FedAdagrad(_Adaptive):
    """FedAdagrad: ``v <- v + delta^2``."""

    name = "fedadagrad"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Adagrad accumulation."""
        return np.asarray(v + d2)


class FedAdam(_Adaptive):
    """FedAdam: ``v <- beta2 v + (1 - beta2) delta^2``."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Adam's exponential average."""
        b2 = self.params.beta2
        return b2 * v + (1.0 - b2) * d2


class FedYogi(_Adaptive):
    """FedYogi: ``v <- v - (1 - beta2) delta^2 sign(v - delta^2)`` (Zaheer et al. 2018)."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Yogi's additive, sign-controlled update."""
        b2 = self.params.beta2
        return np.asarray(v - (1.0 - b2) * d2 * np.sign(v - d2))


__all__ = ["FedAdagrad", "FedAdam", "FedYogi"]
