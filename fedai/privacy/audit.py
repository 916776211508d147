"""Empirical privacy audit: membership-inference attacks on a trained model.

Two attacks, both reporting ROC AUC and the true-positive rate at 1% (and 0.1%) false
positives on members (training examples) vs non-members (held-out examples of the same
distribution):

* loss threshold (Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy Risk in Machine
  Learning", CSF): score = minus the example's loss;
* offline LiRA (Carlini, Chien, Nasr, Song, Terzis & Tramèr 2022, "Membership Inference
  Attacks From First Principles", IEEE S&P): shadow models trained *without* the target
  examples give, per example, the distribution of the logit-scaled confidence
  ``phi = log(p_y / (1 - p_y))``; the score is how far the target model's ``phi`` lies
  above that "out" distribution, ``(phi - mu_out) / sigma_out`` (fixed global variance by
  default, which the paper finds stronger with few shadow models).

An audit gives an empirical *lower* bound on leakage; it never certifies privacy. DP
should pull both AUCs toward 0.5: :func:`compare_dp_audit` trains the same deliberately
overfit configuration with and without DP-SGD and reports both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedai.errors import InvalidPrivacyParameterError

if TYPE_CHECKING:
    from torch import nn

    from fedai.models import ModelSpec

logger = logging.getLogger(__name__)

#: ``train_fn(x, y, seed) -> trained model``: the training procedure under audit.
TrainFn = Callable[[np.ndarray, np.ndarray, int], "nn.Module"]


@dataclass(frozen=True, slots=True)
class AttackResult:
    """How well one attack separates members from non-members.

    Attributes:
        attack: ``"loss"`` or ``"lira"``.
        auc: ROC AUC (0.5 = chance).
        tpr_at_1pct_fpr: true-positive rate at 1% false-positive rate.
        tpr_at_01pct_fpr: true-positive rate at 0.1% false-positive rate (coarse when
            there are fewer than 1000 non-members).
        num_members: member examples scored.
        num_nonmembers: non-member examples scored.
    """

    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    num_members: int
    num_nonmembers: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def attack_metrics(
    attack: str, member_scores: np.ndarray, nonmember_scores: np.ndarray
) -> AttackResult:
    """Return AUC and TPR at low FPR for scores where higher means "member".

    Raises:
        InvalidPrivacyParameterError: an empty side or non-finite scores.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        raise InvalidPrivacyParameterError(
            f"attack needs members and non-members; got {m.size} and {n.size}"
        )
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
        raise InvalidPrivacyParameterError("attack scores must be finite")
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    scores = np.concatenate([m, n])
    fpr, tpr, _ = roc_curve(labels, scores)

    def tpr_at(target: float) -> float:
        ok = fpr <= target
        return float(tpr[ok].max()) if ok.any() else 0.0

    return AttackResult(
        attack=attack,
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_1pct_fpr=tpr_at(0.01),
        tpr_at_01pct_fpr=tpr_at(0.001),
        num_members=int(m.size),
        num_nonmembers=int(n.size),
    )


