"""Real nodes failing, as an operator would see it: ``fedai server`` / ``fedai client``.

Three client agents and one coordinator, each a separate process on 127.0.0.1, local DP:

1. A client agent SIGKILLed (its whole process group) when round 2 starts: the run
   finishes; round 2 is recorded with the two others and the reason the third failed; the
   dead node is not sampled again (``experiment.max_missed_rounds = 1``; Flower itself
   needs ~60 s to stop listing it, the round deadline is 20 s). ``--insecure``: TLS and
   node authentication play no part in drop-out handling.
2. The coordinator (``fedai server``, its SuperLink and everything that one started)
   SIGKILLed after round 2 of 4 is checkpointed, then the same command again: it resumes
   after round 2, results.json holds rounds 1-4, and no client ledger charges a (run,
   round) twice; a round 3 a node trained for the first coordinator is marked lost and
   refused when asked again (the spend stays counted). The agents stay up across the
   restart; a SuperNode caught pulling the old run's message when the new SuperLink
   came up used to block its agent for minutes (:mod:`fedai.federation.agent` fixes
   it). TLS and node authentication on: the restarted SuperLink must take the same
   registered keys from its database.

Every process is started here and stopped by PID in ``finally`` (and any grandchild a
SIGKILL orphaned, found by this test's own tmp_path in its command line).
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
from real_nodes_kit import (
    SITES,
    Processes,
    fedai,
    flower_test_env,
    free_port,
    kill_leftovers,
    kill_tree,
    wait_until,
    write_sites,
)

from fedai.checkpoint import Checkpoint
from fedai.privacy.ledger import PrivacyLedger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_SECONDS = 600  # an upper bound for one `fedai server` run, not a performance check
START_SECONDS = 300  # upper bound for start-up plus the rounds before the failure
LINK_PID = re.compile(r"SuperLink PID (\d+)")
NODE_PID = re.compile(r"SuperNode PID (\d+)")


def experiment(path: Path, *, rounds: int) -> Path:
    """Three clients, all sampled, local DP, a 20 s round deadline, one miss marks a node."""
    path.write_text(
        f'[experiment]\nname = "failures"\nseed = 5\nrounds = {rounds}\n'
        "num_clients = 3\nclients_per_round = 3\nround_timeout = 20.0\n"
        "min_replies = 2\nmax_missed_rounds = 1\nretry_unavailable_every = 100\n"
        '[model]\nname = "mlp"\nhidden = 16\n'
        "[train]\nlocal_epochs = 1\nbatch_size = 32\nlr = 0.1\n"
        '[privacy]\nmode = "local"\nnoise_multiplier = 1.0\ndelta = 1e-5\n',
        encoding="utf-8",
    )
    return path


def ledger(state: Path, site: str) -> PrivacyLedger:
    return PrivacyLedger.load(state / site / f"ledger-{site}.json")


def checkpointed_round(out: Path) -> int:
    """The round of the coordinator's checkpoint in ``out`` (-1: none yet)."""
    ckpt = Checkpoint.find(out)
    return -1 if ckpt is None else int(ckpt.round)


def pids_in(text: str, pattern: re.Pattern[str]) -> list[int]:
    return [int(p) for p in pattern.findall(text)]


def test_client_sigkilled_mid_run_is_left_out(tmp_path):
    # Arrange
    sites = write_sites(tmp_path)
    env = flower_test_env(tmp_path)
    server = f"127.0.0.1:{free_port()}"
    config = experiment(tmp_path / "run.toml", rounds=4)
    out = tmp_path / "out"
    procs = Processes(tmp_path, env)
    victim = SITES[2]
    clients: dict[str, subprocess.Popen[bytes]] = {}
    try:
        coordinator = procs.start(
            "server",
            "server",
            "--config",
            str(config),
            "--insecure",
            "--address",
            server,
            "--state",
            "link",
            "--out",
            str(out),
        )
        for site in SITES:
            clients[site] = procs.start(
                site,
                "client",
                "--server",
                server,
                "--insecure",
                "--data",
                str(sites[site]),
                "--client-id",
                site,
                "--state",
                f"state/{site}",
            )
        # Act: round 1 checkpointed (every reply in) -> round 2 starts: SIGKILL the victim.
        # (Its own "evaluate round 1" line is too early: the reply may still sit in its
        # SuperNode.) Training a round takes seconds, so round 2 has no reply of it yet.
        wait_until(
            lambda: checkpointed_round(out) >= 1 or coordinator.poll() is not None,
            timeout=START_SECONDS,
            what="the checkpoint of round 1",
        )
        assert coordinator.poll() is None, procs.text("server")
        # fedai client, its process group and its SuperNode (a session of its own)
        killed = kill_tree(clients[victim].pid)
        assert set(pids_in(procs.text(victim), NODE_PID)) <= set(killed)
        clients[victim].wait(timeout=30)
        assert coordinator.wait(timeout=RUN_SECONDS) == 0, procs.text("server")
    finally:
        procs.stop_all()
        kill_leftovers(str(tmp_path))

    # Assert: the run went on without the victim
    assert "train round 2" not in procs.text(victim)  # killed before it answered round 2
    doc = json.loads((out / "results.json").read_text())
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["status"] == "ok" for r in rounds), rounds
    others = sorted(s for s in SITES if s != victim)
    assert sorted(rounds[0]["trained"]) == list(SITES)
    # ... round 2: sampled with the others, not trained, and why
    assert sorted(rounds[1]["sampled"]) == list(SITES)
    assert sorted(rounds[1]["trained"]) == others
    assert "round_timeout" in rounds[1]["failures"][victim], rounds[1]["failures"]
    # ... later rounds: not sampled at all (marked unavailable after one miss)
    for record in rounds[2:]:
        assert sorted(record["sampled"]) == others, record
        assert sorted(record["trained"]) == others, record
    assert f"client {victim} failed" in procs.text("server")
    # ... the clients' ledgers agree: the victim was charged round 1 only
    state = tmp_path / "state"
    assert [e.round for e in ledger(state, victim).entries] == [1]
    for site in others:
        assert [e.round for e in ledger(state, site).entries] == [1, 2, 3, 4]


