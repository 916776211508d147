"""Checks of a whole run before any client starts, made once by the driver.

Clients validate what they are sent (a real node must), but in a simulation every client
would find the same problem, after start-up, and say so once each. ``fedai simulate``
runs these checks once, before anything starts, and stops with one line and exit status
2 (:data:`~fedai.errors.EXIT_USAGE`). They reuse the code the run would use, so they
cannot disagree with it:

* data: the source loads and every client gets a usable partition (:mod:`fedai.data`,
  the clients' own loader; in-process, its cached result serves the clients);
* model: it builds for the data's shape, and passes Opacus' validator under DP;
* keys: a secure scheme's two bundles load and come from one key set (same fingerprint
  and payload-authentication key), which a swapped or edited bundle does not;
* privacy: ``secure_mode`` has its CSPRNG (``torchcsprng``); ``budget_epsilon`` covers
  what the plan spends (:mod:`fedai.privacy.plan`);
* ``secure_aggregation.min_contributors`` can be met by a round's clients;
* headroom: a secure scheme can carry the largest total weight a round's clients bring
  (Paillier's ``secure_aggregation.max_total_weight``, :func:`check_weights`);
* output: the results directory can be written and is not an earlier run's, unless
  the caller overwrites it (:func:`check_output_dir`, :func:`prepare_output_dir`).

Every problem found is reported together, in one line. Nothing here imports Flower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedai.errors import ConfigError, FedAIError, InvalidPrivacyParameterError, KeyFileError

if TYPE_CHECKING:
    from fedai.config import ExperimentConfig, SecureAggregationSection
    from fedai.data import ClientData

logger = logging.getLogger(__name__)

#: What marks a directory as a run's results directory.
RESULTS_FILE = "results.json"
#: What a run writes into its directory, by name; ``--overwrite`` removes these first, so
#: no plot or table of the earlier run survives beside the new results. Names, not globs:
#: ``--out .`` must never delete the user's own ``.csv``/``.npz`` data. (Its checkpoint
#: is :func:`server.checkpointing.start_or_resume`'s to remove; the simulated clients'
#: ledgers stay unless ``--reset-client-ledgers`` asks for it.)
RUN_FILES = (
    RESULTS_FILE,
    "rounds.csv",
    "accuracy.png",
    "accuracy_vs_epsilon.png",
    "model.pt",
    "model.json",
    "final-aggregate.npz",
)


@dataclass(frozen=True, slots=True)
class Findings:
    """What the checks learnt: each client's training-set size, and warnings (logged)."""

    client_sizes: dict[str, int]
    warnings: tuple[str, ...] = ()


def check_run(
    cfg: ExperimentConfig,
    *,
    out_dir: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    out_option: str = "--out",
) -> Findings:
    """Check ``cfg`` (and the results directory ``out_dir``) before a simulation starts.

    Args:
        cfg: The experiment.
        out_dir: The results directory, or None to skip that check.
        overwrite: An earlier run in ``out_dir`` may be replaced.
        resume: An earlier run in ``out_dir`` is to be continued.
        out_option: How the user named ``out_dir`` (for messages).

    Returns:
        The clients' training-set sizes and the warnings (each logged once here).

    Raises:
        FedAIError: The one problem found (its own type: DataError, KeyFileError, ...),
            or a ConfigError listing every problem when there are several.
    """
    problems: list[FedAIError] = []
    warnings: list[str] = []

    def attempt(check: Callable[[], object]) -> None:
        try:
            check()
        except FedAIError as err:
            problems.append(err)

    clients: list[ClientData] = []

    def load() -> None:
        clients.extend(_load_clients(cfg))

    attempt(load)
    if clients:
        attempt(lambda: _check_model(cfg, clients))
    attempt(lambda: check_keys(cfg.secure_aggregation))
    attempt(lambda: _check_secure_mode(cfg))
    attempt(lambda: warnings.extend(_check_contributors(cfg)))
    if clients:
        sizes = [len(c.y_train) for c in clients]
        attempt(lambda: warnings.extend(check_budget(cfg, sizes)))
        attempt(lambda: check_weights(cfg, sizes))
    if cfg.privacy.mode == "none" and cfg.privacy.grad_sample_mode != "hooks":
        warnings.append(
            f"privacy.grad_sample_mode {cfg.privacy.grad_sample_mode!r} has no effect with "
            "privacy.mode 'none' (no DP-SGD runs)"
        )
    from fedai.data import standardizes

    if cfg.data.statistics != "auto" and not standardizes(cfg.data):
        warnings.append(
            f"data.statistics {cfg.data.statistics!r} has no effect: data.standardize "
            f"{cfg.data.standardize!r} standardises no client of {cfg.data.dataset!r} in a "
            "simulation (only file sources, or every source with 'zscore')"
        )
    if out_dir is not None:
        attempt(
            lambda: check_output_dir(out_dir, overwrite=overwrite, resume=resume, option=out_option)
        )
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigError([str(p) for p in problems])
    for text in warnings:
        logger.warning("%s", text)
    return Findings({c.client_id: len(c.y_train) for c in clients}, tuple(warnings))


