"""Quick fuzz slice of the three decoders: no input may kill, hang or escape untyped.

Every trial runs in the supervised worker (a segfault fails the test, not pytest). The
long campaign is ``tests/fuzz/campaign.py``; these are its first few hundred trials per
target on a fixed seed, plus the exhaustive bit flips of the ciphertext framing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fuzz_fixtures import load_shape
from fuzz_mutations import TARGETS
from fuzz_plans import hot_sweep_indices, random_mutation, sweep_mutations
from fuzz_supervisor import BAD_OUTCOMES, Supervisor, Tally, Trial, failure_report, run_trials

QUICK_SEED = 20251201
QUICK_TRIALS = {"coordinator": 600, "client": 600, "holder_rows": 300, "holder_columns": 300}
SLICE_SECONDS = 120.0  # bound per test; the whole directory takes ~25 s on 2 cores


def _run(supervisor: Supervisor, trials: list[Trial]) -> Tally:
    tally = Tally(trials[0].target)
    run_trials(supervisor, trials, tally, deadline=time.monotonic() + SLICE_SECONDS)
    return tally


def _assert_clean(tally: Tally, planned: int) -> None:
    bad = {o: tally.counts.get(o, 0) for o in BAD_OUTCOMES}
    assert sum(bad.values()) == 0, failure_report(tally)
    assert sum(tally.counts.values()) == planned, f"ran out of time: {dict(tally.counts)}"


@pytest.mark.parametrize("target", TARGETS)
def test_unmodified_input_is_accepted_and_exact(
    supervisor: Supervisor, fuzz_fixture_dir: Path, target: str
) -> None:
    # Arrange: the positive control; a harness that rejects everything proves nothing.
    trial = Trial(target, "control", 0, {"family": "none"})
    # Act
    record = supervisor.run(trial)
    # Assert
    assert record["outcome"] == "ok", record
    assert record.get("changed") is False, record


@pytest.mark.parametrize("target", TARGETS)
def test_quick_random_slice(supervisor: Supervisor, fuzz_fixture_dir: Path, target: str) -> None:
    # Arrange
    shape = load_shape(fuzz_fixture_dir, target)
    n = QUICK_TRIALS[target]
    trials = [
        Trial(target, QUICK_SEED, i, random_mutation(target, QUICK_SEED, i, shape))
        for i in range(n)
    ]
    # Act
    tally = _run(supervisor, trials)
    # Assert: no failure, and both paths exercised (accepted and typed rejections).
    _assert_clean(tally, n)
    assert tally.counts["ok"] > 0, dict(tally.counts)
    assert tally.counts["typed"] > 0, dict(tally.counts)


@pytest.mark.parametrize("target", TARGETS)
def test_ciphertext_framing_bit_flips(
    supervisor: Supervisor, fuzz_fixture_dir: Path, target: str
) -> None:
    """Every bit of the protobuf framing and SEAL header of the first and last ciphertext."""
    # Arrange
    shape = load_shape(fuzz_fixture_dir, target)
    sweep = sweep_mutations(target, shape)
    indices = hot_sweep_indices(target, shape)
    trials = [Trial(target, "sweep", i, sweep[i]) for i in indices]
    # Act
    tally = _run(supervisor, trials)
    # Assert
    _assert_clean(tally, len(trials))
