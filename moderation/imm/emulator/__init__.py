"""A local stand-in for Alibaba Cloud IMM's image moderation, speaking IMM's wire protocol.

`manage.py imm_emulator` runs it; tests start it in-process:

    emulator = Emulator.from_settings(port=0, state=":memory:", delay=0, notify_url=None)
    port = emulator.start()
    ...
    emulator.stop()

What it does, module by module:
- gateway: Alibaba's API gateway: ACS3-HMAC-SHA256 signatures (with moderation.imm.signing), the
  15-minute clock window, nonces, flow control, and error answers
  ({"RequestId", "HostId", "Code", "Message", "Recommend"}).
- operations: CreateImageModerationTask, GetTask, GetImageModerationResult and ListTasks.
- store: the tasks, in SQLite so a restart keeps them; tasks older than 7 days are not found.
- server: the HTTP server, and the worker that reads each image from the project's storage
  (oss://<IMM_OSS_BUCKET>/<key> is <key> in default_storage), applies IMM's limits
  (moderation.intake.inspect) and asks the detector.
- detector: the documented, deterministic verdicts (rules file, then the image's pixels).
- delivery: notifications POSTed to the notify URL, with retries and misbehaviour switches.
"""

from .detector import Rule, RulesError
from .server import Emulator

__all__ = ["Emulator", "Rule", "RulesError"]
