"""IMM's request budget, shared by every submitter thread and process through the database.

IMM throttles per account, so a limit kept in each process would multiply with the processes.
One row (ImmRateLimit) holds the second being counted, how many requests were asked for in it,
and the time before which nobody sends because IMM answered that we are throttled. Asking for a
turn is one statement, an upsert that counts the ask and returns the row, so it costs one round
trip and holds the row no longer than that statement; the same statement works on SQLite and
PostgreSQL. Times are the database's clock, so workers on several hosts count the same seconds.

A fixed window: at most `qps` requests are let through in any one second of that clock. Callers
refused wait for the next second, or for the end of a pause, and ask again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from moderation.models import ImmRateLimit

logger = logging.getLogger(__name__)

SUBMISSIONS = "imm_submit"  # the budget the submission path draws on
# A throttled answer without x-acs-retry-after holds everyone back this long: IMM counts requests
# a second. A hint is honoured up to PAUSE_CAP, so an odd answer cannot stop submission for long.
DEFAULT_PAUSE = 1.0
PAUSE_CAP = 30.0

# Unix time by the database's clock: SQLite's julianday('now') is fixed for one statement and
# has millisecond precision; PostgreSQL's statement_timestamp() is fixed for one statement too.
_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "EXTRACT(EPOCH FROM statement_timestamp())::float8",
}
_SECOND = {
    "sqlite": f"CAST({_NOW['sqlite']} AS INTEGER)",
    "postgresql": f"FLOOR({_NOW['postgresql']})::bigint",
}

# The proposed row (EXCLUDED) carries the database's time, so the update reads it from there and
# the statement needs no vendor-specific expression beyond the VALUES.
_ASK = """
INSERT INTO {table} (name, window_start, asked, paused_until, checked_at)
VALUES (%s, {second}, %s, 0, {now})
ON CONFLICT (name) DO UPDATE SET
    asked = CASE
        WHEN %s AND excluded.checked_at < {table}.paused_until THEN {table}.asked
        WHEN excluded.window_start > {table}.window_start THEN excluded.asked
        ELSE {table}.asked + excluded.asked
    END,
    window_start = CASE
        WHEN %s AND excluded.checked_at < {table}.paused_until THEN {table}.window_start
        WHEN excluded.window_start > {table}.window_start THEN excluded.window_start
        ELSE {table}.window_start
    END,
    checked_at = excluded.checked_at
RETURNING window_start, asked, paused_until, checked_at
"""

_PAUSE = """
INSERT INTO {table} (name, window_start, asked, paused_until, checked_at)
VALUES (%s, {second}, 0, {now} + %s, {now})
ON CONFLICT (name) DO UPDATE SET
    paused_until = CASE
        WHEN excluded.paused_until > {table}.paused_until THEN excluded.paused_until
        ELSE {table}.paused_until
    END,
    checked_at = excluded.checked_at
