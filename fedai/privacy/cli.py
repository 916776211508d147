"""``fedai privacy plan``, ``fedai privacy ledger`` and ``fedai audit``.

``plan`` states the epsilon a run will spend before anything runs (sample level per
client from a config, user level from ``--population/--per-round/--sigma/--rounds``), or
calibrates sigma for ``--target-epsilon``. ``ledger`` prints the privacy statement of
stored client ledger files. ``audit`` trains the config's model centrally on the config's
data and runs the membership-inference attacks of :mod:`fedai.privacy.audit`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fedai.commands import add_config_arguments
from fedai.config import ExperimentConfig
from fedai.errors import ConfigError

logger = logging.getLogger(__name__)


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError as err:
        raise ConfigError(f"--client-sizes must be comma-separated integers; got {text!r}") from err
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--client-sizes must list sizes >= 1; got {text!r}")
    return sizes


def _quiet_dp_accounting() -> None:
    # Entry point: dp-accounting's absl logger warns about excluded fractional orders.
    logging.getLogger("absl").setLevel(logging.ERROR)


def register(sub: Any) -> None:
    """Add the ``privacy`` (``plan``, ``ledger``) and ``audit`` subcommands."""
    privacy: argparse.ArgumentParser = sub.add_parser(
        "privacy",
        help="plan and report differential privacy (epsilon) of a run",
        description="Differential-privacy planning and reporting.",
    )
    psub = privacy.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND")

    def _help(_args: argparse.Namespace) -> int:
        privacy.print_help()
        return 2

    privacy.set_defaults(func=_help)

    plan = psub.add_parser(
        "plan",
        help="epsilon a config will spend, or sigma for a target epsilon",
        description="Compute, before anything runs, the sample-level epsilon of every "
        "client (DP-SGD, from --config and each client's data size) and the user-level "
        "epsilon of the aggregate (DP-FedAvg, q = per-round / population) both against "
        "outsiders (amplified by the client sampling) and against a party that knows who "
        "took part (no amplification), or calibrate sigma for --target-epsilon. "
        "Sample-level plans assume every client trains in every round (an upper bound).",
        epilog="examples:\n"
        "  fedai privacy plan --population 100 --per-round 10 --sigma 1.0 --rounds 100 "
        "--delta 1e-5\n"
        "  fedai privacy plan --population 100 --per-round 10 --rounds 100 "
        "--target-epsilon 4\n"
        "  fedai privacy plan --config experiments/dp_digits.toml --json\n"
        "  fedai privacy plan --config experiments/dp_digits.toml --client-sizes 55,300,120",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(
        plan, config_help="experiment TOML with a [privacy] section (sample-level plan per client)"
    )
    plan.add_argument(
        "--client-sizes",
        metavar="N1,N2,...",
        help="training-set size of each client (default: partition the config's data set)",
    )
    plan.add_argument("--population", type=int, help="user level: number of clients")
    plan.add_argument("--per-round", type=int, help="user level: clients sampled per round")
    plan.add_argument("--sigma", type=float, help="user level: noise multiplier of the sum")
    plan.add_argument("--target-epsilon", type=float, help="user level: calibrate sigma")
    plan.add_argument("--rounds", type=int, help="user level: rounds (default: config)")
    plan.add_argument(
        "--client-sampling",
        choices=("poisson", "fixed"),
        help="user level: how clients are sampled (default: config's "
        "privacy.client_sampling, else poisson)",
    )
    plan.add_argument(
        "--delta",
        type=float,
        help="user level: delta (default: config or min(1e-5, 1/(10*population)))",
    )
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=run_plan)

    ledger = psub.add_parser(
        "ledger",
        help="privacy statement of stored client ledger files",
        description="Read client ledger files (written atomically by client agents) and "
        "print each client's cumulative epsilon and history.",
    )
    ledger.add_argument("files", nargs="+", metavar="LEDGER.json")
    ledger.add_argument("--json", action="store_true", help="print JSON")
    ledger.set_defaults(func=run_ledger)

    _register_audit(sub)


# ---------------------------------------------------------------------- plan
def build_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Return the plan requested by parsed ``privacy plan`` arguments."""
    from fedai.privacy.accounting import resolve_user_delta
    from fedai.privacy.plan import plan_config, plan_user_level

    user_flags = args.population is not None or args.per_round is not None
    sample_flags = args.config is not None or args.client_sizes is not None or args.overrides
    if not user_flags and not sample_flags:
        raise ConfigError(
            "privacy plan needs --config/--client-sizes (sample level) or "
            "--population and --per-round (user level)"
        )
    out: dict[str, Any] = {"sample_level": None, "user_level": None}
    cfg = ExperimentConfig.load(args.config, args.overrides)
    if sample_flags:
        sizes = _parse_sizes(args.client_sizes) if args.client_sizes else None
        out = plan_config(cfg, client_sizes=sizes)
    if user_flags:
        if args.population is None or args.per_round is None:
            raise ConfigError("user-level plan needs both --population and --per-round")
        sigma, target = args.sigma, args.target_epsilon
        if sigma is None and target is None:
            sigma = cfg.privacy.user_noise_multiplier
        out["user_level"] = plan_user_level(
            population=args.population,
            clients_per_round=args.per_round,
            rounds=args.rounds if args.rounds is not None else cfg.experiment.rounds,
            delta=resolve_user_delta(
                args.delta if args.delta is not None else cfg.privacy.delta,
                population=args.population,
            ),
            noise_multiplier=sigma,
            target_epsilon=target,
            clipping_norm=cfg.privacy.user_clipping_norm,
            client_sampling=args.client_sampling or cfg.privacy.user_client_sampling or "poisson",
        )
    return out


