"""FedAvgM: server momentum (Hsu, Qi & Brown 2019, arXiv:1909.06335; Reddi et al. 2021).

With pseudo-gradient ``delta = average - model``: ``v <- beta * v + delta`` and
``model <- model + server_lr * v``. ``server_lr = 1`` and ``beta = 0`` is FedAvg.
"""

from __future__ import annotations

from fedai.strategies.base import Arrays, ServerOptimizer


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum ``server_momentum`` and step ``server_lr``."""

    name = "fedavgm"
    state_slots = 1

    def update(
        self, model: Arrays, delta: Arrays, slots: list[Arrays]
    ) -> tuple[Arrays, list[Arrays]]:
        """``v = beta v + delta``; ``x = x + lr v``."""
        beta, lr = self.params.server_momentum, self.params.server_lr
        v = [beta * m + d for m, d in zip(slots[0], delta, strict=True)]
        return [x + lr * m for x, m in zip(model, v, strict=True)], [v]


__all__ = ["FedAvgM"]
