"""When a delivery is tried again, and when an endpoint counts as dead.

The retry schedule is the one the Standard Webhooks specification gives as an example (and Svix
uses): the first attempt at once, then retries after 5 seconds, 5 minutes, 30 minutes, 2 hours,
5 hours, 10 hours and 10 hours: 8 attempts over about 27.5 hours. Each wait is stretched or
shrunk by up to JITTER (±20%) so that the deliveries of a burst, failing together, do not all
come back together; the last two (the 10-hour waits) are only ever stretched, so that a delivery
is tried for at least 24 hours however the dice fall (at least 26 hours, in fact).
"""

from __future__ import annotations

import random
from datetime import timedelta

RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
JITTER = 0.2
# From this wait on (0-based), jitter only stretches: shrinking every wait by 20% would end the
# series after 22 hours, short of the day a receiver is promised.
STRETCH_ONLY_FROM = len(RETRY_DELAYS) - 2

# An endpoint whose every attempt has failed for this long (and at least this many times in a
# row, so one failed retry of an old delivery after a quiet week is not enough) is disabled.
DISABLE_AFTER = timedelta(days=5)
DISABLE_AFTER_FAILURES = 10

# After a failure the whole endpoint rests for a while, so a dead receiver with a backlog gets a
# probe every few minutes rather than the backlog at once: 2, 4, 8... seconds, at most 5 minutes.
ENDPOINT_PAUSE_BASE = timedelta(seconds=2)
ENDPOINT_PAUSE_CAP = timedelta(minutes=5)


def retry_delay(attempts: int, rng: random.Random | None = None) -> timedelta | None:
    """The wait before the next attempt after `attempts` failed ones, or None after the last."""
    if attempts < 1:
        raise ValueError("attempts counts the attempts made, from 1")
    if attempts >= MAX_ATTEMPTS:
        return None
    base = RETRY_DELAYS[attempts - 1]
    low = 1.0 if attempts - 1 >= STRETCH_ONLY_FROM else 1 - JITTER
    factor = low + (1 + JITTER - low) * (rng or random).random()
    return base * factor


def endpoint_pause(consecutive_failures: int) -> timedelta:
    """How long an endpoint rests after its `consecutive_failures`th failure in a row."""
    if consecutive_failures < 1:
        return timedelta(0)
    # 2 ** 8 x 2 s is past the cap already; the exponent is bounded so it cannot overflow.
    return min(ENDPOINT_PAUSE_CAP, ENDPOINT_PAUSE_BASE * 2 ** min(consecutive_failures - 1, 12))


def describe(delays: tuple[timedelta, ...] = RETRY_DELAYS) -> str:
    """The waits for people: "5 s, 5 min, 30 min, 2 h, ..."."""
    words = []
    for delay in delays:
        seconds = int(delay.total_seconds())
        if seconds % 3600 == 0:
            words.append(f"{seconds // 3600} h")
        elif seconds % 60 == 0:
            words.append(f"{seconds // 60} min")
        else:
            words.append(f"{seconds} s")
    return ", ".join(words)