def _format_plan(plan: dict[str, Any]) -> str:
    lines = []
    sample = plan.get("sample_level")
    if sample:
        lines.append(
            f"sample level (DP-SGD per client, {sample['rounds_assumed']} rounds "
            f"assumed, {sample['clients'][0]['accountant']}):"
        )
        lines.append(
            f"  {'client':>6} {'n':>6} {'q':>8} {'steps/rd':>8} {'sigma':>7} "
            f"{'delta':>8} {'epsilon':>8}"
        )
        for c in sample["clients"]:
            flag = "" if c["within_budget"] in (None, True) else "  OVER BUDGET"
            lines.append(
                f"  {c['client_id']:>6} {c['num_samples']:>6} {c['sample_rate']:>8.4f} "
                f"{c['steps_per_round']:>8} {c['noise_multiplier']:>7.3f} "
                f"{c['delta']:>8.1e} {c['epsilon']:>8.3f}{flag}"
            )
        lines.append(
            f"  max epsilon {sample['max_epsilon']:.3f}"
            + (
                f" (budget {sample['budget_epsilon']:g})"
                if sample["budget_epsilon"] is not None
                else ""
            )
        )
    elif plan.get("mode") == "none":
        lines.append("sample level: privacy.mode is 'none' (no DP-SGD)")
    user = plan.get("user_level")
    if user:
        from fedai.privacy.statement import user_level_lines

        lines.extend(user_level_lines(user))
        if user.get("calibrated_for") is not None:
            lines.append(
                f"  sigma {user['noise_multiplier']:.4f} calibrated for outsider epsilon "
                f"{user['calibrated_for']:g}"
            )
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    """Execute ``fedai privacy plan``."""
    _quiet_dp_accounting()
    plan = build_plan(args)
    print(json.dumps(plan, indent=2, sort_keys=True) if args.json else _format_plan(plan))
    return 0


# ---------------------------------------------------------------------- ledger
def run_ledger(args: argparse.Namespace) -> int:
    """Execute ``fedai privacy ledger``."""
    from fedai.privacy.ledger import PrivacyLedger
    from fedai.privacy.statement import privacy_statement

    ledgers = [PrivacyLedger.load(f) for f in args.files]
    statement = privacy_statement(ledgers=ledgers)
    # Rounds whose result a crashed coordinator lost: spent (and in epsilon), never used.
    lost = {
        ledger.client_id: [{"run_id": e.run_id, "round": e.round} for e in ledger.lost]
        for ledger in ledgers
        if ledger.lost
    }
    if args.json:
        print(json.dumps({**statement, "lost_rounds": lost}, indent=2, sort_keys=True))
    else:
        for ledger in ledgers:
            eps = ", ".join(
                f"{e.epsilon:.3f}" + (" lost" if e.lost else "") for e in ledger.entries
            )
            state = " (exhausted)" if ledger.exhausted else ""
            print(
                f"client {ledger.client_id}: {len(ledger)} rounds, epsilon after each: "
                f"[{eps}] at delta {ledger.delta:g} ({ledger.accountant}){state}"
            )
            if ledger.lost:
                rounds = ", ".join(f"run {e.run_id} round {e.round}" for e in ledger.lost)
                print(
                    f"  lost: {rounds} (trained and charged, but the coordinator crashed "
                    "before completing the round; the spend counts in epsilon)"
                )
        print(statement["text"])
    return 0