@pytest.mark.parametrize("kill_at", ["round-2-checkpointed", "round-3-charged"])
def test_coordinator_sigkilled_after_round_2_resumes(tmp_path, kill_at):
    """``kill_at``: as soon as round 2's checkpoint is on disk, or once a client reported
    round 3 trained. Either way the coordinator never completes round 3; whether the
    nodes had received (and trained, and charged) round 3 by then is a race, seen both
    ways on a busy machine: a charged round must come back lost and refused, an
    uncharged one trained by the resumed coordinator."""
    # Arrange
    sites = write_sites(tmp_path)
    env = flower_test_env(tmp_path)
    made = fedai(env, tmp_path, "certs", "--out", "certs", "--address", "127.0.0.1", "--nodes", "3")
    assert made.returncode == 0, made.stdout + made.stderr
    server = f"127.0.0.1:{free_port()}"
    config = experiment(tmp_path / "run.toml", rounds=4)
    out = tmp_path / "out"
    procs = Processes(tmp_path, env)
    serve = (
        "server",
        "--config",
        str(config),
        "--certs",
        "certs",
        "--address",
        server,
        "--state",
        "link",
        "--out",
        str(out),
    )
    try:
        first = procs.start("server-1", *serve)
        for i, site in enumerate(SITES, start=1):
            procs.start(
                site,
                "client",
                "--server",
                server,
                "--certs",
                f"certs/nodes/node-{i}",
                "--data",
                str(sites[site]),
                "--client-id",
                site,
                "--state",
                f"state/{site}",
            )

        # Act: SIGKILL the coordinator after round 2 (see kill_at)
        def due() -> bool:
            if kill_at == "round-2-checkpointed":
                return checkpointed_round(out) >= 2
            return any("train round 3:" in procs.text(site) for site in SITES)

        wait_until(
            lambda: due() or first.poll() is not None,
            timeout=START_SECONDS,
            what=kill_at,
        )
        assert first.poll() is None, procs.text("server-1")
        # fedai server and everything under it: SuperLink, its SuperExec and ServerApp,
        # `flwr run --stream` (each in a session of its own)
        killed = kill_tree(first.pid)
        assert set(pids_in(procs.text("server-1"), LINK_PID)) <= set(killed)
        first.wait(timeout=30)
        killed_after = checkpointed_round(out)
        # ... the same command again, with the agents still up
        second = procs.start("server-2", *serve)
        assert second.wait(timeout=RUN_SECONDS) == 0, procs.text("server-2")
    finally:
        procs.stop_all()
        kill_leftovers(str(tmp_path))

    # Assert: the run resumed after round 2 and has rounds 1-4
    assert killed_after == 2  # round 3 was never completed by the first coordinator
    assert "resuming run" in procs.text("server-2")
    assert "after round 2" in procs.text("server-2")
    doc = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3, 4]
    run_id = Checkpoint.find(out).run_id
    lost_rounds: dict[str, list[int]] = {}
    # ... no ledger charged a (run, round) twice; rounds the first coordinator started are lost
    for site in SITES:
        entries = ledger(tmp_path / "state", site).entries
        charges = [(e.run_id, e.round) for e in entries]
        assert len(charges) == len(set(charges)), (site, charges)
        assert {e.run_id for e in entries} == {run_id}, site
        assert {e.round for e in entries} <= {1, 2, 3, 4}, site
        sessions = {e.round: e.session for e in entries}
        assert sessions[1] == sessions[2], site  # both from the first coordinator
        for e in entries:
            first_session_later_round = e.session == sessions[1] and e.round > 2
            assert e.lost == first_session_later_round, (site, e)
        lost = [e.round for e in entries if e.lost]
        lost_rounds[site] = lost
        assert 4 in {e.round for e in entries if not e.lost}, (site, charges)
        # ... a lost round is refused, not trained again, when the resumed run asks for it
        round3 = doc["rounds"][2]
        if 3 in lost:
            assert site not in round3["trained"], round3
            assert "already charged" in round3["failures"][site], round3
        else:
            assert site in round3["trained"], round3
    if kill_at == "round-3-charged":
        assert any(lost == [3] for lost in lost_rounds.values()), lost_rounds
