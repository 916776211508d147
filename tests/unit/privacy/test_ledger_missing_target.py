"""A ledger path that exists but cannot be followed fails closed; it never starts afresh.

``Path.exists()`` is False for a dangling symlink and for a symlink loop (it swallows
ENOENT and ELOOP), so a ledger kept on storage reached through a link that is not
mounted read as "no ledger": the node started again at epsilon 0 and the next save
replaced the link with a new file, losing the history for good.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedai.errors import LedgerError
from fedai.privacy.accounting import DpSgdEvent
from fedai.privacy.ledger import PrivacyLedger


def test_a_ledger_link_to_unmounted_storage_is_an_error_not_a_new_ledger(tmp_path: Path) -> None:
    # Arrange: the history lives on storage the link points to; the storage is gone
    storage = tmp_path / "mnt" / "ledger-c0.json"
    storage.parent.mkdir()
    spent = PrivacyLedger(client_id="c0", delta=1e-5)
    spent.record(round=1, event=DpSgdEvent(1.0, 0.05, 40))
    spent.save(storage)
    link = tmp_path / "state" / "ledger-c0.json"
    link.parent.mkdir()
    link.symlink_to(storage)
    storage.unlink()

    # Act / Assert
    with pytest.raises(LedgerError, match=r"ledger file .*ledger-c0\.json.* cannot be read"):
        PrivacyLedger.open(link, client_id="c0", delta=1e-5)
    assert link.is_symlink()


def test_a_ledger_symlink_loop_is_an_error(tmp_path: Path) -> None:
    link = tmp_path / "ledger-c0.json"
    link.symlink_to(link)
    with pytest.raises(LedgerError, match="cannot be read"):
        PrivacyLedger.open(link, client_id="c0", delta=1e-5)


def test_no_file_at_all_starts_a_new_ledger(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "ledger-c0.json", client_id="c0", delta=1e-5)
    assert len(ledger) == 0