RETURNING paused_until, checked_at
"""


def _sql(template: str) -> str:
    vendor = connection.vendor
    if vendor not in _NOW:
        raise NotImplementedError(f"the IMM rate limit needs SQLite or PostgreSQL, not {vendor}")
    table = connection.ops.quote_name(ImmRateLimit._meta.db_table)
    return template.format(table=table, now=_NOW[vendor], second=_SECOND[vendor])


CLOCK_MARGIN = 0.005  # seconds
# No turns are granted in the last part of a second (seconds): a turn must reach IMM within
# its own second, and a loaded machine can take this long from the grant to the send.
LATE_IN_SECOND = 0.25


@dataclass(frozen=True)
class Turn:
    """The answer to one ask: how many requests may go now, and how long to wait for the rest."""

    granted: int
    wait: float = 0.0
    paused: bool = False  # the wait is IMM's throttling pause, not the rest of a second


class SharedRateLimit:
    """At most `qps` requests a second across every process (0: no count), and IMM's pauses.

    `take` and `throttled` make it a `moderation.imm.client.Pacer`; `turns` takes turns for
    several requests at once, and `prepaid` hands a request's turn, taken that way, to the
    client. Thread-safe: each thread uses its own database connection.
    """

    def __init__(
        self,
        *,
        qps: int,
        name: str = SUBMISSIONS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if qps < 0:
            raise ValueError(f"qps must be 0 (no limit) or more, got {qps}")
        self.qps = qps
        self.name = name
        self._sleep = sleep

    @classmethod
    def from_settings(cls) -> SharedRateLimit:
        """The submission budget, IMM_MAX_QPS requests a second."""
        return cls(qps=settings.IMM_MAX_QPS)

    def ask(self, count: int = 1, *, mind_pause: bool = True) -> Turn:
        """Count `count` requests in the current second; say how many may go, and how long the
        others wait before asking again.

        Refused requests still count in their second (the count only says who came too late),
        but nothing counts while paused: nobody is let through then. `mind_pause=False` is for
        the caller that was throttled and has already slept through the pause it was told.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with connection.cursor() as cursor:
            cursor.execute(_sql(_ASK), [self.name, count, mind_pause, mind_pause])
            window_start, asked, paused_until, now = cursor.fetchone()
        if mind_pause and now < paused_until:
            return Turn(granted=0, wait=paused_until - now, paused=True)
        if not self.qps:
            return Turn(granted=count)
        left = window_start + 1 - now
        if left < LATE_IN_SECOND:
            # Too late in this second: a turn is for its own second, and sent this late it could
            # reach IMM in the next one, on top of that second's turns.
            return Turn(granted=0, wait=max(left, 0.0) + CLOCK_MARGIN)
        granted = max(0, min(count, self.qps - (asked - count)))
        # A hair past the second's end: the database's clock has millisecond steps (SQLite's
        # julianday), so a sleep of exactly the rest could wake in the same second.
        wait = 0.0 if granted == count else max(window_start + 1 - now, 0.0) + CLOCK_MARGIN
        return Turn(granted=granted, wait=wait)

    def turns(self, count: int) -> Iterator[int]:
        """Take turns for `count` requests as the seconds allow: yields how many may go now,
        each time some may, until all have. Send those at once: a turn is for its second."""
        while count > 0:
            turn = self.ask(count)
            if turn.granted:
                count -= turn.granted
                yield turn.granted
            if count > 0:
                self._sleep(turn.wait)

    def take(self, *, after_throttle: bool = False) -> None:
        """Block until one more request may go out (client.Pacer)."""
        while not (turn := self.ask(mind_pause=not after_throttle)).granted:
            self._sleep(turn.wait)

    def throttled(self, retry_after: float | None) -> float:
        """IMM refused a request for flow control: nobody sends for a while (client.Pacer).

        The pause is IMM's hint (x-acs-retry-after), else DEFAULT_PAUSE, at most PAUSE_CAP, and
        never shortens a pause already set. Returns the seconds until everyone may send again.
        """
        pause = min(retry_after if retry_after and retry_after > 0 else DEFAULT_PAUSE, PAUSE_CAP)
        with connection.cursor() as cursor:
            cursor.execute(_sql(_PAUSE), [self.name, pause])
            paused_until, now = cursor.fetchone()
        wait = max(paused_until - now, 0.0)
        logger.warning("IMM is throttling submissions: every submitter waits %.1f s", wait)
        return wait

    def prepaid(self, count: int = 1) -> Prepaid:
        """A Pacer for one call whose first `count` requests already have their turn (turns);
        any further request (a retry) takes its own."""
        return Prepaid(self, count)


class Prepaid:
    """A client.Pacer that spends turns taken beforehand, then asks the shared budget."""

    def __init__(self, budget: SharedRateLimit, turns: int) -> None:
        self.budget = budget
        self.turns = turns

    def take(self, *, after_throttle: bool = False) -> None:
        if self.turns > 0 and not after_throttle:
            self.turns -= 1
            return
        self.budget.take(after_throttle=after_throttle)

    def throttled(self, retry_after: float | None) -> float:
        return self.budget.throttled(retry_after)
