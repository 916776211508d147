"""Run records and the results directory: ``results.json``, ``model.pt``, plots.

``results.json`` holds ``config`` (the full experiment config), ``rounds`` (one record per
round: ``round``, ``accuracy``, ``loss``, ``seconds``, plus status, participation and
privacy figures) and ``final`` (``accuracy``, ``loss``, ``seconds``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedai.fileio import atomic_write

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class RoundRecord:
    """What happened in one round."""

    round: int
    accuracy: float | None
    loss: float | None
    seconds: float
    # "ok" | "failed" (aggregate discarded, previous model kept) | "skipped" (Poisson
    # client sampling drew nobody; nothing trained, previous model kept)
    status: str = "ok"
    reason: str = ""
    sampled: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    num_examples: float = 0.0
    privacy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass(slots=True, kw_only=True)
class RunSummary:
    """A whole run: config, per-round records and the final figures."""

    config: dict[str, Any]
    rounds: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0
    stop_reason: str = ""
    clients: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it was left out
    final_evaluation: dict[str, Any] = field(default_factory=dict)  # every client, at the end

    @property
    def final(self) -> dict[str, Any]:
        """Accuracy and loss of the last successful round, and total seconds."""
        ok = [r for r in self.rounds if r.status == "ok" and r.accuracy is not None]
        last = ok[-1] if ok else None
        return {
            "accuracy": last.accuracy if last else None,
            "loss": last.loss if last else None,
            "seconds": round(self.seconds, 3),
            "rounds_completed": len(ok),
            "rounds_failed": sum(r.status == "failed" for r in self.rounds),
            "rounds_skipped": sum(r.status == "skipped" for r in self.rounds),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the ``results.json`` document."""
        return {
            "config": self.config,
            "rounds": [r.to_dict() for r in self.rounds],
            "final": self.final,
            "stop_reason": self.stop_reason,
            "clients": self.clients,
            "excluded": self.excluded,
            **({"final_evaluation": self.final_evaluation} if self.final_evaluation else {}),
        }


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """Return ``runs/<UTC timestamp>-<name>`` (not created)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{name}"


def write_results(out_dir: Path, summary: RunSummary) -> Path:
    """Write ``results.json`` (atomically) and ``accuracy.png``; return the JSON path."""
    path = out_dir / "results.json"
    atomic_write(path, json.dumps(summary.to_dict(), indent=2) + "\n")
    plot_accuracy(out_dir / "accuracy.png", summary)
    if any(r.privacy.get("max_epsilon") for r in summary.rounds):
        plot_accuracy_vs_epsilon(out_dir / "accuracy_vs_epsilon.png", summary)
    return path


def plot_accuracy(path: Path, summary: RunSummary) -> None:
    """Plot federated test accuracy per round to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round for r in summary.rounds if r.accuracy is not None]
    ys = [float(r.accuracy) for r in summary.rounds if r.accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("federated test accuracy")
    ax.set_title(str(summary.config.get("experiment", {}).get("name", "")))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy_vs_epsilon(path: Path, summary: RunSummary) -> None:
    """Plot federated test accuracy against the privacy spent so far.

    Sample-level: the max client epsilon; user-level epsilon too when there is one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary.rounds if r.accuracy is not None and r.privacy]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [r.privacy.get("max_epsilon", 0.0) for r in rows],
        [float(r.accuracy or 0.0) for r in rows],
        marker="o",
        label="sample-level (max client epsilon)",
    )
    user = [
        (float(r.privacy["user_level"]["epsilon"]), float(r.accuracy or 0.0))
        for r in rows
        if isinstance(r.privacy.get("user_level"), dict)
    ]
    if user:
        ax.plot([u[0] for u in user], [u[1] for u in user], marker="s", label="user-level epsilon")
    ax.set_xlabel("epsilon spent")
    ax.set_ylabel("federated test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = [
    "RoundRecord",
    "RunSummary",
    "default_run_dir",
    "plot_accuracy",
    "plot_accuracy_vs_epsilon",
    "write_results",
]
