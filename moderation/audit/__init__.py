"""The audit log: recording (log), sequencing (sequencer), the tree, notes and receipts (merkle,
note, receipt), proofs from the database (checkpoints), verification (verify), its pages (views,
urls) and the verification task (tasks)."""