# ---------------------------------------------------------------------- audit
def _register_audit(sub: Any) -> None:
    """Add the ``audit`` subcommand."""
    audit: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="membership-inference audit (loss threshold, offline LiRA) with intervals",
        description="Train the config's model centrally (not federated) on the config's "
        "pooled data with its [train] and [privacy] settings for audit.epochs epochs, then "
        "attack it: loss threshold (Yeom et al. 2018) and offline LiRA with "
        "audit.shadow_models shadow models (Carlini et al. 2022). Reports AUC and TPR at 1% "
        "and 0.1% FPR on members vs non-members, each with an interval: AUC +- z*SE with "
        "DeLong's variance (DeLong et al. 1988), TPR by a stratified percentile bootstrap "
        "(members and non-members resampled separately; seeded by experiment.seed). "
        "--compare also trains without privacy on the same split and states, per attack, "
        "whether AUC_nonDP - AUC_DP > h_diff, the half-width of the difference's interval "
        "(DeLong variance for two AUCs on the same examples), and whether the two AUC "
        "intervals are disjoint (the stricter AUC_nonDP - AUC_DP > h_nonDP + h_DP). "
        "Intervals cover the sampling of the audited examples, not training randomness; DP "
        "noise and Poisson batches come from OS entropy, so DP runs differ run to run.",
        epilog="examples:\n"
        "  fedai audit --config experiments/audit_overfit.toml --compare --nonmembers 1000\n"
        "  fedai audit --config experiments/dp_digits.toml --compare --set audit.epochs=100 "
        "--json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(audit, config_help="experiment TOML")
    audit.add_argument(
        "--compare",
        action="store_true",
        help="also audit the same training without privacy and compare (needs [privacy])",
    )
    audit.add_argument(
        "--nonmembers",
        type=int,
        metavar="N",
        help="held-out examples to score (default: as many as members); more narrow the "
        "intervals and resolve FPRs down to 1/N",
    )
    audit.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the TPR intervals (default: 1000)",
    )
    audit.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="coverage of every interval (default: 0.95)",
    )
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    audit.set_defaults(func=run_audit)


