"""The round loop's checkpoints: what :class:`server.rounds.FederatedRun` saves and restores.

After discovery (round 0) and after every completed round (accepted, failed or skipped)
the coordinator writes a :class:`fedai.checkpoint.Checkpoint` into the run directory:
the global model and the server optimiser's state exactly as it holds them (ciphertexts
under HE: nothing is decrypted here), the round records, the per-client view (exhausted
marks, latest privacy reports) and the run id. A coordinator started again with the same
config and run directory continues after the last completed round.

Every message the coordinator sends names the run (:data:`~fedai.federation.keys.
KEY_RUN_ID`, random and kept across resumes), this start of the coordinator
(:data:`~fedai.federation.keys.KEY_RUN_SESSION`, random per start) and the round it
resumed after (:data:`~fedai.federation.keys.KEY_RESUMED_AFTER`, 0 for a new run), so
client ledgers record which run and round each charge belongs to, mark the rounds a crash
lost and refuse to charge a round twice (:mod:`clients.privacy`). Train messages also
carry the checkpoint's view of each client's ledger (rounds charged, epsilon last
reported): a node whose ledger was lost since refuses to train from zero.

A new run into the same directory (``--overwrite``) removes the checkpoint but keeps the
simulated clients' ledgers (their spend is real, as on a real node); removing those is a
separate, explicit choice (``reset_state``, ``fedai simulate --reset-client-ledgers``).

What is *not* restored: node ids (a restarted federation may renumber its nodes; clients
are matched by client id) and availability marks (discovery finds who is there).
"""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedai.checkpoint import CHECKPOINT_DIR, Checkpoint
from fedai.config import ExperimentConfig
from fedai.errors import CheckpointError
from fedai.federation import keys
from fedai.models import ModelSpec
from fedai.results import RoundRecord, RunSummary
from server.statistics import Statistics
from server.strategy import GlobalModel
from server.transport import ClientInfo

if TYPE_CHECKING:
    from server.rounds import FederatedRun

logger = logging.getLogger(__name__)

RUN_ID_BYTES = 8
SESSION_BYTES = 4


def key_fingerprint(summer: object) -> str:
    """Hex fingerprint of the coordinator's key set (``""`` for a scheme without keys)."""
    fp = getattr(summer, "fingerprint", None)
    return fp.hex() if isinstance(fp, bytes) else ""


def load_for(run_dir: str | Path, cfg: ExperimentConfig) -> Checkpoint | None:
    """The checkpoint in ``run_dir`` if there is one, checked against ``cfg``.

    Raises:
        CheckpointError: the checkpoint is corrupt, foreign, or of another config.
    """
    ckpt = Checkpoint.find(run_dir)
    if ckpt is not None:
        ckpt.check_config(cfg.to_dict(), where=Checkpoint.path_in(run_dir))
    return ckpt


def start_or_resume(
    run_dir: str | Path,
    cfg: ExperimentConfig,
    *,
    resume: bool,
    overwrite: bool = False,
    state_dirs: tuple[str, ...] = (),
    reset_state: bool = False,
) -> Checkpoint | None:
    """What a command that owns ``run_dir`` continues: the checkpoint there, or nothing.

    Args:
        run_dir: The run's results directory.
        cfg: The experiment config (a checkpoint of another one is refused).
        resume: Continue the checkpoint in ``run_dir`` (``--resume``).
        overwrite: Start a new run even if ``run_dir`` holds one: its checkpoint is
            removed first. The ``state_dirs`` (e.g. simulated clients' ledgers: privacy
            they really spent) are kept, and the new run's clients continue them.
        state_dirs: Subdirectories of ``run_dir`` that belong to the nodes' state.
        reset_state: With ``overwrite``, remove the ``state_dirs`` too: resetting the
            clients' ledgers is the operator's explicit choice
            (``--reset-client-ledgers``), never a side effect of ``overwrite``.

    Returns:
        The checkpoint to resume, or None for a new run.

    Raises:
        CheckpointError: ``resume`` without a checkpoint; a new run into a directory that
            holds one (without ``overwrite``); a corrupt checkpoint or another config's;
            ``reset_state`` without ``overwrite``, or with ``resume``.
    """
    root = Path(run_dir)
    path = Checkpoint.path_in(root)
    if reset_state and (resume or not overwrite):
        raise CheckpointError(
            "resetting the clients' ledgers needs a new run over the old one (overwrite) "
            f"and no resume; got overwrite={overwrite}, resume={resume}"
        )
    if resume:
        ckpt = load_for(root, cfg)
        if ckpt is None:
            raise CheckpointError(f"--resume needs a checkpoint in {root}; {path} does not exist")
        return ckpt
    leftovers = [root / d for d in (CHECKPOINT_DIR, *state_dirs) if (root / d).exists()]
    if leftovers and not overwrite:
        try:
            found = Checkpoint.load(path) if path.exists() else None
        except CheckpointError:
            found = None
        what = (
            f"run {found.run_id} (round {found.round} of "
            f"{found.config.get('experiment', {}).get('rounds', '?')})"
            if found is not None
            else "an earlier run's state"
        )
        raise CheckpointError(
            f"{root} holds {what} ({', '.join(str(p) for p in leftovers)}); resume it with "
            "--resume, or start over with --overwrite or another --out"
        )
    node_state = {root / d for d in state_dirs}
    for directory in leftovers:
        if directory in node_state and not reset_state:
            logger.info(
                "keeping the clients' ledgers in %s: the new run continues their spend "
                "(--reset-client-ledgers removes them)",
                directory,
            )
            continue
        if directory in node_state:
            logger.warning("removing the clients' ledgers in %s, as asked", directory)
        shutil.rmtree(directory)
    return None


