"""Run records and the results directory: ``results.json``, ``rounds.csv``, model, plots.

``results.json`` holds

- ``config``: the full experiment config;
- ``rounds``: one record per round (``round``, ``accuracy``, ``loss``, ``seconds``, status,
  participation and privacy figures);
- ``final``: accuracy and loss of the last successful round, total seconds, round counts
  and the final privacy spend (``epsilon``/``delta`` sample-level, the max over clients;
  ``user_epsilon``/``user_delta`` user-level; ``None`` where there is no such DP);
- ``provenance``: what produced the file (versions, git commit, command line, start and
  end time, host), see :func:`collect_provenance`.

``rounds.csv`` beside it has one row per round (:data:`ROUND_COLUMNS`) with the same values.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedai.fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

PROVENANCE_PACKAGES = ("torch", "flwr", "opacus", "tenseal", "phe", "numpy")
GIT_TIMEOUT = 5.0  # seconds for each git call; slower counts as "not available"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding fedai/
ROUND_COLUMNS = (
    "round",
    "status",
    "accuracy",
    "loss",
    "seconds",
    "clients_sampled",
    "clients_trained",
    "num_examples",
    "max_epsilon",
    "user_epsilon",
    "reason",
)
_SECRET_OPTIONS = ("--token",)  # values never written to results.json
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would evaluate these


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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

    @property
    def user_epsilon(self) -> float | None:
        """The user-level epsilon after this round, or None without user-level DP."""
        user = self.privacy.get("user_level")
        return float(user["epsilon"]) if isinstance(user, dict) else None


@dataclass(slots=True, kw_only=True)
class RunSummary:
    """A whole run: config, per-round records and the final figures.

    ``started_at`` is when the round loop started (UTC ISO 8601); it defaults to when the
    summary was made.
    """

    config: dict[str, Any]
    rounds: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0
    stop_reason: str = ""
    clients: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it was left out
    final_evaluation: dict[str, Any] = field(default_factory=dict)  # every client, at the end
    started_at: str = field(default_factory=utc_now)
    # status ("ok"/"failed"), exit_code and the one-line reason (fedai.verdict.judge)
    outcome: dict[str, Any] = field(default_factory=dict)
    # which feature statistics standardised the data (server.statistics.Statistics.to_dict)
    statistics: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        """Accuracy and loss of the last successful round, total seconds, final epsilon.

        The privacy figures are those of :meth:`final_privacy`.
        """
        ok = [r for r in self.rounds if r.status == "ok" and r.accuracy is not None]
        last = ok[-1] if ok else None
        return {
            "accuracy": last.accuracy if last else None,
            "loss": last.loss if last else None,
            "seconds": round(self.seconds, 3),
            "rounds_completed": len(ok),
            "rounds_failed": sum(r.status == "failed" for r in self.rounds),
            "rounds_skipped": sum(r.status == "skipped" for r in self.rounds),
            **self.final_privacy(),
        }

    def final_privacy(self) -> dict[str, float | None]:
        """The privacy spent by the end of the run, as the coordinator's ledger last saw it.

        Taken from the last round that reported privacy figures, whatever its status:
        clients spend privacy when they train, also in a round whose aggregate was then
        discarded (failed) or in which they refused to go on, so the spend of failed rounds
        counts and the last *successful* round would understate it. The figures are what
        clients reported; a client whose reply never arrived may have spent more.

        Returns:
            ``epsilon``: the largest cumulative sample-level (DP-SGD) epsilon any client
            reported; ``delta``: the largest of those clients' deltas (every client is
            (``epsilon``, ``delta``)-DP); ``user_epsilon``/``user_delta``: the user-level
            figures against outsiders (``privacy.mode = "local+user"``). Each is None when
            the run has no such DP (or no round reported it).
        """
        view = next((r.privacy for r in reversed(self.rounds) if "max_epsilon" in r.privacy), {})
        reports = [c for c in view.get("clients", {}).values() if isinstance(c, dict)]
        deltas = [float(c["delta"]) for c in reports if c.get("delta") is not None]
        user = view.get("user_level")
        user = user if isinstance(user, dict) else {}
        return {
            "epsilon": float(view["max_epsilon"]) if "max_epsilon" in view else None,
            "delta": max(deltas) if deltas else None,
            "user_epsilon": float(user["epsilon"]) if "epsilon" in user else None,
            "user_delta": float(user["delta"]) if user.get("delta") is not None else None,
        }

    def to_dict(self, *, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the ``results.json`` document (with ``provenance`` when given)."""
        return {
            "config": self.config,
            "rounds": [r.to_dict() for r in self.rounds],
            "final": self.final,
            "stop_reason": self.stop_reason,
            **({"outcome": self.outcome} if self.outcome else {}),
            "clients": self.clients,
            "excluded": self.excluded,
            **({"statistics": self.statistics} if self.statistics else {}),
            **({"final_evaluation": self.final_evaluation} if self.final_evaluation else {}),
            **({"provenance": provenance} if provenance is not None else {}),
        }


