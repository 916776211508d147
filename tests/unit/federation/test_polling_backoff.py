"""``shorten_object_backoff`` imports Flower's HTTP grid only when one can exist."""

from __future__ import annotations

import subprocess
import sys

from flwr.supercore.inflatable import inflatable_utils

from fedai.federation.polling import PULL_BACKOFF_CAP, PULL_INITIAL_BACKOFF, shorten_object_backoff


def test_other_grids_do_not_import_the_http_grid():
    # Arrange: a fresh interpreter, where nothing has imported flwr.superlink.grid (~0.9 s)
    code = (
        "import sys\n"
        "from fedai.federation.polling import shorten_object_backoff\n"
        "assert 'flwr.superlink.grid.http_grid' not in sys.modules, 'imported too early'\n"
        "print(shorten_object_backoff(object()))\n"
        "print('flwr.superlink.grid.http_grid' in sys.modules)\n"
    )
    # Act
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    # Assert: left alone, and still not imported
    assert out.stdout.split() == ["False", "False"]


def test_an_http_grid_still_gets_the_short_backoff(monkeypatch):
    # Arrange: Flower's HTTP grid, imported as a real deployment's ServerApp has it
    from flwr.superlink.grid import http_grid

    monkeypatch.setattr(http_grid, "pull_objects", inflatable_utils.pull_objects)
    grid = http_grid.HttpGrid.__new__(http_grid.HttpGrid)  # no connection needed
    # Act
    changed = shorten_object_backoff(grid)
    # Assert
    assert changed
    assert http_grid.pull_objects.func is inflatable_utils.pull_objects
    assert http_grid.pull_objects.keywords == {
        "initial_backoff": PULL_INITIAL_BACKOFF,
        "backoff_cap": PULL_BACKOFF_CAP,
    }