def run_audit_config(
    cfg: ExperimentConfig,
    *,
    compare: bool,
    confidence: float = 0.95,
    bootstrap_resamples: int = 1000,
    num_nonmembers: int | None = None,
) -> dict[str, Any]:
    """Audit ``cfg`` (central training on its pooled data); return the JSON report.

    Args:
        cfg: the experiment; ``[audit]`` sizes the audit, ``[privacy]`` the DP side.
        compare: also audit without privacy and add ``"compare"``, per attack the
            :class:`~fedai.privacy.audit.AttackComparison` and its rule.
        confidence: coverage of every interval.
        bootstrap_resamples: bootstrap resamples for the TPR intervals.
        num_nonmembers: held-out examples scored (default: as many as members).

    Raises:
        ConfigError: ``compare`` with ``privacy.mode = "none"``.
        InvalidPrivacyParameterError: a confidence outside (0, 1) or fewer than 2
            resamples.
    """
    import numpy as np

    from fedai.data import load_federated
    from fedai.models import ModelSpec
    from fedai.privacy.accounting import epsilon_from_history, resolve_delta
    from fedai.privacy.audit import (
        COMPARISON_RULE,
        AuditReport,
        IntervalSettings,
        audit_training,
        compare_reports,
        make_train_fn,
    )
    from fedai.privacy.dpsgd import planned_event
    from fedai.privacy.plan import client_noise_multiplier
    from fedai.progress import Steps

    if compare and cfg.privacy.mode == "none":
        raise ConfigError(
            "audit --compare needs privacy.mode 'local' or 'local+user' (a DP side to "
            "compare with); got 'none'"
        )
    intervals = IntervalSettings(confidence=confidence, bootstrap_resamples=bootstrap_resamples)
    clients = load_federated(cfg)
    x = np.concatenate([a for c in clients for a in (c.x_train, c.x_test)])
    y = np.concatenate([a for c in clients for a in (c.y_train, c.y_test)])
    audit = cfg.audit
    num_members = int(audit.member_fraction * len(y) / 2)
    num_non = num_members if num_nonmembers is None else num_nonmembers
    attacks = tuple(a.strip() for a in audit.attacks.split(",") if a.strip())
    spec = ModelSpec(
        name=cfg.model.name,
        input_shape=clients[0].input_shape,
        num_classes=clients[0].num_classes,
        hidden=cfg.model.hidden,
    )
    settings: list[tuple[str, float | None]] = []
    report: dict[str, Any] = {
        "experiment": cfg.experiment.name,
        "dataset": cfg.data.dataset,
        "model": spec.to_dict(),
        "num_members": num_members,
        "num_nonmembers": num_non,
        "pool_size": len(y),
        "epochs": audit.epochs,
        "batch_size": cfg.train.batch_size,
        "attacks": list(attacks),
        "num_shadow_models": audit.shadow_models if "lira" in attacks else 0,
        "intervals": {
            "confidence": intervals.confidence,
            "auc": "AUC +- z*SE, DeLong variance (DeLong et al. 1988), clipped to [0, 1]",
            "tpr": "stratified percentile bootstrap (Efron & Tibshirani 1993)",
            "bootstrap_resamples": intervals.bootstrap_resamples,
            "seed": cfg.experiment.seed,
            "fpr_resolution": 1.0 / num_non if num_non > 0 else None,
        },
    }
    if cfg.privacy.mode != "none":
        delta = resolve_delta(cfg.privacy.delta, num_samples=num_members)
        sigma = client_noise_multiplier(
            cfg.privacy,
            num_samples=num_members,
            batch_size=cfg.train.batch_size,
            local_epochs=audit.epochs,
            rounds=1,
            delta=delta,
        )
        event = planned_event(
            noise_multiplier=sigma,
            num_samples=num_members,
            batch_size=cfg.train.batch_size,
            epochs=audit.epochs,
        )
        report["dp"] = {
            "noise_multiplier": sigma,
            "delta": delta,
            "max_grad_norm": cfg.privacy.max_grad_norm,
            "sample_rate": event.sample_rate,
            "steps": event.steps,
            "epsilon": epsilon_from_history(
                [event], delta=delta, accountant=cfg.privacy.accountant
            ),
            "accountant": cfg.privacy.accountant,
        }
        settings.append(("dp", sigma))
    if compare or cfg.privacy.mode == "none":
        settings.insert(0, ("non_private", None))
    results: dict[str, AuditReport] = {}
    per_setting = (audit.shadow_models if "lira" in attacks else 0) + 2
    steps = Steps(total=per_setting * len(settings))
    for name, sigma_or_none in settings:
        label = "non-private" if name == "non_private" else "DP"

        def on_step(_done: int, _total: int, what: str, label: str = label) -> None:
            steps.step(f"{label}: {what}")

        fn = make_train_fn(
            spec=spec,
            epochs=audit.epochs,
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr,
            momentum=cfg.train.momentum,
            noise_multiplier=sigma_or_none,
            max_grad_norm=cfg.privacy.max_grad_norm,
            grad_sample_mode=cfg.privacy.grad_sample_mode,
        )
        # The same seed on both sides: same split, shadow subsets and bootstrap resamples.
        results[name] = audit_training(
            x=x,
            y=y,
            train_fn=fn,
            num_members=num_members,
            num_shadow_models=audit.shadow_models,
            rng=np.random.default_rng(cfg.experiment.seed),
            attacks=attacks,
            intervals=intervals,
            num_nonmembers=num_non,
            on_step=on_step,
        )
        report.setdefault(name, {}).update(results[name].to_dict())
    if "non_private" in results and "dp" in results:
        comparisons = compare_reports(results["non_private"], results["dp"])
        report["compare"] = {
            "rule": COMPARISON_RULE,
            "confidence": intervals.confidence,
            "attacks": {name: c.to_dict() for name, c in comparisons.items()},
            "dp_weaker": {name: c.dp_weaker for name, c in comparisons.items()},
            "intervals_disjoint": {name: c.intervals_disjoint for name, c in comparisons.items()},
        }
    return report