class Checkpointer:
    """Saves the loop's state after each round and restores it from a checkpoint.

    Args:
        run_dir: Where the checkpoint is written (``run_dir/checkpoint/``); None writes none.
        resume: The checkpoint to continue (already checked against the config), or None.
    """

    def __init__(self, run_dir: str | Path | None, resume: Checkpoint | None = None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.resume = resume
        self.run_id = resume.run_id if resume is not None else secrets.token_hex(RUN_ID_BYTES)
        self.session = secrets.token_hex(SESSION_BYTES)
        self.resumed_after = resume.round if resume is not None else 0
        self.seconds_before = resume.seconds if resume is not None else 0.0

    def identity(self) -> dict[str, bool | int | float | str]:
        """The run's identity, sent with every message."""
        return {
            keys.KEY_RUN_ID: self.run_id,
            keys.KEY_RUN_SESSION: self.session,
            keys.KEY_RESUMED_AFTER: self.resumed_after,
        }

    # ------------------------------------------------------------------ restore
    def spec(self, discovered: ModelSpec) -> ModelSpec:
        """The model spec to use: the checkpoint's, which the federation must still match.

        Raises:
            CheckpointError: the federation's data now implies another model.
        """
        if self.resume is None:
            return discovered
        try:
            stored = ModelSpec.from_dict(self.resume.spec)
        except Exception as err:
            raise CheckpointError(f"checkpoint of run {self.run_id}: bad spec: {err}") from err
        if stored != discovered:
            raise CheckpointError(
                f"checkpoint of run {self.run_id} holds a model for {stored}; the federation "
                f"now implies {discovered} (the clients' data changed)"
            )
        return stored

    def restore(
        self,
        run: FederatedRun,
        clients: dict[int, ClientInfo],
        summary: RunSummary,
        shapes: list[tuple[int, ...]],
    ) -> tuple[GlobalModel, int]:
        """Put the checkpoint's state into ``run``, ``clients`` and ``summary``.

        Returns:
            The global model to continue from and the first round to run.

        Raises:
            CheckpointError: the checkpoint does not fit this coordinator (other key set,
                other model layout, records that do not replay).
        """
        ckpt = self.resume
        if ckpt is None:
            return GlobalModel(), 1
        where = f"checkpoint of run {ckpt.run_id}"
        fingerprint = key_fingerprint(run.summer)
        if ckpt.key_fingerprint != fingerprint:
            raise CheckpointError(
                f"{where} was made under key set {ckpt.key_fingerprint[:16] or 'none'}; this "
                f"coordinator has {fingerprint[:16] or 'none'} (use the run's key directory)"
            )
        if ckpt.shapes != shapes:
            raise CheckpointError(f"{where}: shapes must be {shapes}; got {ckpt.shapes}")
        try:
            records = [RoundRecord(**r) for r in ckpt.records]
        except TypeError as err:
            raise CheckpointError(f"{where}: a round record is malformed: {err}") from err
        if [r.round for r in records] != list(range(1, ckpt.round + 1)):
            raise CheckpointError(
                f"{where}: records must be rounds 1..{ckpt.round}; got {[r.round for r in records]}"
            )
        try:
            run.strategy.restore(records)
        except Exception as err:
            raise CheckpointError(f"{where}: strategy state does not replay: {err}") from err
        summary.rounds.extend(records)
        if ckpt.started_at:
            summary.started_at = ckpt.started_at
        run.transport.excluded.update(
            {k: v for k, v in ckpt.excluded.items() if k not in run.transport.excluded}
        )
        run._privacy_reports.update(ckpt.privacy_reports)
        # The rounds each client trained in this run, as the checkpoint saw them: what its
        # ledger must still hold (a checkpoint without the count: the rounds it was
        # aggregated in, a lower bound).
        for record in records:
            for cid in record.trained:
                run._charges_seen[cid] = run._charges_seen.get(cid, 0) + 1
        for cid, view in ckpt.clients.items():
            stored = view.get("charges", 0) if isinstance(view, dict) else 0
            if isinstance(stored, int) and not isinstance(stored, bool):
                run._charges_seen[cid] = max(run._charges_seen.get(cid, 0), stored)
        if run.cfg.privacy.mode == "none":
            run._charges_seen.clear()
        by_id = {c.client_id: c for c in clients.values()}
        for cid, view in ckpt.clients.items():
            client = by_id.get(cid)
            if client is not None and isinstance(view, dict) and view.get("exhausted"):
                client.exhausted = str(view["exhausted"])
        missing = sorted(set(ckpt.clients) - set(by_id))
        if missing:
            logger.warning("resumed run %s: client(s) %s did not reconnect", ckpt.run_id, missing)
        logger.info(
            "resuming run %s after round %d of %d",
            ckpt.run_id,
            ckpt.round,
            run.cfg.experiment.rounds,
        )
        current = GlobalModel(
            payload=ckpt.model,
            weight=ckpt.model_weight if ckpt.model is not None else 0.0,
            state=ckpt.state,
        )
        return current, ckpt.round + 1

    def statistics(self) -> Statistics | None:
        """The checkpoint's federated feature statistics stage, or None (run it now).

        A resumed run standardises with the statistics it started with, never new ones.

        Raises:
            CheckpointError: the stored statistics are inconsistent.
        """
        ckpt = self.resume
        if ckpt is None or not ckpt.statistics_view:
            return None
        try:
            restored = Statistics.from_dict(
                ckpt.statistics_view, payload=ckpt.statistics, total_weight=ckpt.statistics_weight
            )
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint of run {ckpt.run_id}: bad feature statistics: {err}"
            ) from err
        logger.info("resumed run %s keeps its %s feature statistics", ckpt.run_id, restored.mode)
        return restored

    # ------------------------------------------------------------------ save
    def save(
        self,
        run: FederatedRun,
        *,
        round_: int,
        current: GlobalModel,
        clients: dict[int, ClientInfo],
        summary: RunSummary,
        spec: ModelSpec,
        shapes: list[tuple[int, ...]],
        seconds: float,
    ) -> Path | None:
        """Write the checkpoint after round ``round_`` (0: after discovery), atomically.

        Raises:
            CheckpointError: the file cannot be written (the run stops: going on without
                a checkpoint would make the next crash lose everything).
        """
        if self.run_dir is None:
            return None
        views: dict[str, dict[str, Any]] = {}
        for info in clients.values():
            views[info.client_id] = {
                "num_train": info.num_train,
                "num_test": info.num_test,
                "exhausted": info.exhausted,
            }
        previous = self.resume.clients if self.resume is not None else {}
        for cid, view in previous.items():  # clients that did not reconnect keep their view
            views.setdefault(cid, view)
        for cid, charges in run._charges_seen.items():  # ledger continuity (server.rounds)
            views[cid] = {**views.get(cid, {}), "charges": charges}
        ckpt = Checkpoint(
            run_id=self.run_id,
            round=round_,
            config=run.cfg.to_dict(),
            spec=spec.to_dict(),
            shapes=shapes,
            model=current.payload,
            model_weight=float(current.weight),
            state=current.state,
            key_fingerprint=key_fingerprint(run.summer),
            records=[r.to_dict() for r in summary.rounds],
            clients=views,
            excluded=dict(run.transport.excluded),
            privacy_reports={k: dict(v) for k, v in run._privacy_reports.items()},
            seconds=self.seconds_before + seconds,
            started_at=summary.started_at,
            statistics=run.statistics.payload,
            statistics_weight=float(run.statistics.total_weight),
            statistics_view=run.statistics.to_dict(),
        )
        return ckpt.save(self.run_dir)


__all__ = ["Checkpointer", "key_fingerprint", "load_for", "start_or_resume"]