# ---------------------------------------------------------------------- data, model
def _load_clients(cfg: ExperimentConfig) -> list[ClientData]:
    """Every client's data, through the loader the simulated clients use (cached)."""
    from fedai.data import load_client

    return [load_client(cfg, i) for i in range(cfg.experiment.num_clients)]


def _check_model(cfg: ExperimentConfig, clients: Sequence[ClientData]) -> None:
    """Build the model for the data's shape (as discovery will); validate it for DP-SGD."""
    from fedai.models import ModelSpec, build_model

    spec = ModelSpec(
        name=cfg.model.name,
        input_shape=clients[0].input_shape,
        num_classes=max(c.num_classes for c in clients),
        hidden=cfg.model.hidden,
    )
    model = build_model(spec, seed=0)
    if cfg.privacy.mode != "none":
        from fedai.privacy.dpsgd import validate_private_model

        validate_private_model(model)


# ---------------------------------------------------------------------- keys
def check_keys(section: SecureAggregationSection) -> None:
    """Load a secure scheme's two bundles and check that they belong to one key set.

    Raises:
        ConfigError: A secure scheme without a key directory.
        KeyFileError: A bundle is missing, unreadable or corrupted, or the two come from
            different key sets (fingerprints or payload-authentication keys differ).
    """
    if section.scheme == "none":
        return
    from fedai.crypto.bundle import (
        CLIENT_BUNDLE,
        COORDINATOR_BUNDLE,
        key_set_fields,
        read_bundle,
    )
    from fedai.schemes import client_codec, coordinator_sum

    coordinator_sum(section)  # what the coordinator loads: public material
    client_codec(section)  # what every simulated client loads: the secret bundle
    key_dir = Path(section.key_dir)
    fields = {}
    for kind, name in (("client", CLIENT_BUNDLE), ("coordinator", COORDINATOR_BUNDLE)):
        path = key_dir / name
        meta, _ = read_bundle(path, kind=kind, scheme=section.scheme)  # type: ignore[arg-type]
        fields[kind] = key_set_fields(meta, path)
    (client_fp, client_mac), (coord_fp, coord_mac) = fields["client"], fields["coordinator"]
    if client_fp != coord_fp:
        raise KeyFileError(
            f"{key_dir}: {CLIENT_BUNDLE} and {COORDINATOR_BUNDLE} must come from one key set; "
            f"got fingerprints {client_fp.hex()[:16]} and {coord_fp.hex()[:16]} (a bundle "
            "from another `fedai keys create`?)"
        )
    if client_mac != coord_mac:
        raise KeyFileError(
            f"{key_dir}: {CLIENT_BUNDLE} and {COORDINATOR_BUNDLE} must hold the same "
            "payload-authentication key (mac_key); got two different ones (an edited or "
            "corrupted bundle: every contribution would fail authentication)"
        )


