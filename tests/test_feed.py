"""The decisions feed's query: pages in commit order behind a signed cursor, on both databases;
on PostgreSQL with real concurrent transactions, a transaction that began first and commits
last is served once, never skipped behind a cursor already handed out."""

from __future__ import annotations

import base64
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderation.events import feed
from moderation.events.models import Event
from moderation.events.outbox import emit
from moderation.models import Image

from .conftest import postgres_only

pytestmark = pytest.mark.django_db(transaction=True)

_made = iter(range(1, 1_000_000))


def bare_images(n: int) -> list[Image]:
    """Image rows without files: the feed reads events, not pixels."""
    images = []
    for _ in range(n):
        i = next(_made)
        images.append(
            Image.objects.create(
                file=f"images/{i:02x}/{i:064x}.png",
                sha256=f"{i:064x}",
                format=Image.Format.PNG,
                width=320,
                height=240,
                byte_size=1000 + i,
                original_filename=f"feed-{i}.png",
                status=Image.Status.APPROVED,
            )
        )
    return images


def committed_event(image: Image, n: int = 0) -> Event:
    with transaction.atomic():
        event = emit(image=image, type=Event.Type.APPROVED, data={"n": n})
    wait_until_servable([event.pk])
    return event


def wait_until_servable(pks: list[int]) -> None:
    """Wait until every transaction older than these committed events has ended.

    On PostgreSQL the feed serves an event once the snapshot's xmin has passed its transaction,
    and xmin is the server's: a transaction held open in any database of the server (another
    test run sharing it) holds it back. Nothing to wait for in CI; a clear failure if it lasts.
    """
    if connection.vendor != "postgresql" or not pks:
        return
    top = max(Event.objects.filter(pk__in=pks).values_list("txid", flat=True))
    deadline = time.monotonic() + 120
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            if cursor.fetchone()[0] > top:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"a transaction older than {top} has been open on the server for 2 min")
        time.sleep(0.05)


def read_all(events: Any, after: str | None = None, limit: int = 2) -> tuple[list[int], str | None]:
    """Follow the cursor until a page comes back empty: the ids read, and the last cursor."""
    ids: list[int] = []
    while True:
        page = feed.page(events=events, after=after, limit=limit)
        if not page.items:
            assert page.next == after
            return ids, after
        ids += [event.pk for event in page.items]
        after = page.next


def test_pages_follow_each_other_in_commit_order_and_next_stays_when_nothing_is_new():
    [image] = bare_images(1)
    made = [committed_event(image, n).pk for n in range(5)]

    first = feed.page(events=Event.objects.all(), after=None, limit=2)
    second = feed.page(events=Event.objects.all(), after=first.next, limit=2)
    third = feed.page(events=Event.objects.all(), after=second.next, limit=2)
    empty = feed.page(events=Event.objects.all(), after=third.next, limit=2)

    assert [e.pk for e in first.items + second.items + third.items] == made
    assert empty.items == []
    assert empty.next == third.next
    newer = committed_event(image, 5)
    assert feed.page(events=Event.objects.all(), after=third.next, limit=2).items == [newer]


def test_an_empty_feed_answers_no_items_and_no_cursor():
    page = feed.page(events=Event.objects.all(), after=None, limit=10)

    assert (page.items, page.next) == ([], None)


def test_for_images_serves_only_those_images_events_in_the_same_order():
    mine, theirs = bare_images(2)
    expected = []
    for n in range(6):
        event = committed_event(mine if n % 2 else theirs, n)
        if n % 2:
            expected.append(event.pk)

    ids, _ = read_all(Event.objects.for_images(Image.objects.filter(pk=mine.pk)), limit=1)

    assert ids == expected


@pytest.mark.parametrize("limit", [0, -1, 501])
def test_a_limit_out_of_range_is_refused(limit):
    with pytest.raises(ValueError, match="between 1 and 500"):
        feed.page(events=Event.objects.all(), after=None, limit=limit)


def test_the_largest_limit_is_served():
    [image] = bare_images(1)
    committed_event(image)

    assert len(feed.page(events=Event.objects.all(), after=None, limit=500).items) == 1


def good_cursor() -> str:
    [image] = bare_images(1)
    committed_event(image)
    cursor = feed.page(events=Event.objects.all(), after=None, limit=1).next
    assert cursor is not None
    return cursor


def resign(position: str) -> str:
    value = base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")
    return feed._signer.sign(value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: "not-a-cursor", "not one this feed gave out"),
        (lambda good: good[:-1] + ("A" if good[-1] != "A" else "B"), "altered"),
        (lambda good: "x" + good, "altered"),
        (lambda good: good.replace(".", ":"), "not one this feed gave out"),
        (lambda good: good * 10, "too long"),
        (lambda good: resign("2:5:9"), "version '2'"),
        (lambda good: resign("1:five:9"), "cannot be read"),
        (lambda good: resign("1:5"), "cannot be read"),
        (lambda good: feed._signer.sign("%%%"), "cannot be read"),
    ],
)
def test_a_bad_or_tampered_cursor_is_refused_with_a_clear_message(make, message):
    cursor = make(good_cursor())

    with pytest.raises(feed.BadCursor, match=message) as refused:
        feed.page(events=Event.objects.all(), after=cursor, limit=10)

    assert isinstance(refused.value, ValueError)


def test_a_cursor_is_opaque_and_url_safe():
    cursor = good_cursor()

    assert all(c.isalnum() or c in "-_." for c in cursor)
    assert "txid" not in cursor


