"""Session fixtures of the fuzz suite: one fixture set and one supervised worker."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the helper modules import each other by plain name
    sys.path.insert(0, str(HERE))

from fuzz_fixtures import build_fixtures  # noqa: E402
from fuzz_supervisor import Supervisor  # noqa: E402


@pytest.fixture(scope="session")
def fuzz_fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys, payloads and encrypted batches for every fuzz test (built once)."""
    return build_fixtures(tmp_path_factory.mktemp("fuzz") / "fixtures")


@pytest.fixture(scope="session")
def supervisor(
    fuzz_fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervisor]:
    """A worker process the fuzz tests share; a crash restarts it, never pytest."""
    with Supervisor(fuzz_fixture_dir, tmp_path_factory.mktemp("fuzz-work")) as sup:
        yield sup