# ---------------------------------------------------------------------- privacy
def _check_secure_mode(cfg: ExperimentConfig) -> None:
    if cfg.privacy.mode == "none" or not cfg.privacy.secure_mode:
        return
    from fedai.privacy.dpsgd import secure_rng_available

    if not secure_rng_available():
        raise InvalidPrivacyParameterError(
            "privacy.secure_mode = true needs the torchcsprng package (Opacus' "
            "cryptographically secure RNG), which is not installed and has no wheel for "
            "torch 2.x; got secure_mode = true (set it to false)"
        )


def check_budget(cfg: ExperimentConfig, sizes: Sequence[int]) -> list[str]:
    """Compare ``privacy.budget_epsilon`` with the epsilon the run is planned to spend.

    The plan (:func:`fedai.privacy.plan.plan_client`, what ``fedai privacy plan`` prints)
    assumes a client trains in every round. When every client does (``clients_per_round
    = num_clients``, no stragglers) a plan over budget means the run would stop early:
    refused. Otherwise it is an upper bound: a warning. A client that one round alone
    takes over budget could never train: refused either way.

    Args:
        cfg: The experiment.
        sizes: Each client's training-set size.

    Returns:
        Warnings (the plan exceeds the budget only if a client trains in every round).

    Raises:
        InvalidPrivacyParameterError: Over budget as above, or an unreachable target.
    """
    p = cfg.privacy
    budget = p.budget_epsilon
    if p.mode == "none" or budget is None or not sizes:
        return []
    from fedai.privacy.accounting import epsilon_from_history
    from fedai.privacy.plan import plan_client

    t, e = cfg.train, cfg.experiment
    plans = {
        n: plan_client(
            p,
            client_id=str(n),
            num_samples=n,
            batch_size=t.batch_size,
            local_epochs=t.local_epochs,
            rounds=e.rounds,
        )
        for n in sorted(set(sizes))
    }
    first = {
        n: epsilon_from_history([plan.event], delta=plan.delta, accountant=plan.accountant)
        for n, plan in plans.items()
    }
    never = [i for i, n in enumerate(sizes) if first[n] > budget]
    if never:
        worst = max(first[sizes[i]] for i in never)
        raise InvalidPrivacyParameterError(
            f"privacy.budget_epsilon must cover one round of every client; got {budget:g}, "
            f"below the epsilon {worst:.3g} one round costs {_clients(never)}, which "
            "could never train (raise budget_epsilon or the noise)"
        )
    over = [i for i, n in enumerate(sizes) if not plans[n].within_budget]
    if not over:
        return []
    worst_eps = max(plans[sizes[i]].epsilon for i in over)
    planned = (
        f"privacy.target_epsilon {p.target_epsilon:g}"
        if p.target_epsilon is not None
        else f"privacy.noise_multiplier {p.noise_multiplier:g}"
    )
    text = (
        f"privacy.budget_epsilon {budget:g} is below the epsilon {worst_eps:.3g} that "
        f"{planned} spends over experiment.rounds {e.rounds} for {_clients(over)}"
    )
    every_round = e.clients_per_round == e.num_clients and cfg.strategy.straggler_fraction == 0
    if every_round:
        raise InvalidPrivacyParameterError(
            f"{text}; every client trains every round, so the run would stop early (raise "
            "budget_epsilon, add noise or run fewer rounds; `fedai privacy plan` shows the "
            "spend)"
        )
    return [f"{text} if it trains in every round; it may stop early"]


def _clients(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:5])
    more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
    return f"client{'s' if len(indices) != 1 else ''} {shown}{more}"


