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

    audit = sub.add_parser(
        "audit",
        help="membership-inference audit (loss threshold, offline LiRA)",
        description="Train the config's model centrally (not federated) on the config's "
        "pooled data with its [train] and [privacy] settings for audit.epochs epochs, then "
        "attack it: loss threshold (Yeom et al. 2018) and offline LiRA with "
        "audit.shadow_models shadow models (Carlini et al. 2022). Reports AUC and TPR at "
        "1% FPR on members vs non-members. --compare also trains without privacy so the "
        "report shows what DP buys.",
        epilog="example:\n  fedai audit --config experiments/dp_digits.toml --compare "
        "--set audit.epochs=100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(audit, config_help="experiment TOML")
    audit.add_argument(
        "--compare", action="store_true", help="also audit the same training without privacy"
    )
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    audit.set_defaults(func=run_audit)


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
    if args.json:
        print(json.dumps(statement, indent=2, sort_keys=True))
    else:
        for ledger in ledgers:
            eps = ", ".join(f"{e.epsilon:.3f}" for e in ledger.entries)
            state = " (exhausted)" if ledger.exhausted else ""
            print(
                f"client {ledger.client_id}: {len(ledger)} rounds, epsilon after each: "
                f"[{eps}] at delta {ledger.delta:g} ({ledger.accountant}){state}"
            )
        print(statement["text"])
    return 0


# ---------------------------------------------------------------------- audit
def run_audit_config(cfg: ExperimentConfig, *, compare: bool) -> dict[str, Any]:
    """Audit ``cfg`` (central training on its pooled data); return the JSON report."""
    import numpy as np

    from fedai.data import load_federated
    from fedai.models import ModelSpec
    from fedai.privacy.accounting import epsilon_from_history, resolve_delta
    from fedai.privacy.audit import audit_training, make_train_fn
    from fedai.privacy.dpsgd import planned_event
    from fedai.privacy.plan import client_noise_multiplier

    clients = load_federated(cfg)
    x = np.concatenate([a for c in clients for a in (c.x_train, c.x_test)])
    y = np.concatenate([a for c in clients for a in (c.y_train, c.y_test)])
    audit = cfg.audit
    num_members = int(audit.member_fraction * len(y) / 2)
    attacks = tuple(a.strip() for a in audit.attacks.split(",") if a.strip())
    spec = ModelSpec(
        name=cfg.model.name,
        input_shape=clients[0].input_shape,
        num_classes=clients[0].num_classes,
        hidden=cfg.model.hidden,
    )
    settings: list[tuple[str, float | None]] = []
    report: dict[str, Any] = {
        "num_members": num_members,
        "epochs": audit.epochs,
        "attacks": list(attacks),
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
            "epsilon": epsilon_from_history(
                [event], delta=delta, accountant=cfg.privacy.accountant
            ),
            "accountant": cfg.privacy.accountant,
        }
        settings.append(("dp", sigma))
    if compare or cfg.privacy.mode == "none":
        settings.insert(0, ("non_private", None))
    for name, sigma_or_none in settings:
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
        result = audit_training(
            x=x,
            y=y,
            train_fn=fn,
            num_members=num_members,
            num_shadow_models=audit.shadow_models,
            rng=np.random.default_rng(cfg.experiment.seed),
            attacks=attacks,
        )
        report.setdefault(name, {}).update(result.to_dict())
    return report


def run_audit(args: argparse.Namespace) -> int:
    """Execute ``fedai audit``."""
    cfg = ExperimentConfig.load(args.config, args.overrides)
    report = run_audit_config(cfg, compare=args.compare)
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
        return 0
    for name in ("non_private", "dp"):
        if name not in report or "train_accuracy" not in report[name]:
            continue
        r = report[name]
        head = (
            name
            if name != "dp"
            else (
                f"dp (sigma {r['noise_multiplier']:.3f}, epsilon "
                f"{r['epsilon']:.2f} at delta {r['delta']:g})"
            )
        )
        parts = [
            f"{k} AUC {r[k]['auc']:.3f} TPR@1%FPR {r[k]['tpr_at_1pct_fpr']:.3f}"
            for k in ("loss", "lira")
            if r.get(k)
        ]
        print(
            f"{head}: train acc {r['train_accuracy']:.3f}, held-out acc "
            f"{r['test_accuracy']:.3f}; " + "; ".join(parts)
        )
    sys.stdout.flush()
    return 0


__all__ = ["build_plan", "register", "run_audit", "run_audit_config", "run_ledger", "run_plan"]
