"""fedai's ServerApp (Flower Message API).

``app`` is the component named in pyproject's ``[tool.flwr.app.components]``: under
``flwr run .`` it reads the experiment from ``context.run_config``. The CLI builds its own
ServerApp with :func:`build_server_app` because ``run_simulation`` passes an empty
run_config.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedai.checkpoint import Checkpoint, FinalAggregate, payload_fingerprint, write_model
from fedai.config import ExperimentConfig
from fedai.errors import ProtocolError
from fedai.logsetup import configure_app_logging
from fedai.models import build_model
from fedai.monitoring import apply_log_format, serve_metrics
from fedai.results import RoundRecord, default_run_dir, write_results
from fedai.schemes import coordinator_sum
from fedai.verdict import judge
from server.checkpointing import load_for
from server.rounds import FederatedRun, RoundCallback, RunOutcome

logger = logging.getLogger(__name__)

OUTPUT_DIR_KEY = "output.dir"  # run_config key (not part of the experiment config)
APP_DIR = Path(__file__).resolve().parent.parent  # the Flower App (project root / FAB)


def _app_defaults() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app's pyproject.toml (empty if unreadable)."""
    try:
        data = tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


_APP_DEFAULTS = _app_defaults()
CONFIG_FILE_KEY = "config-file"  # run_config key naming an experiment TOML
#: Flat keys whose fedai default is None; pyproject declares them as "" (TOML has no null).
_UNSET_BY_DEFAULT = frozenset(
    f"{section}.{key}"
    for section, values in ExperimentConfig().to_dict().items()
    for key, value in values.items()
    if value is None
)


def format_progress(record: RoundRecord, total: int) -> str:
    """One progress line: round, accuracy, loss, seconds (and failures, epsilon if any)."""
    acc = "  -   " if record.accuracy is None else f"{record.accuracy:.4f}"
    loss = "  -   " if record.loss is None else f"{record.loss:.4f}"
    line = (
        f"round {record.round:>3}/{total}  acc {acc}  loss {loss}  "
        f"{record.seconds:6.2f}s  clients {len(record.trained)}/{len(record.sampled)}"
    )
    eps = record.privacy.get("max_epsilon")
    if isinstance(eps, int | float):
        line += f"  eps(max client) {eps:.3f}"
    user = record.privacy.get("user_level")
    if isinstance(user, dict):
        line += f"  eps(user) {user['epsilon']:.3f}"
    if record.refused:
        line += f"  refused {len(record.refused)}"
    if record.status == "skipped":
        line += f"  skipped: {record.reason}"
    elif record.status != "ok":
        line += f"  FAILED: {record.reason}"
    return line