# ------------------------------------------------------------ PostgreSQL, real transactions


class Writer(threading.Thread):
    """A thread with its own database connection that runs one command at a time: begin a
    transaction, emit an event in it, commit, roll back. Lets a test interleave transactions."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.answers: queue.Queue[Any] = queue.Queue()
        self.atomic: Any = None

    def do(self, command: str, arg: Any = None) -> Any:
        self.commands.put((command, arg))
        answer = self.answers.get(timeout=30)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def run(self) -> None:
        try:
            while True:
                command, arg = self.commands.get()
                try:
                    self.answers.put(self._run(command, arg))
                except BaseException as error:  # handed to the test thread
                    self.answers.put(error)
                if command == "stop":
                    return
        finally:
            connection.close()

    def _run(self, command: str, arg: Any) -> Any:
        if command == "begin":
            self.atomic = transaction.atomic()
            self.atomic.__enter__()
        elif command == "emit":
            return emit(image=arg, type=Event.Type.APPROVED, data={}).pk
        elif command in ("commit", "rollback"):
            if command == "rollback":
                transaction.set_rollback(True)
            self.atomic.__exit__(None, None, None)
            self.atomic = None
        elif command == "stop" and self.atomic is not None:
            transaction.set_rollback(True)
            self.atomic.__exit__(None, None, None)
        return None


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started = [Writer() for _ in range(3)]
    for writer in started:
        writer.start()
    yield started
    for writer in started:
        writer.do("stop")
        writer.join(timeout=30)


@postgres_only
def test_a_transaction_that_began_first_and_commits_last_is_served_once_and_never_skipped(
    writers,
):
    a_writer, b_writer, _ = writers
    early, a_image, b_image = bare_images(3)
    first = committed_event(early)
    page = feed.page(events=Event.objects.all(), after=None, limit=10)
    assert page.items == [first]
    cursor = page.next

    a_writer.do("begin")
    a_event = a_writer.do("emit", a_image)  # A holds its transaction open
    b_writer.do("begin")
    b_event = b_writer.do("emit", b_image)
    b_writer.do("commit")  # B commits first

    # B's event is committed and visible, but A, older, is still running: nothing is served
    # past it, so the cursor cannot move beyond A's place.
    assert Event.objects.filter(pk=b_event).exists()
    held = feed.page(events=Event.objects.all(), after=cursor, limit=10)
    assert (held.items, held.next) == ([], cursor)

    a_writer.do("commit")
    wait_until_servable([a_event, b_event])

    after = feed.page(events=Event.objects.all(), after=cursor, limit=10)
    assert [e.pk for e in after.items] == [a_event, b_event]
    assert feed.page(events=Event.objects.all(), after=after.next, limit=10).items == []


@postgres_only
def test_id_order_alone_would_have_skipped_the_late_commit(writers):
    """The same interleaving read by id, as SQLite is: the reason PostgreSQL orders by txid
    below the snapshot's xmin (this shows the hazard is real, not the feed's behaviour)."""
    a_writer, b_writer, _ = writers
    a_image, b_image = bare_images(2)
    a_writer.do("begin")
    a_event = a_writer.do("emit", a_image)
    b_writer.do("begin")
    b_event = b_writer.do("emit", b_image)
    b_writer.do("commit")

    seen_by_id = list(Event.objects.order_by("id").values_list("pk", flat=True))
    a_writer.do("commit")

    assert seen_by_id == [b_event]
    assert a_event < b_event  # a reader at id b_event would never see a_event


OPS = st.lists(
    st.tuples(st.sampled_from(["emit", "commit", "rollback", "read"]), st.integers(0, 2)),
    min_size=1,
    max_size=24,
)


@postgres_only
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS, limit=st.integers(1, 3))
def test_any_interleaving_of_writers_and_a_reader_serves_each_committed_event_once_in_order(
    writers, ops, limit
):
    images = bare_images(len(writers))
    ids = Image.objects.filter(pk__in=[i.pk for i in images])
    events = Event.objects.for_images(ids)
    pending: list[list[int]] = [[] for _ in writers]  # each writer's uncommitted events
    committed: set[int] = set()
    read: list[int] = []
    cursor: str | None = None
    try:
        for op, n in ops:
            writer = writers[n]
            if op == "emit":
                if not pending[n] and writer.atomic is None:
                    writer.do("begin")
                pending[n].append(writer.do("emit", images[n]))
            elif op in ("commit", "rollback") and writer.atomic is not None:
                writer.do(op)
                if op == "commit":
                    committed.update(pending[n])
                pending[n] = []
            elif op == "read":
                page = feed.page(events=events, after=cursor, limit=limit)
                read += [e.pk for e in page.items]
                cursor = page.next
                assert set(read) <= committed
                assert len(read) == len(set(read))
        for n, writer in enumerate(writers):
            if writer.atomic is not None:
                writer.do("commit")
                committed.update(pending[n])
                pending[n] = []
        wait_until_servable(list(committed))
        rest, _ = read_all(events, after=cursor, limit=limit)
        read += rest
    finally:
        for writer in writers:
            if writer.atomic is not None:
                writer.do("rollback")

    assert sorted(read) == sorted(committed)  # each committed event, once; none rolled back
    order = dict(Event.objects.filter(pk__in=read).values_list("pk", "txid"))
    assert read == sorted(read, key=lambda pk: (order[pk], pk))  # one order, commit order