def check_weights(cfg: ExperimentConfig, sizes: Sequence[int]) -> None:
    """Refuse a scheme whose headroom a round's total weight could overflow.

    A client's aggregation weight is its training-set size (``sizes``), so the scheme
    (:func:`fedai.schemes.weight_problems`) can bound a round's total before any client
    encrypts: Paillier refuses a ``max_total_weight`` below the sum of the
    ``clients_per_round`` largest sizes. The coordinator repeats the check after
    discovery, for federations whose sizes only the nodes know.

    Raises:
        ConfigError: The scheme's problems, each naming its setting.
    """
    from fedai.schemes import weight_problems

    problems = weight_problems(cfg, sizes)
    if problems:
        raise ConfigError(problems)


def _check_contributors(cfg: ExperimentConfig) -> list[str]:
    """A round needs ``min_contributors``; refuse a federation that can never supply them."""
    need = cfg.secure_aggregation.min_contributors
    e = cfg.experiment
    if need <= e.clients_per_round:
        return []
    if need > e.num_clients or cfg.privacy.user_client_sampling != "poisson":
        raise ConfigError(
            f"secure_aggregation.min_contributors must be <= experiment.clients_per_round "
            f"(every round would fail); got {need} > {e.clients_per_round}"
        )
    return [
        f"secure_aggregation.min_contributors {need} is above experiment.clients_per_round "
        f"{e.clients_per_round}: most rounds of Poisson client sampling will fail"
    ]


# ---------------------------------------------------------------------- output
def check_output_dir(
    path: Path, *, overwrite: bool = False, resume: bool = False, option: str = "--out"
) -> None:
    """Check that a run can write its results to ``path`` (nothing is created).

    Raises:
        ConfigError: ``path`` is a file, lies under a file, cannot be written, or holds
            an earlier run (``results.json``) and neither ``overwrite`` nor ``resume``.
    """
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option} must be a directory; got the file {str(path)!r}")
        if (path / RESULTS_FILE).exists() and not (overwrite or resume):
            raise ConfigError(
                f"{option} must not hold an earlier run unless --overwrite is given; got "
                f"{str(path)!r} with a {RESULTS_FILE}"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} must be writable; got {str(path)!r}, which is not")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option} {str(path)!r} cannot be created: {str(parent)!r} is not writable"
        )


def prepare_output_dir(path: Path, *, overwrite: bool = False, option: str = "--out") -> None:
    """Create ``path``, prove a file can be written there, and clear an earlier run.

    Call after :func:`check_output_dir` and the other checks passed, before the run
    starts. With ``overwrite`` the files an earlier run wrote at the top of ``path``
    (:data:`RUN_FILES`) are removed; nothing else is.

    Raises:
        ConfigError: The directory cannot be created or written (e.g. under ``/proc``).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fedai-probe-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"{option} must be a writable directory; got {str(path)!r} ({err.strerror or err})"
        ) from err
    if not overwrite:
        return
    for name in RUN_FILES:
        stale = path / name
        if stale.is_file() or stale.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def check_output_file(path: Path, *, option: str = "--out") -> None:
    """Check, before long work, that a report can later be written to file ``path``.

    A probe file is created and removed in its directory (an existing ``path`` is only
    opened for appending, not changed).

    Raises:
        ConfigError: ``path`` is a directory, or its directory is missing, a file, or
            not writable.
    """
    if path.is_dir():
        raise ConfigError(f"{option} must be a file path; got the directory {str(path)!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r} cannot be written: its directory {str(parent)!r} "
            "does not exist or is not a directory"
        )
    try:
        if path.exists():
            with path.open("ab"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".fedai-probe-"):
                pass
    except OSError as err:
        raise ConfigError(
            f"{option} {str(path)!r} cannot be written: {err.strerror or err}"
        ) from err


__all__ = [
    "RESULTS_FILE",
    "RUN_FILES",
    "Findings",
    "check_budget",
    "check_keys",
    "check_output_dir",
    "check_output_file",
    "check_run",
    "check_weights",
    "prepare_output_dir",
]