def run_federation(
    grid: Grid,
    cfg: ExperimentConfig,
    *,
    on_round: RoundCallback | None = None,
    key_dir: str | None = None,
    checkpoint_dir: Path | None = None,
    resume: Checkpoint | None = None,
) -> RunOutcome:
    """Run the configured experiment on ``grid`` and return its outcome.

    ``checkpoint_dir``: the run directory to checkpoint into after every round;
    ``resume``: a checkpoint (of this config) to continue from (:mod:`server.checkpointing`).
    """
    summer = coordinator_sum(cfg.secure_aggregation, key_dir=key_dir)
    with serve_metrics(cfg.monitoring, rounds_planned=cfg.experiment.rounds) as metrics:
        run = FederatedRun(
            cfg,
            grid,
            summer=summer,
            on_round=on_round,
            metrics=metrics,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
        return run.execute()


def save_outcome(outcome: RunOutcome, out_dir: Path) -> Path:
    """Write results.json, the plots, the final aggregate and, in the clear, the model.

    The final aggregate is saved as the coordinator holds it (``final-aggregate.npz``,
    encrypted under a secure scheme, with what decoding needs). Under a secure scheme the
    coordinator cannot decode it: a key holder does, with ``fedai model decrypt`` (``fedai
    simulate`` does, as the operator). In the clear the coordinator decodes it itself, by
    the same path (:func:`fedai.checkpoint.write_model`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if outcome.payload is not None:
        section = outcome.summary.config["secure_aggregation"]
        FinalAggregate(
            run_id=outcome.run_id,
            round=len(outcome.summary.rounds),
            scheme=str(section["scheme"]),
            secure_aggregation=dict(section),
            spec=outcome.spec.to_dict(),
            shapes=[tuple(v.shape) for v in build_model(outcome.spec).state_dict().values()],
            total_weight=float(outcome.total_weight),
            payload=list(outcome.payload),
            key_fingerprint=payload_fingerprint(outcome.payload),
        ).save(out_dir)
        if section["scheme"] == "none":
            write_model(out_dir)
    return write_results(out_dir, outcome.summary)


def build_server_app(
    cfg: ExperimentConfig,
    *,
    on_round: RoundCallback | None = None,
    sink: Callable[[RunOutcome], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: Checkpoint | None = None,
) -> ServerApp:
    """Return a ServerApp bound to ``cfg``; ``sink`` receives the outcome when it ends.

    ``checkpoint_dir`` and ``resume`` as in :func:`run_federation`.
    """
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome = run_federation(
            grid, cfg, on_round=on_round, checkpoint_dir=checkpoint_dir, resume=resume
        )
        if sink is not None:
            sink(outcome)

    return server_app


def config_from_run_config(
    run_config: dict[str, Any], *, explicit: dict[str, Any] | None = None
) -> tuple[ExperimentConfig, Path]:
    """Split Flower's run_config into the experiment config and the output directory.

    ``run_config`` is what Flower fused: pyproject's ``[tool.flwr.app.config]`` defaults
    overridden by the user's ``--run-config``; ``explicit`` is the user's part alone
    (``grid.run.override_config``). Without ``config-file`` the fused values are the
    config. With one, the file is the base and every explicit key overrides it, even one
    equal to its pyproject default; without ``explicit`` (a Grid that does not say) the
    keys that differ from pyproject's defaults are taken as the explicit ones. A ``""``
    for a key whose fedai default is unset (``privacy.noise_multiplier``, ...) means unset.

    Raises:
        ConfigError: an unknown key (named), a wrong type or value, an unreadable file.
    """
    flat = dict(run_config)
    out = flat.pop(OUTPUT_DIR_KEY, "")
    config_file = str(flat.get(CONFIG_FILE_KEY, ""))
    if config_file:
        if explicit is None:
            explicit = {k: v for k, v in flat.items() if _APP_DEFAULTS.get(k, v) != v}
        flat = {k: v for k, v in explicit.items() if k not in (OUTPUT_DIR_KEY, CONFIG_FILE_KEY)}
        path = Path(config_file)
        if not path.is_absolute() and not path.exists():
            # Under `flwr run` the ServerApp's working directory is not the app directory.
            path = APP_DIR / config_file
        flat[CONFIG_FILE_KEY] = str(path)
    else:
        flat.pop(CONFIG_FILE_KEY, None)
    flat = {k: v for k, v in flat.items() if not (v == "" and k in _UNSET_BY_DEFAULT)}
    cfg = ExperimentConfig.from_flat(flat)
    return cfg, Path(str(out)) if out else default_run_dir(cfg.experiment.name)


def explicit_run_config(grid: Grid) -> dict[str, Any] | None:
    """The run-config keys the user set (``flwr run --run-config``), or None if unknown."""
    try:
        return dict(grid.run.override_config)
    except (AttributeError, RuntimeError, TypeError):
        return None


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run``: config from run_config, results to ``runs/``."""
    # fedai's lines on stderr (flwr run --stream shows them); no root handler, so httpx's
    # per-request INFO lines stay off.
    configure_app_logging()
    cfg, out_dir = config_from_run_config(
        dict(context.run_config), explicit=explicit_run_config(grid)
    )
    apply_log_format(cfg.monitoring.log_format)  # [monitoring] log_format = "json"

    def _log(record: RoundRecord, total: int) -> None:
        logger.info("%s", format_progress(record, total))

    # The same command after a crash continues the run in out_dir (another config's
    # checkpoint there is refused, never overwritten).
    resume = load_for(out_dir, cfg)
    if resume is not None:
        logger.info("fedai: resuming run %s after round %d", resume.run_id, resume.round)
    outcome = run_federation(grid, cfg, on_round=_log, checkpoint_dir=out_dir, resume=resume)
    verdict = judge(
        outcome.summary,
        planned_rounds=cfg.experiment.rounds,
        num_clients=cfg.experiment.num_clients,
    )
    outcome.summary.outcome = verdict.to_dict()
    path = save_outcome(outcome, out_dir)
    logger.info("fedai: final %s; results in %s", outcome.summary.final, path.resolve())
    if verdict.failed:
        # Raising marks the run finished:failed in Flower (`flwr ls`), which is what
        # `fedai server` and scripts can see; `flwr run` itself exits 0 regardless.
        logger.error("fedai: run failed: %s", verdict.reason)
        raise ProtocolError(f"the run failed: {verdict.reason} (results: {path.resolve()})")