def _logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[i : i + batch_size], dtype=torch.float32)
            out.append(model(xb).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return each example's cross-entropy loss under ``model``."""
    logits = _logits(model, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return np.asarray(-log_probs[np.arange(len(y)), np.asarray(y, dtype=np.int64)])


def logit_confidence(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return ``phi = log p_y - log(1 - p_y)`` per example (Carlini et al. 2022, Sec. IV).

    Computed stably as ``z_y - logsumexp(z_{j != y})`` from the logits ``z``.
    """
    logits = _logits(model, x)
    idx = np.arange(len(y))
    yy = np.asarray(y, dtype=np.int64)
    true = logits[idx, yy]
    others = logits.copy()
    others[idx, yy] = -np.inf
    top = others.max(axis=1)
    lse = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    return np.asarray(true - lse)


def loss_threshold_attack(
    model: nn.Module,
    *,
    members: tuple[np.ndarray, np.ndarray],
    nonmembers: tuple[np.ndarray, np.ndarray],
) -> AttackResult:
    """Loss-threshold membership inference (Yeom et al. 2018): low loss means member."""
    return attack_metrics(
        "loss", -per_example_loss(model, *members), -per_example_loss(model, *nonmembers)
    )


def lira_offline_attack(
    model: nn.Module,
    shadow_models: list[nn.Module],
    *,
    members: tuple[np.ndarray, np.ndarray],
    nonmembers: tuple[np.ndarray, np.ndarray],
    fixed_variance: bool = True,
) -> AttackResult:
    """Offline LiRA (Carlini et al. 2022, Alg. 1 with only OUT models).

    Args:
        model: the target model.
        shadow_models: models trained like the target on data that contains none of the
            member or non-member examples (at least 2).
        members: ``(x, y)`` of the target's training examples.
        nonmembers: ``(x, y)`` of held-out examples.
        fixed_variance: use one global std over all examples (better with few shadows).

    Raises:
        InvalidPrivacyParameterError: fewer than 2 shadow models.
    """
    if len(shadow_models) < 2:
        raise InvalidPrivacyParameterError(
            f"LiRA needs at least 2 shadow models; got {len(shadow_models)}"
        )
    x = np.concatenate([members[0], nonmembers[0]])
    y = np.concatenate([members[1], nonmembers[1]])
    target_phi = logit_confidence(model, x, y)
    shadow_phi = np.stack([logit_confidence(s, x, y) for s in shadow_models])  # (k, N)
    mu = shadow_phi.mean(axis=0)
    if fixed_variance:
        std = np.full_like(mu, float(shadow_phi.std(axis=0, ddof=1).mean()))
    else:
        std = shadow_phi.std(axis=0, ddof=1)
    score = (target_phi - mu) / np.maximum(std, 1e-8)
    k = len(members[1])
    return attack_metrics("lira", score[:k], score[k:])


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Both attacks on one training procedure, plus the target model's utility."""

    loss: AttackResult | None
    lira: AttackResult | None
    train_accuracy: float
    test_accuracy: float
    num_shadow_models: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "loss": None if self.loss is None else self.loss.to_dict(),
            "lira": None if self.lira is None else self.lira.to_dict(),
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "num_shadow_models": self.num_shadow_models,
        }


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((_logits(model, x).argmax(axis=1) == y).mean()) if len(y) else math.nan


def audit_training(
    *,
    x: np.ndarray,
    y: np.ndarray,
    train_fn: TrainFn,
    num_members: int,
    num_shadow_models: int,
    rng: np.random.Generator,
    attacks: tuple[str, ...] = ("loss", "lira"),
) -> AuditReport:
    """Audit a training procedure end to end with the loss and offline-LiRA attacks.

    Shuffles the pool, takes ``num_members`` members (the target's training set), as
    many non-members, and trains ``num_shadow_models`` shadow models with ``train_fn`` on
    random ``num_members``-sized subsets of the remaining examples (disjoint from every
    target example, as offline LiRA requires).

    Raises:
        InvalidPrivacyParameterError: too few examples for the requested split.
    """
    n = len(y)
    if num_members < 2 or num_shadow_models < 2:
        raise InvalidPrivacyParameterError(
            f"audit needs num_members >= 2 and num_shadow_models >= 2; got {num_members} and "
            f"{num_shadow_models}"
        )
    if n < 3 * num_members:
        raise InvalidPrivacyParameterError(
            f"audit needs at least 3 * num_members = {3 * num_members} examples (members, "
            f"non-members, shadow pool); got {n}"
        )
    order = rng.permutation(n)
    mem, non, pool = (
        order[:num_members],
        order[num_members : 2 * num_members],
        order[2 * num_members :],
    )
    seeds = rng.integers(0, 2**31 - 1, size=num_shadow_models + 1)
    target = train_fn(x[mem], y[mem], int(seeds[0]))
    shadows = []
    for i in range(num_shadow_models if "lira" in attacks else 0):
        pick = rng.choice(pool, size=num_members, replace=False)
        shadows.append(train_fn(x[pick], y[pick], int(seeds[i + 1])))
    members, nonmembers = (x[mem], y[mem]), (x[non], y[non])
    report = AuditReport(
        loss=loss_threshold_attack(target, members=members, nonmembers=nonmembers)
        if "loss" in attacks
        else None,
        lira=lira_offline_attack(target, shadows, members=members, nonmembers=nonmembers)
        if "lira" in attacks
        else None,
        train_accuracy=_accuracy(target, *members),
        test_accuracy=_accuracy(target, *nonmembers),
        num_shadow_models=num_shadow_models,
    )
    logger.info(
        "audit: loss %s, LiRA %s, train acc %.3f, test acc %.3f",
        report.loss,
        report.lira,
        report.train_accuracy,
        report.test_accuracy,
    )
    return report


def make_train_fn(
    *,
    spec: ModelSpec,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    grad_sample_mode: str = "hooks",
) -> TrainFn:
    """Return a central (non-federated) training procedure for audits.

    ``noise_multiplier=None`` trains without privacy (shuffled mini-batches); otherwise
    DP-SGD through :func:`fedai.privacy.dpsgd.train_dp_sgd` with Poisson sampling. The
    ``seed`` given to the returned function fixes initial weights, sampling and noise.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedai.models import build_model
    from fedai.privacy.dpsgd import train_dp_sgd

    def train(xs: np.ndarray, ys: np.ndarray, seed: int) -> nn.Module:
        model = build_model(spec, seed=seed)
        data = TensorDataset(
            torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.int64)
        )
        gen = torch.Generator().manual_seed(seed)

        def factory(params: Any) -> torch.optim.Optimizer:
            return torch.optim.SGD(params, lr=lr, momentum=momentum)

        if noise_multiplier is None:
            loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
            opt = factory(model.parameters())
            loss_fn = torch.nn.CrossEntropyLoss()
            model.train()
            for _ in range(epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    loss_fn(model(xb), yb).backward()
                    opt.step()
            return model
        loader = DataLoader(data, batch_size=batch_size, generator=gen)
        result = train_dp_sgd(
            model,
            loader=loader,
            optimizer_factory=factory,
            epochs=epochs,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=grad_sample_mode,
            noise_generator=torch.Generator().manual_seed(seed + 1),
        )
        model.load_state_dict(result.state_dict)
        return model

    return train


def compare_dp_audit(
    *,
    x: np.ndarray,
    y: np.ndarray,
    spec: ModelSpec,
    num_members: int,
    num_shadow_models: int,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float = 1.0,
    delta: float = 1e-5,
    seed: int = 0,
) -> dict[str, Any]:
    """Audit the same configuration without and with DP-SGD; return both reports.

    The same split and shadow subsets are used for both (same ``seed``), so the AUC
    difference is the effect of DP. The DP side also reports its RDP epsilon.
    """
    from fedai.privacy.accounting import epsilon_from_history
    from fedai.privacy.dpsgd import planned_event

    reports = {}
    for name, sigma in (("non_private", None), ("dp", noise_multiplier)):
        fn = make_train_fn(
            spec=spec,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
        )
        reports[name] = audit_training(
            x=x,
            y=y,
            train_fn=fn,
            num_members=num_members,
            num_shadow_models=num_shadow_models,
            rng=np.random.default_rng(seed),
        ).to_dict()
    event = planned_event(
        noise_multiplier=noise_multiplier,
        num_samples=num_members,
        batch_size=batch_size,
        epochs=epochs,
    )
    reports["dp"]["epsilon"] = epsilon_from_history([event], delta=delta, accountant="rdp")
    reports["dp"]["delta"] = delta
    reports["dp"]["noise_multiplier"] = noise_multiplier
    return reports


__all__ = [
    "AttackResult",
    "AuditReport",
    "TrainFn",
    "attack_metrics",
    "audit_training",
    "compare_dp_audit",
    "lira_offline_attack",
    "logit_confidence",
    "loss_threshold_attack",
    "make_train_fn",
    "per_example_loss",
]
