"""Reading the review queue: filters, keyset pages, counts and the reviewer's figures.

Built for 100,000 waiting items among 1,000,000 images: pages are keyset pages on the
(status, status_changed_at, id) index, rows come with their holders in the same query, and
counts (which do scan) are cached for COUNTS_TTL seconds per filter, so a page view never
counts the table; a page that shows the whole filtered set, or disproves a cached count, gets
fresh counts (see counts).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.http import QueryDict
from django.utils import timezone

from moderation import limits
from moderation.models import Image, ImageCategory
from moderation.routing import SCENE_CATEGORIES

from .models import Claim, Decision
from .services import waiting
from .sla import order as due_order
from .sla.models import SlaDue

PAGE_SIZE = 50
COUNTS_TTL = 30
COUNT_CAP = 100_000
AGES = {
    "1h": ("Under an hour", None, timedelta(hours=1)),
    "1d": ("1 to 24 hours", timedelta(hours=1), timedelta(days=1)),
    "old": ("Over a day", timedelta(days=1), None),
}


@dataclass(frozen=True)
class Filters:
    scene: str = ""
    category: str = ""
    age: str = ""
    uploader: int | None = None

    @classmethod
    def from_query(cls, query: QueryDict, *, by_uploader: bool) -> Filters:
        """The filters in a query string; `uploader` only when `by_uploader` (admins: a
        reviewer's queue is never narrowed, or counted, by who uploaded)."""
        scene = query.get("scene", "")
        age = query.get("age", "")
        uploader = query.get("uploader", "")
        return cls(
            scene=scene if scene in SCENE_CATEGORIES else "",
            category=query.get("category", "").strip()[:64],
            age=age if age in AGES else "",
            uploader=limits.whole_number(uploader) if by_uploader else None,
        )

    def apply(self, images: QuerySet[Image], *, now: datetime) -> QuerySet[Image]:
        if self.category:
            images = images.filter(
                Exists(ImageCategory.objects.filter(image=OuterRef("pk"), category=self.category))
            )
        if self.scene:
            images = images.filter(
                Exists(
                    ImageCategory.objects.filter(
                        image=OuterRef("pk"), category__in=SCENE_CATEGORIES[self.scene]
                    )
                )
            )
        if self.age:
            _, newer_than, older_than = AGES[self.age]
            if newer_than is not None:
                images = images.filter(status_changed_at__lte=now - newer_than)
            if older_than is not None:
                images = images.filter(status_changed_at__gt=now - older_than)
        if self.uploader is not None:
            images = images.filter(uploaded_by_id=self.uploader)
        return images

    def query(self, **changes: object) -> str:
        """The query string for these filters with some changed (for links)."""
        values: dict[str, object] = {
            "scene": self.scene,
            "category": self.category,
            "age": self.age,
            "uploader": self.uploader,
        }
        values.update(changes)
        query = QueryDict(mutable=True)
        for key, value in values.items():
            if value not in ("", None):
                query[key] = str(value)
        return query.urlencode()

    @property
    def active(self) -> bool:
        return bool(self.scene or self.category or self.age or self.uploader is not None)


def _cursor(row: Row) -> str:
    return f"{int(row.status_changed_at.timestamp() * 1_000_000)}.{row.pk}"


def _parse_cursor(value: str) -> tuple[datetime, int] | None:
    micros, pk = (limits.whole_number(part) for part in value.partition(".")[::2])
    if micros is None or pk is None:
        return None
    try:
        moment = datetime.fromtimestamp(micros / 1_000_000, tz=timezone.get_current_timezone())
    except (OverflowError, OSError, ValueError):  # past the years a datetime can hold
        return None
    return moment, pk


@dataclass(frozen=True, slots=True)
class Row:
    """One waiting image as the queue lists it, read as plain values (no model instances)."""

    pk: int
    status_changed_at: datetime
    suggestion: str
    rate: float | None
    categories: list[str]
    uploader: str  # "" when the system uploaded it
    holder: str  # the reviewer with a live claim on it, or ""
    has_thumbnail: bool  # False for an image over the decode budget (no preview was made)
    due_at: datetime | None = None  # when it is due (reviews.sla), None with no target


# The columns a Row is read from; page() reads them with the annotated holder last and builds
# each Row from them.
_ROW_COLUMNS = (
    "pk",
    "status_changed_at",
    "imm_suggestion",
    "imm_rate",
    "imm_categories",
    "uploaded_by__username",
    "thumbnail",
)


@dataclass
class Page:
    rows: list[Row]
    next_cursor: str | None
    first: bool
    by_due: bool = False  # in due order (reviews.sla.order), not oldest first


def page(
    filters: Filters, *, after: str = "", now: datetime | None = None, by_due: bool = False
) -> Page:
    """One keyset page, oldest first (or most urgent first, `by_due`): a fixed number of queries
    whatever the page or queue size."""
    now = now or timezone.now()
    images = filters.apply(waiting(), now=now)
    if by_due:
        return _due_page(images, after=after, now=now)
    cursor = _parse_cursor(after) if after else None
    if cursor is not None:
        moment, pk = cursor
        # The plain >= lets PostgreSQL range-scan the (status, status_changed_at, id) index;
        # the OR alone makes it read every row before the cursor (128 ms at row 50,000).
        images = images.filter(status_changed_at__gte=moment).filter(
            Q(status_changed_at__gt=moment) | Q(status_changed_at=moment, pk__gt=pk)
        )
    # Who holds each row: a subquery on Claim's primary key (the image), one index probe a row.
    rows, more = _rows(images, now=now)
    return Page(rows, _cursor(rows[-1]) if more and rows else None, cursor is None)


def _due_page(images: QuerySet[Image], *, after: str, now: datetime) -> Page:
    narrowed = due_order.after(images, after) if after else None
    rows, more = _rows(due_order.ordered(narrowed if narrowed is not None else images), now=now)
    last = rows[-1] if more and rows else None
    return Page(
        rows,
        due_order.cursor(last.due_at, last.pk) if last else None,
        narrowed is None,
        by_due=True,
    )


def _rows(images: QuerySet[Image], *, now: datetime) -> tuple[list[Row], bool]:
    """The first PAGE_SIZE rows of `images` as Rows, and whether there are more."""
    # Who holds each row: a subquery on Claim's primary key (the image), one index probe a row;
    # its due time likewise, from SlaDue's primary key.
    holder = Claim.objects.filter(image=OuterRef("pk"), expires_at__gt=now).values(
        "reviewer__username"
    )
    due = SlaDue.objects.filter(image=OuterRef("pk")).values("due_at")
    values = list(
        images.annotate(holder=Subquery(holder), due=Subquery(due)).values_list(
            *_ROW_COLUMNS, "holder", "due"
        )[: PAGE_SIZE + 1]
    )
    rows = [
        Row(
            pk,
            changed,
            suggestion,
            rate,
            categories or [],
            uploader or "",
            holder or "",
            bool(thumb),
            due_at,
        )
        for (
            pk,
            changed,
            suggestion,
            rate,
            categories,
            uploader,
            thumb,
            holder,
            due_at,
        ) in values[:PAGE_SIZE]
    ]
    return rows, len(values) > PAGE_SIZE


@dataclass
class Counts:
    waiting: int
    capped: bool
    oldest: datetime | None
    categories: list[tuple[str, int]] = field(default_factory=list)
    scenes: dict[str, int] = field(default_factory=dict)
    ages: dict[str, int] = field(default_factory=dict)


def counts(filters: Filters, *, page: Page | None = None, now: datetime | None = None) -> Counts:
    """Counts for the filter bar, never contradicting the page they are shown above.

    They scan, so for a queue larger than a page they are cached COUNTS_TTL seconds. `page` (the
    one shown under them) is checked against them: a first page with no next page is the whole
    filtered set, at most a page of rows, so its counts are taken fresh (cheap); a cached count
    the page disproves (fewer than the rows shown, or not more than them while there is a next
    page) is taken again; and the first page of the unfiltered queue shows the oldest waiting
    item itself.
    """
    key = f"reviews:counts:{filters.query()}"
    cached: Counts | None = cache.get(key)
    now = now or timezone.now()
    whole = page is not None and page.first and page.next_cursor is None
    if cached is None or whole or (page is not None and _disproves(page, cached)):
        # With an age filter the age counts cover the other ages too, which a small page does
        # not bound: those stay as cached (the shown one is the page's own count), and this
        # mix is not cached, so the cached entry still expires and is counted whole again.
        ages = cached.ages if whole and cached is not None and filters.age else None
        cached = _count(filters, now=now, ages=ages)
        if ages is None:
            cache.set(key, cached, COUNTS_TTL)
    if page is not None and page.first and page.rows and not filters.active and not page.by_due:
        # The first row of the unfiltered queue is the oldest waiting item (no query).
        cached = replace(cached, oldest=page.rows[0].status_changed_at)
    return cached


def _disproves(page: Page, counts: Counts) -> bool:
    shown = len(page.rows)
    return counts.waiting < shown or (page.next_cursor is not None and counts.waiting <= shown)


def _count(filters: Filters, *, now: datetime, ages: dict[str, int] | None = None) -> Counts:
    scoped = filters.apply(waiting(), now=now)
    total = scoped.order_by()[:COUNT_CAP].count()
    oldest = waiting().values_list("status_changed_at", flat=True).first()
    categories = list(
        ImageCategory.objects.filter(image__in=scoped.order_by().values("pk"))
        .values_list("category")
        .annotate(n=Count("image_id"))
        .order_by("-n", "category")[:30]
    )
    # Images per scene, each image once: summing category counts would count an image with
    # two of a scene's labels twice (and miss labels outside the top 30).
    # One pass over the category rows of the scoped images (a hash join), not five EXISTS
    # probes per waiting image: 127 ms instead of 742 ms for 100,000 waiting (bench/queue.py).
    per_scene = ImageCategory.objects.filter(image__in=scoped.order_by().values("pk")).aggregate(
        **{
            f"scene_{scene}": Count("image_id", distinct=True, filter=Q(category__in=labels))
            for scene, labels in SCENE_CATEGORIES.items()
        }
    )
    scenes = {scene: per_scene[f"scene_{scene}"] for scene in SCENE_CATEGORIES}
    if ages is not None:
        ages = {**ages, filters.age: total}
    else:
        ages = {}
        # Each age count applies every other filter, as the scene and category counts do.
        others = Filters(filters.scene, filters.category, "", filters.uploader)
        for name, (_, newer_than, older_than) in AGES.items():
            bucket = others.apply(waiting(), now=now)
            if newer_than is not None:
                bucket = bucket.filter(status_changed_at__lte=now - newer_than)
            if older_than is not None:
                bucket = bucket.filter(status_changed_at__gt=now - older_than)
            ages[name] = bucket.order_by()[:COUNT_CAP].count()
    return Counts(
        waiting=total,
        capped=total >= COUNT_CAP,
        oldest=oldest,
        categories=categories,
        scenes={k: v for k, v in scenes.items() if v},
        ages=ages,
    )


@dataclass
class Figures:
    decisions_today: int
    median_seconds: float | None
    waiting: int
    oldest_age: timedelta | None


def figures(reviewer_id: int, counts_: Counts, *, now: datetime | None = None) -> Figures:
    """The reviewer's day so far, counted and sorted in the database: the page reads two
    numbers and the middle one or two times, not every decision of the day."""
    now = now or timezone.now()
    start = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    # Review work only: not undos, nor an admin's reopens and overrides of settled images.
    today = Decision.objects.undoable_kinds().filter(reviewer_id=reviewer_id, created_at__gte=start)
    totals = today.aggregate(decided=Count("id"), timed=Count("seconds"))
    median = None
    if totals["timed"]:
        # The middle one or two of the timed decisions, read from the sorted list.
        timed = totals["timed"]
        middle = list(
            today.exclude(seconds=None)
            .order_by("seconds")
            .values_list("seconds", flat=True)[(timed - 1) // 2 : timed // 2 + 1]
        )
        median = statistics.fmean(s for s in middle if s is not None)
    return Figures(
        decisions_today=totals["decided"],
        median_seconds=median,
        waiting=counts_.waiting,
        oldest_age=(now - counts_.oldest) if counts_.oldest else None,
    )


def uploaders() -> list[tuple[int, str]]:
    """Who uploaded the waiting images (the admins' uploader filter), cached like the counts."""
    key = "reviews:uploaders"
    cached = cache.get(key)
    if cached is None:
        # One index probe per user, not a DISTINCT over every waiting image (0.2 ms, not 48).
        cached = list(
            get_user_model()
            .objects.filter(Exists(waiting().filter(uploaded_by=OuterRef("pk")).order_by()))
            .order_by("username")
            .values_list("pk", "username")[:50]
        )
        cache.set(key, cached, COUNTS_TTL)
    return cached