def _interval(values: list[float] | tuple[float, float]) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def format_audit(report: dict[str, Any]) -> str:
    """Return the human-readable form of a :func:`run_audit_config` report."""
    iv = report["intervals"]
    pct = f"{100 * iv['confidence']:g}%"
    res = iv["fpr_resolution"]
    lines = [
        f"audit of {report['experiment']!r}: {report['num_members']} members vs "
        f"{report['num_nonmembers']} non-members from {report['pool_size']} "
        f"{report['dataset']} examples; {report['model']['name']} (hidden "
        f"{report['model']['hidden']}), {report['epochs']} epochs, batch "
        f"{report['batch_size']}"
        + (
            f", {report['num_shadow_models']} LiRA shadow models"
            if "lira" in report["attacks"]
            else ""
        ),
        f"{pct} intervals: AUC +- z*SE (DeLong); TPR stratified bootstrap, "
        f"{iv['bootstrap_resamples']} resamples (seed {iv['seed']}); FPR resolution "
        f"1/{report['num_nonmembers']} = {res:.4f}"
        + (" (TPR at an FPR below it = TPR at 0 false positives)" if res > 0.001 else ""),
    ]
    for name in ("non_private", "dp"):
        r = report.get(name)
        if not r or "train_accuracy" not in r:
            continue
        head = (
            "non-private"
            if name == "non_private"
            else (
                f"DP (sigma {r['noise_multiplier']:.3f}, C {r['max_grad_norm']:g}, epsilon "
                f"{r['epsilon']:.2f} at delta {r['delta']:.3g}, {r['accountant']})"
            )
        )
        lines.append(
            f"{head}: train acc {r['train_accuracy']:.3f}, held-out acc {r['test_accuracy']:.3f}"
        )
        for k in ("loss", "lira"):
            a = r.get(k)
            if a:
                lines.append(
                    f"  {k:<4} AUC {a['auc']:.3f} {_interval(a['auc_ci'])}  "
                    f"TPR@1%FPR {a['tpr_at_1pct_fpr']:.3f} {_interval(a['tpr_at_1pct_fpr_ci'])}  "
                    f"TPR@0.1%FPR {a['tpr_at_01pct_fpr']:.3f} "
                    f"{_interval(a['tpr_at_01pct_fpr_ci'])}"
                )
    comparison = report.get("compare")
    if comparison:
        lines.append(f"compare: {comparison['rule']}")
        lines.extend(f"  {c['statement']}" for c in comparison["attacks"].values())
    return "\n".join(lines)


def run_audit(args: argparse.Namespace) -> int:
    """Execute ``fedai audit``."""
    import torch

    from fedai.fileio import atomic_write

    # Entry point: one intra-op thread, as the in-process simulator uses. These models are
    # small; on a busy 2-core machine 2 threads made a DP-SGD training run ~8x slower.
    torch.set_num_threads(1)
    cfg = ExperimentConfig.load(args.config, args.overrides)
    if args.out:  # before minutes of training, not after them
        from fedai.preflight import check_output_file

        check_output_file(Path(args.out))
    if cfg.privacy.mode != "none" and cfg.privacy.secure_mode:
        logger.warning(
            "privacy.secure_mode has no effect in fedai audit: its DP-SGD draws noise from "
            "an OS-seeded torch generator (secure_mode applies to fedai simulate's clients)"
        )
    report = run_audit_config(
        cfg,
        compare=args.compare,
        confidence=args.confidence,
        bootstrap_resamples=args.bootstrap,
        num_nonmembers=args.nonmembers,
    )
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.out:
        atomic_write(Path(args.out), text + "\n")
    print(text if args.json else format_audit(report))
    sys.stdout.flush()
    return 0


__all__ = [
    "build_plan",
    "format_audit",
    "register",
    "run_audit",
    "run_audit_config",
    "run_ledger",
    "run_plan",
]
