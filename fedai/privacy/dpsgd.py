"""Local DP-SGD through Opacus: one call trains one round and emits its privacy event.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS) clips each
example's gradient to ``max_grad_norm``, adds Gaussian noise ``N(0, (sigma*C)²)`` to the sum
and samples batches by Poisson sampling, so that each step is a subsampled Gaussian
mechanism the accountants in :mod:`fedai.privacy.accounting` can bound.

:func:`train_dp_sgd` builds a *new* :class:`opacus.PrivacyEngine` and a *deep copy* of the
model on every call, so ``make_private`` never runs twice on the same object (which
double-hooks or silently resets accounting) and the caller's model is never mutated. It
returns the trained ``state_dict`` (``_module.`` prefixes removed) and the
``(noise_multiplier, sample_rate, steps)`` event Opacus' accountant recorded; the event
goes into the client's :class:`~fedai.privacy.ledger.PrivacyLedger`, which owns the
cumulative epsilon. :func:`private_round` does check-budget, train, record in that order.
``grad_sample_mode="fused"`` swaps Opacus' per-sample-gradient machinery for the
single-backward clipping of :mod:`fedai.privacy.fused` (Linear + elementwise models) while
keeping Opacus' Poisson loader, noise and accountant.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedai.errors import InvalidPrivacyParameterError, ModelError
from fedai.privacy.accounting import DpSgdEvent, check_positive, poisson_schedule
from fedai.privacy.ledger import LedgerEntry, PrivacyLedger

if TYPE_CHECKING:
    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ew", "ghost", "fused")
OptimizerFactory = Callable[[Iterable["torch.nn.Parameter"]], "torch.optim.Optimizer"]


@dataclass(frozen=True, slots=True)
class PrivateTrainingResult:
    """What one DP-SGD round produced.

    Attributes:
        state_dict: trained weights, keyed like the input model's ``state_dict``.
        event: ``(noise_multiplier, sample_rate, steps)`` as Opacus' accountant recorded it.
        num_samples: size of the local data set.
        mean_loss: mean training loss over the non-empty batches (a private quantity is
            *not* implied: report it only to the data owner).
    """

    state_dict: dict[str, torch.Tensor]
    event: DpSgdEvent
    num_samples: int
    mean_loss: float


def secure_rng_available() -> bool:
    """Return True if Opacus' ``secure_mode`` can run (needs the ``torchcsprng`` package).

    ``torchcsprng`` has no wheel for torch 2.x, so this is False on a standard install.
    """
    return importlib.util.find_spec("torchcsprng") is not None


def validate_private_model(model: nn.Module) -> None:
    """Check ``model`` with Opacus' ``ModuleValidator``; collect every problem, raise once.

    Raises:
        ModelError: listing each incompatible module (e.g. BatchNorm; use GroupNorm).
    """
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ModelError(
            "model is not compatible with DP-SGD (Opacus ModuleValidator): "
            + "; ".join(str(e) for e in errors)
        )


def check_dp_sgd_parameters(
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    epochs: int,
    grad_sample_mode: str,
    secure_mode: bool,
) -> None:
    """Validate DP-SGD settings before any training; collect problems, raise once.

    Raises:
        InvalidPrivacyParameterError: every problem found, joined.
    """
    problems: list[str] = []
    for name, value in (("noise_multiplier", noise_multiplier), ("max_grad_norm", max_grad_norm)):
        try:
            check_positive(value, name=name)
        except InvalidPrivacyParameterError as err:
            problems.append(str(err))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        problems.append(f"epochs must be an integer >= 1; got {epochs!r}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        problems.append(
            f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}; "
            f"got {grad_sample_mode!r}"
        )
    if secure_mode and not secure_rng_available():
        problems.append(
            "secure_mode=true needs torchcsprng for Opacus' cryptographically secure RNG, "
            "which is not installed (it has no wheel for torch 2.x); set secure_mode=false"
        )
    if problems:
        raise InvalidPrivacyParameterError("; ".join(problems))


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k = key
        while k.startswith("_module."):
            k = k[len("_module.") :]
        out[k] = value.detach().clone()
    return out


def train_dp_sgd(
    model: nn.Module,
    *,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer_factory: OptimizerFactory,
    epochs: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    noise_generator: torch.Generator | None = None,
    sampling_generator: torch.Generator | None = None,
    criterion: nn.Module | None = None,
    max_steps: int | None = None,
) -> PrivateTrainingResult:
    """Train a copy of ``model`` with DP-SGD for ``epochs`` epochs (Abadi et al. 2016).

    Args:
        model: the starting model; it is deep-copied, never hooked or mutated.
        loader: a ``DataLoader`` of ``(features, labels)``; its ``batch_size`` sets the
            Poisson rate ``q = 1 / ceil(n / B)``. Its own sampler and ``generator`` are
            *not* used: Poisson batches come from ``sampling_generator``.
        optimizer_factory: builds the optimizer from the copy's parameters, e.g.
            ``lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)``.
        epochs: local epochs (each ``int(1/q)`` Poisson batches).
        noise_multiplier: sigma, noise std relative to ``max_grad_norm``.
        max_grad_norm: per-example gradient clipping norm ``C``.
        grad_sample_mode: ``"hooks"`` (default; per-sample gradients via hooks), ``"ew"``
            (expanded weights, faster on CPU) or ``"ghost"`` (fast gradient clipping, Li et
            al. 2022 / Bu et al. 2023: per-sample gradient *norms* without materialising
            per-sample gradients, a second backward pass; Linear, Conv, LayerNorm and
            Embedding layers) or ``"fused"`` (:mod:`fedai.privacy.fused`: clipped gradients
            of ``nn.Linear`` + elementwise models from one backward pass, Bu et al. 2023,
            with Opacus' Poisson loader, noise and accountant; the fastest on small MLPs).
            In ``ew`` and ``ghost`` an empty Poisson batch is replaced by one random,
            data-independent example, as Opacus' ``rand_on_empty`` does; ``hooks`` and
            ``fused`` take a noise-only step.
        secure_mode: Opacus' CSPRNG noise; needs ``torchcsprng`` (not installable here).
        noise_generator: torch RNG for the Gaussian noise (tests pass a seeded one). ``None``
            draws a generator seeded from OS entropy. Ignored (must be None) in secure mode.
        sampling_generator: torch RNG for the Poisson batch sampling. ``None`` (production)
            draws one seeded from OS entropy: amplification by subsampling assumes the
            batches are secret, so they must never follow from a seed others know (the
            experiment seed, a client id, a round number). Tests pass a seeded one.
        criterion: the loss (mean reduction); cross-entropy by default.
        max_steps: stop after this many noised steps (a straggler's partial work); the
            event then records the steps that ran, which is what the ledger charges.

    Returns:
        A :class:`PrivateTrainingResult`.

    Raises:
        InvalidPrivacyParameterError: bad privacy settings (before any training).
        ModelError: a model Opacus cannot privatise, or in ``fused`` mode a model with
            other than Linear + elementwise modules (before any training).
    """
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from fedai.privacy.fused import train_fused, validate_fused_model

    check_dp_sgd_parameters(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        epochs=epochs,
        grad_sample_mode=grad_sample_mode,
        secure_mode=secure_mode,
    )
    validate_private_model(model)
    if grad_sample_mode == "fused":
        validate_fused_model(model)
    num_samples = len(loader.dataset)  # type: ignore[arg-type]
    if num_samples < 1:
        raise InvalidPrivacyParameterError("loader must hold at least one example; got 0")
    # Opacus divides the noised sum by int(n * q) with q = 1 / len(loader); float rounding
    # makes that 0 for some (n, batch_size = 1), e.g. n = 49, and the step would be inf.
    expected_batch = int(num_samples * (1 / len(loader)))
    if expected_batch < 1:
        raise InvalidPrivacyParameterError(
            f"expected Poisson batch size int(n * q) must be >= 1; got "
            f"int({num_samples} * 1/{len(loader)}) = {expected_batch} (batch_size "
            f"{loader.batch_size}); use a batch_size >= 2"
        )
    if secure_mode:
        noise_generator = None
    elif noise_generator is None:
        noise_generator = torch.Generator()
        noise_generator.seed()  # OS entropy
    if sampling_generator is None:
        sampling_generator = torch.Generator()
        sampling_generator.seed()  # OS entropy: secret batches
    # Opacus' DPDataLoader samples with the generator it is given, else the loader's own
    # (in non-secure mode it is given none): hand it a loader that carries ours.
    loader = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        generator=sampling_generator,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    )

    work = copy.deepcopy(model)
    work.train()
    keys = list(work.state_dict().keys())
    optimizer = optimizer_factory(work.parameters())
    loss_fn = criterion if criterion is not None else torch.nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant="rdp", secure_mode=secure_mode)
    if grad_sample_mode == "fused":
        run = train_fused(
            work,
            loader=loader,
            optimizer=optimizer,
            criterion=loss_fn,
            epochs=epochs,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            accountant=engine.accountant,
            noise_generator=engine.secure_rng if secure_mode else noise_generator,
            loader_generator=engine.secure_rng,
            secure_mode=secure_mode,
            max_steps=max_steps,
        )
        total_loss, batches = run.total_loss, run.nonempty_batches
        state = _strip_module_prefix(work.state_dict())
    else:
        total_loss, batches, state = _train_opacus(
            engine,
            work,
            loader=loader,
            optimizer=optimizer,
            loss_fn=loss_fn,
            epochs=epochs,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=grad_sample_mode,
            noise_generator=noise_generator,
            max_steps=max_steps,
        )
    if sorted(state) != sorted(keys):
        raise ModelError(
            f"trained state keys {sorted(state)} do not match the model's {sorted(keys)}"
        )
    history = list(engine.accountant.history)
    if len(history) != 1:  # pragma: no cover - one (sigma, q) per call by construction
        raise ModelError(f"expected one accountant event per round; got {history!r}")
    sigma, q, steps = history[0]
    event = DpSgdEvent(float(sigma), float(q), int(steps))
    mean_loss = total_loss / batches if batches else math.nan
    logger.debug(
        "DP-SGD round: n=%d sigma=%.4f C=%g q=%.4g steps=%d mode=%s",
        num_samples,
        event.noise_multiplier,
        max_grad_norm,
        event.sample_rate,
        event.steps,
        grad_sample_mode,
    )
    return PrivateTrainingResult(
        state_dict=state, event=event, num_samples=num_samples, mean_loss=mean_loss
    )


def _train_opacus(
    engine: PrivacyEngine,
    work: nn.Module,
    *,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    epochs: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str,
    noise_generator: torch.Generator | None,
    max_steps: int | None = None,
) -> tuple[float, int, dict[str, torch.Tensor]]:
    """Opacus' own modes: ``make_private`` then the usual loop; hooks removed after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        made = engine.make_private(
            module=work,
            optimizer=optimizer,
            criterion=loss_fn,
            data_loader=loader,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=True,
            grad_sample_mode=grad_sample_mode,
            noise_generator=noise_generator,
            rand_on_empty=grad_sample_mode != "hooks",
        )
        if grad_sample_mode == "ghost":
            dp_model, dp_optimizer, dp_loss_fn, dp_loader = made
        else:
            dp_model, dp_optimizer, dp_loader = made
            dp_loss_fn = loss_fn
        try:
            total_loss, batches, steps = 0.0, 0, 0
            for _ in range(epochs):
                if max_steps is not None and steps >= max_steps:
                    break
                for features, labels in dp_loader:
                    if max_steps is not None and steps >= max_steps:
                        break
                    dp_optimizer.zero_grad(set_to_none=True)
                    logits = dp_model(features)
                    if len(labels) > 0:
                        loss = dp_loss_fn(logits, labels)
                        total_loss += float(loss.item())
                        batches += 1
                    else:
                        # Empty Poisson batch (hooks mode): the step still releases noise.
                        loss = logits.sum() * 0.0
                    loss.backward()
                    dp_optimizer.step()
                    steps += 1
            dp_optimizer.zero_grad(set_to_none=True)
            inner = getattr(dp_model, "_module", dp_model)
            state = _strip_module_prefix(inner.state_dict())
        finally:
            remove = getattr(dp_model, "remove_hooks", None)
            if callable(remove):
                remove()
    return total_loss, batches, state


def planned_event(
    *, noise_multiplier: float, num_samples: int, batch_size: int, epochs: int
) -> DpSgdEvent:
    """Return the event :func:`train_dp_sgd` will record for these settings (dry run)."""
    q, steps_per_epoch = poisson_schedule(num_samples=num_samples, batch_size=batch_size)
    return DpSgdEvent(float(noise_multiplier), q, steps_per_epoch * epochs)


def private_round(
    model: nn.Module,
    *,
    ledger: PrivacyLedger,
    round: int,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer_factory: OptimizerFactory,
    epochs: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    noise_generator: torch.Generator | None = None,
    sampling_generator: torch.Generator | None = None,
    max_steps: int | None = None,
) -> tuple[PrivateTrainingResult, LedgerEntry]:
    """Check the budget, train one DP-SGD round, record it: dry run, then commit.

    The budget check charges the full plan; the ledger records what ran (fewer steps
    when ``max_steps`` cuts the round short, e.g. a straggler).

    Raises:
        InvalidPrivacyParameterError / ModelError: bad settings, before training.
        PrivacyBudgetExceededError: the round would exceed ``ledger.budget_epsilon``
            (the ledger is marked exhausted; persist it), before training.
    """
    check_dp_sgd_parameters(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        epochs=epochs,
        grad_sample_mode=grad_sample_mode,
        secure_mode=secure_mode,
    )
    batch_size = loader.batch_size or 1
    plan = planned_event(
        noise_multiplier=noise_multiplier,
        num_samples=len(loader.dataset),  # type: ignore[arg-type]
        batch_size=batch_size,
        epochs=epochs,
    )
    ledger.check(plan)
    result = train_dp_sgd(
        model,
        loader=loader,
        optimizer_factory=optimizer_factory,
        epochs=epochs,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=grad_sample_mode,
        secure_mode=secure_mode,
        noise_generator=noise_generator,
        sampling_generator=sampling_generator,
        max_steps=max_steps,
    )
    if max_steps is not None and result.event.steps < plan.steps:
        logger.info(
            "client %s: partial round, %d of %d planned steps; recording what ran",
            ledger.client_id,
            result.event.steps,
            plan.steps,
        )
    elif result.event != plan:
        logger.warning(
            "client %s: Opacus recorded %s, plan was %s; recording what ran",
            ledger.client_id,
            result.event,
            plan,
        )
    entry = ledger.record(round=round, event=result.event)
    return result, entry


__all__ = [
    "GRAD_SAMPLE_MODES",
    "OptimizerFactory",
    "PrivateTrainingResult",
    "check_dp_sgd_parameters",
    "planned_event",
    "private_round",
    "secure_rng_available",
    "train_dp_sgd",
    "validate_private_model",
]
