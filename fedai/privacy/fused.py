"""Fused DP-SGD: clipped per-example gradients of Linear models from ONE backward pass.

For a linear layer ``z = a Wᵀ + b`` with input activations ``a`` (B x d_in) and gradients
``g = ∂L/∂z`` (B x d_out) of the *summed* per-example loss, example ``i``'s weight gradient is
the outer product ``g_i a_iᵀ``, whose squared norm is ``|g_i|² |a_i|²``; its bias gradient is
``g_i`` (Goodfellow 2015, "Efficient Per-Example Gradient Computations", arXiv:1510.01799;
the "ghost norm" of Li et al. 2022, "Large Language Models Can Be Strong Differentially
Private Learners", ICLR). With the per-example norm ``n_i = sqrt(Σ_layers ...)`` and Opacus'
clip factor ``c_i = min(1, C / (n_i + 1e-6))``, the clipped sum is ``(c ⊙ g)ᵀ a`` for the
weight and ``Σ_i c_i g_i`` for the bias. Book-keeping (Bu et al. 2023, "Differentially
Private Optimization on Large Model at Small Cost", ICML) reuses the ``a`` and ``g`` of one
backward pass for both the norms and the clipped sum, so no per-example gradient tensor is
ever built and autograd never computes the unclipped parameter gradients: ``g`` comes from
``torch.autograd.grad(loss, [layer outputs])``.

Everything that is not that arithmetic is Opacus' own piece, so a fused run is the same
mechanism as ``grad_sample_mode="hooks"``: Poisson batches from
:class:`opacus.data_loader.DPDataLoader` (same generator semantics as ``make_private``),
Gaussian noise ``N(0, (sigma*C)²)`` drawn per parameter, in the optimizer's parameter order,
by Opacus' noise function, scaling by the expected batch size as ``DPOptimizer`` does for a
mean-reduced loss (Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS), and
one ``accountant.step`` per optimizer step. Empty Poisson batches take a noise-only step.

Supported models: :class:`torch.nn.Linear` layers (2-D inputs, each called once per
forward) plus the parameter-free per-example modules in :data:`FUSED_ELEMENTWISE_MODULES`,
inside any containers. As with Opacus, the forward must not mix examples across the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedai.errors import ModelError

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

#: Opacus' clip factor is ``(C / (norm + 1e-6)).clamp(max=1.0)`` (DPOptimizer.clip_and_accumulate).
CLIP_EPSILON = 1e-6

#: Parameter-free modules that act on each example separately.
FUSED_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)
#: Pure containers (their own forward only chains their children).
FUSED_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

_USE_OTHER_MODE = 'use grad_sample_mode "hooks", "ew" or "ghost" for this model'


def fused_model_problems(model: nn.Module) -> list[str]:
    """Return every reason ``model`` cannot train in fused mode (empty if it can).

    Leaf modules must be :class:`~torch.nn.Linear` or in :data:`FUSED_ELEMENTWISE_MODULES`;
    only Linear layers may own parameters; a model must have at least one Linear layer.
    """
    problems: list[str] = []
    linear = 0
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        label = name or "<root>"
        kind = type(module).__name__
        if type(module) is nn.Linear:  # a subclass may change forward(); refuse it below
            linear += 1
            for p in module.parameters(recurse=False):
                owners.setdefault(id(p), []).append(label)
            continue
        if isinstance(module, nn.Flatten) and _flattens_batch(module):
            problems.append(
                f"module {label} (Flatten) has start_dim {module.start_dim}, which merges "
                "examples into one batch axis; expected start_dim >= 1"
            )
            continue
        own = [n for n, p in module.named_parameters(recurse=False) if p is not None]
        if own:
            problems.append(
                f"module {label} ({kind}) owns parameters {', '.join(own)}; fused mode "
                "supports parameters only in nn.Linear"
            )
        elif not any(True for _ in module.children()) and not isinstance(
            module, FUSED_ELEMENTWISE_MODULES + FUSED_CONTAINERS
        ):
            problems.append(
                f"module {label} ({kind}) is not supported in fused mode; expected nn.Linear "
                "or one of " + ", ".join(m.__name__ for m in FUSED_ELEMENTWISE_MODULES)
            )
        elif getattr(module, "inplace", False) is True:
            problems.append(
                f"module {label} ({kind}) has inplace=True, which overwrites the Linear "
                "outputs fused mode differentiates; expected inplace=False"
            )
    for labels in owners.values():
        if len(labels) > 1:
            problems.append(
                f"nn.Linear layers {', '.join(labels)} share a parameter (tied weights); "
                "fused mode needs each parameter in one Linear layer"
            )
    if linear == 0 and not problems:
        problems.append("model has no nn.Linear layer; fused mode trains Linear layers only")
    return problems


def _flattens_batch(module: nn.Flatten) -> bool:
    """Return whether ``module`` certainly merges the batch axis (``start_dim == 0``).

    A negative ``start_dim`` may or may not reach axis 0 depending on the input; the row
    check in :meth:`FusedClipper.clipped_sum` catches that case at the first step.
    """
    return module.start_dim == 0


def validate_fused_model(model: nn.Module) -> None:
    """Check that ``model`` fits fused DP-SGD; collect every problem, raise once.

    Raises:
        ModelError: naming each unsupported module or parameter, and the modes to use.
    """
    problems = fused_model_problems(model)
    if problems:
        raise ModelError(
            "model is not supported by grad_sample_mode 'fused': "
            + "; ".join(problems)
            + f"; {_USE_OTHER_MODE}"
        )


@dataclass(frozen=True, slots=True)
class _Slot:
    """One optimizer parameter: the Linear layer that owns it and which of its two it is."""

    layer: int
    is_weight: bool


def clipped_grad_sum(
    activations: Sequence[torch.Tensor],
    output_grads: Sequence[torch.Tensor],
    *,
    max_grad_norm: float,
    weight_trainable: Sequence[bool] | None = None,
    bias_trainable: Sequence[bool] | None = None,
    grad_scale: float = 1.0,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None], torch.Tensor]:
    """Clip per-example Linear gradients and sum them, without per-example gradients.

    With ``g = grad_scale * output_grads[k]`` the per-example output gradients of the
    summed loss, example ``i`` has squared norm ``Σ_k |g_i|² (|a_i|² + 1)`` (weight and
    bias; Goodfellow 2015, Li et al. 2022), clip factor
    ``c_i = min(1, C / (norm_i + 1e-6))`` (Opacus' formula), and the clipped sums are
    ``(c ⊙ g)ᵀ a`` and ``Σ_i c_i g_i`` (Bu et al. 2023).

    Args:
        activations: per layer, its input ``a`` (B x d_in).
        output_grads: per layer, the loss gradient w.r.t. its output (B x d_out).
        max_grad_norm: clipping norm ``C``.
        weight_trainable: per layer, whether the weight counts (default all).
        bias_trainable: per layer, whether a bias exists and counts (default all).
        grad_scale: multiplies ``output_grads`` (the batch size for a mean-reduced loss,
            as Opacus scales its backprops).

    Returns:
        ``(weight_sums, bias_sums, per_example_norms)``; a sum is None where its parameter
        does not count.
    """
    layers = len(activations)
    w_on = list(weight_trainable) if weight_trainable is not None else [True] * layers
    b_on = list(bias_trainable) if bias_trainable is not None else [True] * layers
    sq: torch.Tensor | None = None
    for a, g, w, b in zip(activations, output_grads, w_on, b_on, strict=True):
        if not (w or b):
            continue
        term = torch.linalg.vecdot(g, g)  # |g_i|²
        if w:
            a_sq = torch.linalg.vecdot(a, a)  # |a_i|²
            term.mul_(a_sq.add_(1.0) if b else a_sq)
        sq = term if sq is None else sq.add_(term)
    if sq is None:
        raise ModelError("fused DP-SGD found no trainable nn.Linear parameter")
    norms = sq.sqrt_().mul_(grad_scale)
    factor = (max_grad_norm / (norms + CLIP_EPSILON)).clamp_(max=1.0).mul_(grad_scale)
    column = factor.unsqueeze(1)
    weight_sums: list[torch.Tensor | None] = []
    bias_sums: list[torch.Tensor | None] = []
    for a, g, w, b in zip(activations, output_grads, w_on, b_on, strict=True):
        weight_sums.append(torch.mm((g * column).t(), a) if w else None)
        bias_sums.append(torch.mv(g.t(), factor) if b else None)
    return weight_sums, bias_sums, norms


class FusedClipper:
    """Clipped per-example gradient sums of a model's Linear parameters, one backward pass.

    Forward hooks keep each trained Linear layer's input ``a`` and output ``z``;
    :meth:`clipped_sum` runs the forward pass and the loss, takes ``g = ∂loss/∂z`` with
    ``torch.autograd.grad`` (so the unclipped parameter gradients are never computed) and
    returns :func:`clipped_grad_sum` laid out like ``params``. Use it as a context manager,
    or call :meth:`remove`, to take the hooks off.

    Args:
        model: a model that passes :func:`validate_fused_model`.
        params: the trained parameters in noise order (Opacus: the optimizer's
            ``requires_grad`` parameters, group by group); each must be the weight or bias
            of one of ``model``'s Linear layers.
        max_grad_norm: per-example clipping norm ``C``.

    Raises:
        ModelError: an unsupported model, or a parameter outside the model's Linear layers.
    """

    def __init__(
        self, model: nn.Module, params: Sequence[nn.Parameter], *, max_grad_norm: float
    ) -> None:
        validate_fused_model(model)
        named = [(n or "<root>", m) for n, m in model.named_modules() if type(m) is nn.Linear]
        owner: dict[int, _Slot] = {}
        for k, (_, layer) in enumerate(named):
            owner[id(layer.weight)] = _Slot(k, True)
            if layer.bias is not None:
                owner[id(layer.bias)] = _Slot(k, False)
        problems: list[str] = []
        all_slots: list[_Slot] = []
        for p in params:
            if id(p) in owner:
                all_slots.append(owner[id(p)])
            else:
                problems.append(
                    f"parameter of shape {tuple(p.shape)} is not the weight or bias of one "
                    "of the model's nn.Linear layers"
                )
        if not all_slots:
            problems.append("no trainable nn.Linear parameter to train; got none")
        if problems:
            raise ModelError("fused DP-SGD: " + "; ".join(problems))
        used = sorted({s.layer for s in all_slots})
        position = {k: j for j, k in enumerate(used)}
        self.model = model
        self.params = list(params)
        self.max_grad_norm = float(max_grad_norm)
        self.names = [named[k][0] for k in used]
        self._slots = [_Slot(position[s.layer], s.is_weight) for s in all_slots]
        self._weight_on = [any(s.is_weight for s in all_slots if s.layer == k) for k in used]
        self._bias_on = [any(not s.is_weight for s in all_slots if s.layer == k) for k in used]
        layers = [named[k][1] for k in used]
        self._index = {id(m): j for j, m in enumerate(layers)}
        self._inputs: list[torch.Tensor | None] = [None] * len(layers)
        self._outputs: list[torch.Tensor | None] = [None] * len(layers)
        self._versions: list[tuple[int, int]] = [(0, 0)] * len(layers)
        self._handles = [m.register_forward_hook(self._hook) for m in layers]

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        k = self._index[id(module)]
        if self._outputs[k] is not None:
            raise ModelError(
                f"nn.Linear layer {self.names[k]} ran twice in one forward pass; fused "
                f"mode needs each Linear called once per step; {_USE_OTHER_MODE}"
            )
        a = args[0]
        if a.dim() != 2:
            raise ModelError(
                f"nn.Linear layer {self.names[k]} got a {a.dim()}-D input of shape "
                f"{tuple(a.shape)}; fused mode needs (batch, features) inputs; {_USE_OTHER_MODE}"
            )
        self._inputs[k] = a.detach()
        self._outputs[k] = output
        self._versions[k] = (a._version, output._version)

    def clipped_sum(
        self, features: torch.Tensor, labels: torch.Tensor, criterion: nn.Module
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the mean loss and ``Σ_i clip_C(∇ loss_i)`` per parameter, for one batch.

        ``criterion`` must be mean-reduced over per-example terms, as Opacus'
        ``loss_reduction="mean"`` assumes; its gradients are scaled by the batch size to
        per-example gradients of the summed loss, as Opacus scales its backprops.
        """
        n = len(self._outputs)
        self._inputs, self._outputs = [None] * n, [None] * n
        try:
            batch = len(labels)
            if features.shape[0] != batch:
                raise ModelError(
                    f"fused DP-SGD needs one feature row per label; got {features.shape[0]} "
                    f"rows and {batch} labels"
                )
            loss = criterion(self.model(features), labels)
            inputs = _captured(self._inputs, self.names)
            outputs = _captured(self._outputs, self.names)
            self._check_rows(inputs, outputs, batch)
            self._check_versions(inputs, outputs)
            output_grads = torch.autograd.grad(loss, outputs)
            weight_sums, bias_sums, _ = clipped_grad_sum(
                inputs,
                output_grads,
                max_grad_norm=self.max_grad_norm,
                weight_trainable=self._weight_on,
                bias_trainable=self._bias_on,
                grad_scale=float(len(labels)),
            )
        finally:
            self._inputs, self._outputs = [None] * n, [None] * n
        sums = [_present(weight_sums if s.is_weight else bias_sums, s.layer) for s in self._slots]
        return loss, sums

    def _check_rows(
        self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], batch: int
    ) -> None:
        """Refuse a Linear whose rows are not the batch's examples, one row each.

        Each row is clipped to C on its own, so a forward that turns one example into k rows
        (a reshape of (B, T, d) to (B*T, d), a concatenation, a transpose) would let that
        example contribute k*C while the accountant assumes C.
        """
        for name, a, z in zip(self.names, inputs, outputs, strict=True):
            if a.shape[0] != batch or z.shape[0] != batch:
                raise ModelError(
                    f"nn.Linear layer {name} got {a.shape[0]} input rows and gave "
                    f"{z.shape[0]} output rows for a batch of {batch} examples; fused mode "
                    f"needs exactly one row per example; {_USE_OTHER_MODE}"
                )

    def _check_versions(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Refuse activations changed in place after the layer ran (e.g. ``h.relu_()``).

        ``autograd.grad`` w.r.t. an overwritten output would silently differentiate the
        in-place op's result instead of the Linear output.
        """
        for name, a, z, (a_version, z_version) in zip(
            self.names, inputs, outputs, self._versions, strict=True
        ):
            if a._version != a_version or z._version != z_version:
                raise ModelError(
                    f"the input or output of nn.Linear layer {name} was modified in place "
                    "after the layer ran (e.g. relu_ or inplace=True); fused mode needs "
                    f"out-of-place ops; {_USE_OTHER_MODE}"
                )

    def remove(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FusedClipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass(frozen=True, slots=True)
class FusedRun:
    """What :func:`train_fused` did: loss over non-empty batches and the steps taken."""

    total_loss: float
    nonempty_batches: int
    steps: int
    sample_rate: float


def train_fused(
    model: nn.Module,
    *,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epochs: int,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: IAccountant,
    noise_generator: torch.Generator | None,
    loader_generator: torch.Generator | None = None,
    secure_mode: bool = False,
    max_steps: int | None = None,
) -> FusedRun:
    """Train ``model`` in place with fused DP-SGD, one accountant step per optimizer step.

    Mirrors ``PrivacyEngine.make_private(..., poisson_sampling=True,
    loss_reduction="mean")`` followed by the usual loop: the loader becomes
    ``DPDataLoader.from_data_loader(loader, generator=loader_generator)`` with
    ``q = 1 / len(loader)``; each step sets ``p.grad = (clipped_sum + noise) /
    expected_batch_size`` with ``expected_batch_size = int(n * q)`` and noise
    ``N(0, (sigma*C)²)`` drawn from ``noise_generator`` in the optimizer's parameter order
    (Opacus' ``DPOptimizer.add_noise`` and ``scale_grad``), records ``(sigma, q)`` in
    ``accountant`` and calls ``optimizer.step()``, so momentum and weight decay act on the
    noised gradient exactly as under Opacus' wrapper.

    Args:
        model: the model to train (mutated); checked with :func:`validate_fused_model`.
        loader: a ``DataLoader`` of ``(features, labels)``; its batch size sets ``q``.
        optimizer: the plain optimizer over ``model``'s parameters.
        criterion: a mean-reduced loss over per-example terms (as Opacus assumes).
        epochs: passes over the Poisson loader.
        noise_multiplier: sigma.
        max_grad_norm: per-example clipping norm ``C``.
        accountant: an Opacus accountant; it receives one ``step`` per optimizer step.
        max_steps: stop after this many steps (a straggler's partial work); the
            accountant then holds only the steps that ran.
        noise_generator: torch RNG for the noise (Opacus' ``noise_generator``).
        loader_generator: RNG for Poisson sampling; ``None`` keeps the loader's own, as
            ``make_private`` does outside secure mode.
        secure_mode: Opacus' floating-point-attack-resistant noise sampling.

    Returns:
        A :class:`FusedRun`.

    Raises:
        ModelError: an unsupported model or an optimizer over other parameters, before the
            first step (a Linear layer called twice or on a non-2-D input is found in the
            first forward pass, before any parameter changes).
    """
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers.optimizer import _generate_noise
    from opacus.optimizers.utils import params as optimizer_params

    model_params = {id(p) for p in model.parameters()}
    params = optimizer_params(optimizer)  # Opacus' DPOptimizer.params: noise order
    strangers = [tuple(p.shape) for p in params if id(p) not in model_params]
    if strangers:
        raise ModelError(
            f"optimizer parameters must be the model's; got foreign parameters of shapes "
            f"{strangers}"
        )
    dp_loader = DPDataLoader.from_data_loader(loader, generator=loader_generator)
    sample_rate = 1 / len(dp_loader)
    expected_batch_size = int(len(dp_loader.dataset) * sample_rate)
    std = noise_multiplier * max_grad_norm
    noises = [torch.empty_like(p) for p in params]
    total_loss, batches, steps = 0.0, 0, 0
    with FusedClipper(model, params, max_grad_norm=max_grad_norm) as clipper:
        try:
            for _ in range(epochs):
                if max_steps is not None and steps >= max_steps:
                    break
                for features, labels in dp_loader:
                    if max_steps is not None and steps >= max_steps:
                        break
                    if len(labels) == 0:  # empty Poisson batch: a noise-only step
                        sums = [torch.zeros_like(p) for p in params]
                    else:
                        loss, sums = clipper.clipped_sum(features, labels, criterion)
                        total_loss += float(loss.item())
                        batches += 1
                    if secure_mode or std == 0:
                        noises = [
                            _generate_noise(
                                std=std,
                                reference=p,
                                generator=noise_generator,
                                secure_mode=secure_mode,
                            )
                            for p in params
                        ]
                    else:  # Opacus' _generate_noise draws, into reused buffers
                        for buf in noises:
                            buf.normal_(0.0, std, generator=noise_generator)
                    # Opacus: p.grad = (summed_grad + noise) / expected_batch_size
                    torch._foreach_add_(sums, noises)
                    torch._foreach_div_(sums, expected_batch_size)
                    for p, grad in zip(params, sums, strict=True):
                        p.grad = grad
                    accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
                    optimizer.step()
                    steps += 1
        finally:
            for p in params:
                p.grad = None
    logger.debug(
        "fused DP-SGD: %d steps (%d non-empty), q=%.4g, expected batch %d, %d parameters",
        steps,
        batches,
        sample_rate,
        expected_batch_size,
        len(params),
    )
    return FusedRun(
        total_loss=total_loss, nonempty_batches=batches, steps=steps, sample_rate=sample_rate
    )


def _captured(tensors: Iterable[torch.Tensor | None], names: Sequence[str]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for name, t in zip(names, tensors, strict=True):
        if t is None:
            raise ModelError(
                f"nn.Linear layer {name} with trained parameters did not run in the forward "
                f"pass; fused mode needs every trained Linear called once per step; "
                f"{_USE_OTHER_MODE}"
            )
        out.append(t)
    return out


def _present(sums: list[torch.Tensor | None], k: int) -> torch.Tensor:
    value = sums[k]
    if value is None:  # pragma: no cover - slots only name counted parameters
        raise ModelError(f"fused DP-SGD computed no gradient for Linear layer #{k}")
    return value


__all__ = [
    "CLIP_EPSILON",
    "FUSED_CONTAINERS",
    "FUSED_ELEMENTWISE_MODULES",
    "FusedClipper",
    "FusedRun",
    "clipped_grad_sum",
    "fused_model_problems",
    "train_fused",
    "validate_fused_model",
]
