"""Everything that talks to IMM: the client and its request signing, submission and results
(pipeline), notifications, and the emulator that speaks IMM's wire protocol."""
