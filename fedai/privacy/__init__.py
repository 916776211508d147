"""Differential privacy for fedai: Opacus DP-SGD, the privacy ledger, user-level DP, audits.

Sample-level DP-SGD runs inside each client (:func:`train_dp_sgd`, Abadi et al. 2016);
each client's :class:`PrivacyLedger` keeps its ``(sigma, q, steps)`` history across
rounds and restarts and states cumulative epsilon with an Opacus accountant (RDP, Mironov
2017; PRV, Gopi et al. 2021), cross-checkable with Google dp-accounting
(:func:`dp_accounting_epsilon`). User-level DP of the aggregate (McMahan et al. 2018) is
:func:`clip_and_noise` plus :func:`user_level_epsilon`. No Flower imports here.

Example:
    >>> round(user_level_epsilon(population=100, clients_per_round=10,
    ...                          noise_multiplier=1.0, rounds=100, delta=1e-5), 1)
    7.9
"""

from __future__ import annotations

from fedai.privacy.accounting import (
    DEFAULT_DELTA,
    DpSgdEvent,
    calibrate_noise_multiplier,
    dp_accounting_epsilon,
    epsilon_from_history,
    poisson_schedule,
    resolve_delta,
)
from fedai.privacy.dpsgd import (
    PrivateTrainingResult,
    planned_event,
    private_round,
    secure_rng_available,
    train_dp_sgd,
    validate_private_model,
)
from fedai.privacy.ledger import LedgerEntry, PrivacyLedger, max_epsilon
from fedai.privacy.statement import UserLevelSetting, privacy_statement
from fedai.privacy.user_level import (
    UserDpUpdate,
    calibrate_user_noise_multiplier,
    clip_and_noise,
    clip_update,
    effective_noise_multiplier,
    user_level_epsilon,
)

__all__ = [
    "DEFAULT_DELTA",
    "DpSgdEvent",
    "LedgerEntry",
    "PrivacyLedger",
    "PrivateTrainingResult",
    "UserDpUpdate",
    "UserLevelSetting",
    "calibrate_noise_multiplier",
    "calibrate_user_noise_multiplier",
    "clip_and_noise",
    "clip_update",
    "dp_accounting_epsilon",
    "effective_noise_multiplier",
    "epsilon_from_history",
    "max_epsilon",
    "planned_event",
    "poisson_schedule",
    "privacy_statement",
    "private_round",
    "resolve_delta",
    "secure_rng_available",
    "train_dp_sgd",
    "user_level_epsilon",
    "validate_private_model",
]
