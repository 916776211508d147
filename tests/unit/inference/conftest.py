import os

import pytest


@pytest.fixture
def umask_022():
    """Run the test under umask 022, so a mode of 0600 proves fedai forced it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
