"""Helpers for tests that check the audit log: sequence what is waiting, then verify it all."""

from __future__ import annotations

from moderation.audit import checkpoints, sequencer
from moderation.audit.verify import Report, verify_log
from moderation.models import AuditEntry

# The test settings' key (tests/settings.py), as the log page shows it.
VERIFIER_KEY = "tests.example/audit+d1b0cb96+ASVfNz+KmeEKWdz0D85m3ftTPyWg+nu0Phpm7As3QHgE"


def sequence_all(*, batch_size: int = sequencer.DEFAULT_BATCH) -> int:
    """Run the sequencer until nothing waits; return the tree size."""
    signer = checkpoints.signer()
    while True:
        batch = sequencer.sequence_batch(signer=signer, batch_size=batch_size)
        assert batch is not None, "another sequencer holds the lock"
        if batch.sequenced < batch_size:
            return batch.tree_size


def assert_log_verifies() -> Report:
    """Sequence every entry, verify the whole log, and check every entry is in it."""
    size = sequence_all()
    report = verify_log()
    assert report.entries == size == AuditEntry.objects.count()
    assert report.waiting == 0
    assert report.checkpoint is not None
    assert report.checkpoint.size == size
    return report
