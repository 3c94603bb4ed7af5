"""Each client's request budget: API_RATE_LIMIT requests a minute, shared by every process.

As moderation.imm.ratelimit does for IMM's budget: one row per client (ApiRateLimit) holds the
minute being counted and the requests in it, and counting a request is one upsert that returns
the row, by the database's clock (so gunicorn workers and hosts count the same minutes). A fixed
window: at most API_RATE_LIMIT requests are answered in one minute of that clock; the rest are
told to come back when it ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from .models import ApiClient, ApiRateLimit

WINDOW = 60  # seconds

_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "EXTRACT(EPOCH FROM statement_timestamp())::float8",
}
_WINDOW_START = {
    "sqlite": f"(CAST({_NOW['sqlite']} AS INTEGER) / {WINDOW} * {WINDOW})",
    "postgresql": f"(FLOOR({_NOW['postgresql']} / {WINDOW}) * {WINDOW})::bigint",
}

_COUNT = """
INSERT INTO {table} (client_id, window_start, count) VALUES (%s, {start}, 1)
ON CONFLICT (client_id) DO UPDATE SET
    count = CASE
        WHEN excluded.window_start > {table}.window_start THEN 1
        ELSE {table}.count + 1
    END,
    window_start = CASE
        WHEN excluded.window_start > {table}.window_start THEN excluded.window_start
        ELSE {table}.window_start
    END
RETURNING window_start, count, {now}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds until the window ends, when refused


def count_request(client: ApiClient) -> Verdict:
    """Count one request of `client`; say whether it may be answered (API_RATE_LIMIT a minute,
    0 for no limit), and if not, in how many seconds the next minute starts."""
    limit = settings.API_RATE_LIMIT
    if limit <= 0:
        return Verdict(allowed=True)
    vendor = connection.vendor
    if vendor not in _NOW:
        raise NotImplementedError(f"the API rate limit needs SQLite or PostgreSQL, not {vendor}")
    sql = _COUNT.format(
        table=connection.ops.quote_name(ApiRateLimit._meta.db_table),
        start=_WINDOW_START[vendor],
        now=_NOW[vendor],
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [client.pk])
        window_start, count, now = cursor.fetchone()
    if count <= limit:
        return Verdict(allowed=True)
    return Verdict(allowed=False, retry_after=max(1, math.ceil(window_start + WINDOW - now)))
