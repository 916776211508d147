"""FedProx: a proximal step in every client's optimiser (Li et al., MLSys 2020).

FedProx has each client minimise ``h(w) = F(w) + mu/2 |w - w_global|^2`` inexactly; the
authors' implementation is *perturbed gradient descent*: the step direction is
``grad F(w) + mu (w - w_global)`` (Li et al. 2020, Algorithm 2 and their
``PerturbedGradientDescent`` optimiser). fedai adds ``mu (w - w_global)`` to ``p.grad``
in a step pre-hook of the *inner* optimiser (:func:`add_proximal_term`), that is right
before ``optimizer.step()`` and after whatever wrote ``p.grad``:

* plain training: after ``loss.backward()``;
* Opacus (``hooks``, ``ew``, ``ghost``): ``DPOptimizer.step`` clips, noises and scales
  ``p.grad``, then calls the inner optimiser's ``step``, which runs the hook;
* ``fused`` (:mod:`fedai.privacy.fused`): after it sets ``p.grad = (clipped + noise)/B``.

A proximal *loss* term instead would vanish under DP: Opacus and the fused mode replace
``p.grad`` by the clipped per-example sum, discarding whatever the loss added outside the
per-example computation (and per-example clipping would distort it if it were inside).
Adding the term after privatisation costs no privacy: ``mu (w - w_global)`` depends only
on the current and global weights, i.e. on earlier private outputs (post-processing,
Dwork & Roth 2014, Prop. 2.1). On the server FedProx is FedAvg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedai.errors import InvalidPrivacyParameterError
from fedai.strategies.base import Arrays, ServerOptimizer

if TYPE_CHECKING:
    import torch


class FedProx(ServerOptimizer):
    """FedProx: FedAvg on the server; clients take proximal steps (``proximal_mu``)."""

    name = "fedprox"
    proximal = True

    def update(
        self, model: Arrays, delta: Arrays, slots: list[Arrays]
    ) -> tuple[Arrays, list[Arrays]]:  # pragma: no cover - stateless: step() returns early
        """Unused: the next model is the average."""
        return [x + d for x, d in zip(model, delta, strict=True)], slots


def check_proximal_mu(mu: float) -> float:
    """Return ``mu`` if it is a finite number >= 0.

    Raises:
        InvalidPrivacyParameterError: ``mu`` is negative, NaN or infinite.
    """
    if not (mu >= 0 and mu < float("inf")):
        raise InvalidPrivacyParameterError(f"proximal mu must be a finite number >= 0; got {mu}")
    return mu


def add_proximal_term(optimizer: torch.optim.Optimizer, *, mu: float) -> torch.optim.Optimizer:
    """Make ``optimizer`` step along ``grad + mu (w - w0)``, ``w0`` its parameters *now*.

    Call it on a freshly built optimiser whose parameters still hold the global model.
    Returns the same optimiser (a step pre-hook is registered on it).

    Raises:
        InvalidPrivacyParameterError: ``mu`` is negative or not finite.
    """
    import torch

    if check_proximal_mu(mu) == 0:
        return optimizer
    anchors = [(p, p.detach().clone()) for group in optimizer.param_groups for p in group["params"]]

    def hook(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for p, w0 in anchors:
                if p.grad is not None:
                    p.grad.add_(p.detach() - w0, alpha=mu)

    optimizer.register_step_pre_hook(hook)
    return optimizer


__all__ = ["FedProx", "add_proximal_term", "check_proximal_mu"]