# ---------------------------------------------------------------------- provenance
def package_versions() -> dict[str, str | None]:
    """Installed versions of fedai and the libraries a result depends on (None: absent).

    Read from the installed distributions' metadata: nothing is imported.
    """
    out: dict[str, str | None] = {}
    for name in ("fedai", *PROVENANCE_PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(repo: Path, *args: str) -> str | None:
    """Run one read-only git command in ``repo``; its stdout, or None if it failed."""
    exe = shutil.which("git")
    if exe is None:
        return None
    # Never follow a GIT_DIR/GIT_WORK_TREE of the caller's shell to another repository,
    # and never take the index lock (other processes may be committing).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"
    try:
        done = subprocess.run(
            [exe, "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("git %s in %s failed: %s", " ".join(args), repo, err)
        return None
    if done.returncode != 0:
        logger.debug("git %s in %s: %s", " ".join(args), repo, done.stderr.strip()[:200])
        return None
    return done.stdout


def git_revision(repo: Path = PACKAGE_ROOT) -> dict[str, Any] | None:
    """The commit of the git checkout fedai runs from, and whether tracked files differ.

    Only when ``repo`` (by default the directory holding the ``fedai`` package) is itself
    the top of a git work tree: an installed copy inside some other repository (a venv
    within a project, say) reports None rather than that repository's commit.

    Returns:
        ``{"commit": sha, "dirty": bool}`` (``dirty`` None if ``git status`` failed), or
        None when ``repo`` is not a checkout, git is missing or too slow.
    """
    out = _git(repo, "rev-parse", "--show-toplevel", "HEAD")
    lines = out.split() if out else []
    if len(lines) != 2:
        return None
    top, commit = lines
    try:
        if Path(top).resolve() != repo.resolve():
            return None
    except OSError:
        return None
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


def _redact(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret options (``--token``) replaced by ``***``."""
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg in _SECRET_OPTIONS:
            out.append(arg)
            hide = True
        elif arg.startswith(tuple(f"{o}=" for o in _SECRET_OPTIONS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def collect_provenance(
    *, started_at: str | None, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """What produced a result, for ``results.json`` ``provenance``.

    Args:
        started_at: When the run started (UTC ISO 8601), or None if unknown.
        argv: The command line; ``sys.argv`` by default (secret option values are hidden).

    Returns:
        ``versions`` (``fedai``, ``python`` and :data:`PROVENANCE_PACKAGES`, None where not
        installed), ``git`` (:func:`git_revision`, None outside a checkout),
        ``command_line`` (list of str), ``started_at`` and ``ended_at`` (UTC ISO 8601;
        ``ended_at`` is when this was collected, i.e. when ``results.json`` was written),
        ``cpu_count`` (``os.cpu_count()``, None if unknown) and ``platform``.
    """
    versions = package_versions()
    return {
        "versions": {"fedai": versions.pop("fedai"), "python": platform.python_version()}
        | versions,
        "git": git_revision(),
        "command_line": _redact(sys.argv if argv is None else argv),
        "started_at": started_at,
        "ended_at": utc_now(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------- files
def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """Return ``runs/<UTC timestamp>-<name>`` (not created)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{name}"


def write_results(out_dir: Path, summary: RunSummary, *, argv: Sequence[str] | None = None) -> Path:
    """Write ``rounds.csv``, ``results.json`` (atomically) and the plots; return the JSON path.

    ``accuracy_vs_epsilon.png`` is written for a DP run and removed otherwise, so a
    directory written again never keeps a stale one.

    Args:
        out_dir: The results directory (created if missing).
        summary: The run.
        argv: The command line for ``provenance`` (``sys.argv`` by default).
    """
    write_rounds_csv(out_dir / "rounds.csv", summary)
    provenance = collect_provenance(started_at=summary.started_at, argv=argv)
    path = out_dir / "results.json"
    atomic_write(path, json.dumps(summary.to_dict(provenance=provenance), indent=2) + "\n")
    plot_accuracy(out_dir / "accuracy.png", summary)
    vs_epsilon = out_dir / "accuracy_vs_epsilon.png"
    if any(r.privacy.get("max_epsilon") for r in summary.rounds):
        plot_accuracy_vs_epsilon(vs_epsilon, summary)
    else:
        vs_epsilon.unlink(missing_ok=True)
    return path


def _cell(value: Any) -> str:
    """A CSV cell: empty for None, ``repr`` for floats (the digits results.json has)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def rounds_table(summary: RunSummary) -> list[dict[str, str]]:
    """One row per round, keyed by :data:`ROUND_COLUMNS`, as written to ``rounds.csv``.

    Values are those of ``results.json``: empty where it has null (``accuracy``/``loss``
    of a failed round, epsilons without DP). A ``reason`` starting with a character a
    spreadsheet would evaluate (``= + - @``) gets a leading ``'``.
    """
    rows: list[dict[str, str]] = []
    for r in summary.rounds:
        reason = r.reason if not r.reason.startswith(_FORMULA_START) else "'" + r.reason
        values: dict[str, Any] = {
            "round": r.round,
            "status": r.status,
            "accuracy": r.accuracy,
            "loss": r.loss,
            "seconds": r.seconds,
            "clients_sampled": len(r.sampled),
            "clients_trained": len(r.trained),
            "num_examples": r.num_examples,
            "max_epsilon": r.privacy.get("max_epsilon"),
            "user_epsilon": r.user_epsilon,
            "reason": reason,
        }
        rows.append({k: _cell(values[k]) for k in ROUND_COLUMNS})
    return rows


def write_rounds_csv(path: Path, summary: RunSummary) -> None:
    """Write :func:`rounds_table` as CSV (header row, then one row per round), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROUND_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rounds_table(summary))
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------- plots
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported here: matplotlib is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark_unsuccessful(ax: Axes, summary: RunSummary) -> None:
    """Crosses on the round axis for failed and skipped rounds."""
    for status, colour in (("failed", "tab:red"), ("skipped", "tab:gray")):
        xs = [r.round for r in summary.rounds if r.status == status]
        if xs:
            ax.scatter(
                xs,
                [0.0] * len(xs),
                marker="x",
                color=colour,
                clip_on=False,
                zorder=3,
                label=f"{status} round",
            )


def plot_accuracy(path: Path, summary: RunSummary) -> None:
    """Plot federated test accuracy and loss per round to a PNG.

    Accuracy on the left axis (0 to 1), loss on the right, integer round ticks, the final
    values annotated, failed and skipped rounds marked. A run without a successful round
    draws "no successful round" and the first reason instead of an empty frame.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    ok = [r for r in summary.rounds if r.status == "ok" and r.accuracy is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_title(str(summary.config.get("experiment", {}).get("name", "")))
    ax.set_xlabel("round")
    ax.set_ylabel("federated test accuracy")
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last_round = max((r.round for r in summary.rounds), default=1)
    ax.set_xlim(0.5, last_round + 0.5)
    ax.grid(alpha=0.3)
    _mark_unsuccessful(ax, summary)
    if not ok:
        why = summary.stop_reason or next((r.reason for r in summary.rounds if r.reason), "")
        n = len(summary.rounds)
        text = f"no successful round ({n} round{'' if n == 1 else 's'} run)"
        if why:
            text += "\n" + textwrap.fill(textwrap.shorten(why, 200), 60)
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")
        if summary.rounds:
            ax.legend(loc="upper right", fontsize="small")
    else:
        xs = [r.round for r in ok]
        (acc_line,) = ax.plot(
            xs, [float(r.accuracy or 0.0) for r in ok], marker="o", label="accuracy"
        )
        handles: list[Any] = [acc_line]
        last = ok[-1]
        ax.annotate(
            f"{last.accuracy:.4f}",
            xy=(last.round, float(last.accuracy or 0.0)),
            xytext=(0, -14),
            textcoords="offset points",
            ha="right",
            color=acc_line.get_color(),
        )
        losses = [(r.round, float(r.loss)) for r in ok if r.loss is not None]
        if losses:
            ax2 = ax.twinx()
            (loss_line,) = ax2.plot(
                [x for x, _ in losses],
                [y for _, y in losses],
                marker=".",
                linestyle="--",
                color="tab:orange",
                label="loss",
            )
            ax2.set_ylabel("federated test loss")
            ax2.set_ylim(bottom=0)
            ax2.annotate(
                f"{losses[-1][1]:.4f}",
                xy=losses[-1],
                xytext=(0, 8),
                textcoords="offset points",
                ha="right",
                color="tab:orange",
            )
            handles.append(loss_line)
        handles += [h for h in ax.get_legend_handles_labels()[0] if h is not acc_line]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.15),
            ncols=len(handles),
            frameon=False,
            fontsize="small",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy_vs_epsilon(path: Path, summary: RunSummary) -> None:
    """Plot federated test accuracy against the privacy spent so far.

    Sample-level: the max client epsilon; user-level epsilon too when there is one.
    """
    plt = _pyplot()
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
    "PROVENANCE_PACKAGES",
    "ROUND_COLUMNS",
    "RoundRecord",
    "RunSummary",
    "collect_provenance",
    "default_run_dir",
    "git_revision",
    "package_versions",
    "plot_accuracy",
    "plot_accuracy_vs_epsilon",
    "rounds_table",
    "utc_now",
    "write_results",
    "write_rounds_csv",
]
