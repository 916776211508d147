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

from fedai.aggregation import PlainCodec
from fedai.config import ExperimentConfig
from fedai.models import build_model, save_model, set_weights
from fedai.results import RoundRecord, default_run_dir, write_results
from fedai.schemes import coordinator_sum
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
) -> RunOutcome:
    """Run the configured experiment on ``grid`` and return its outcome."""
    summer = coordinator_sum(cfg.secure_aggregation, key_dir=key_dir)
    return FederatedRun(cfg, grid, summer=summer, on_round=on_round).execute()


def save_outcome(outcome: RunOutcome, out_dir: Path) -> Path:
    """Write results.json, the accuracy plot and, when the coordinator may see it, the model.

    Under a secure scheme the coordinator holds only the encrypted aggregate, so it writes
    no plaintext model; a key holder decrypts it (``fedai simulate`` does, as the operator).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if (
        outcome.payload is not None
        and outcome.summary.config["secure_aggregation"]["scheme"] == "none"
    ):
        model = build_model(outcome.spec)
        shapes = [tuple(v.shape) for v in model.state_dict().values()]
        section = outcome.summary.config["secure_aggregation"]
        codec = PlainCodec(bound=section["update_bound"], round_decimals=section["round_decimals"])
        set_weights(model, codec.decode(outcome.payload, outcome.total_weight, shapes))
        save_model(out_dir, model, outcome.spec)
    return write_results(out_dir, outcome.summary)


def build_server_app(
    cfg: ExperimentConfig,
    *,
    on_round: RoundCallback | None = None,
    sink: Callable[[RunOutcome], None] | None = None,
) -> ServerApp:
    """Return a ServerApp bound to ``cfg``; ``sink`` receives the outcome when it ends."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome = run_federation(grid, cfg, on_round=on_round)
        if sink is not None:
            sink(outcome)

    return server_app


def config_from_run_config(run_config: dict[str, Any]) -> tuple[ExperimentConfig, Path]:
    """Split Flower's run_config into the experiment config and the output directory."""
    flat = dict(run_config)
    out = flat.pop(OUTPUT_DIR_KEY, "")
    config_file = str(flat.get("config-file", ""))
    if config_file and not Path(config_file).is_absolute() and not Path(config_file).exists():
        # Under `flwr run` the ServerApp's working directory is not the app directory.
        flat["config-file"] = str(APP_DIR / config_file)
    if config_file:
        # The file's values are the base; keep only the run_config keys that differ from
        # pyproject's defaults so they do not silently override the file.
        flat = {
            k: v
            for k, v in flat.items()
            if k == "config-file" or k not in _APP_DEFAULTS or _APP_DEFAULTS[k] != v
        }
    cfg = ExperimentConfig.from_flat(flat)
    return cfg, Path(str(out)) if out else default_run_dir(cfg.experiment.name)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run``: config from run_config, results to ``runs/``."""
    logging.basicConfig(level=logging.INFO)
    cfg, out_dir = config_from_run_config(dict(context.run_config))

    def _log(record: RoundRecord, total: int) -> None:
        logger.info("%s", format_progress(record, total))

    outcome = run_federation(grid, cfg, on_round=_log)
    path = save_outcome(outcome, out_dir)
    logger.info("fedai: final %s; results in %s", outcome.summary.final, path.resolve())
