"""GET /api/v1/decisions: the client's outcomes and later changes, in order, behind a cursor."""

from __future__ import annotations

import pytest

from moderation.events.models import Event
from moderation.imm import pipeline
from moderation.models import Image
from reviews import services as review_services

from .api_helpers import png
from .test_pipeline import _imm_settings, deliver, fake, imm, sleeps  # noqa: F401 - fixtures

# Committed transactions: on PostgreSQL the feed serves only what transactions that have ended
# wrote, and a test's own open transaction would hold back everything it wrote.
pytestmark = pytest.mark.django_db(transaction=True)


def settled_by_imm(api, imm, n: int, suggestion: str, **fields) -> int:  # noqa: F811
    image_id = api.submit(png(n), **fields).json()["id"]
    assert pipeline.submit(image_id=image_id, client=imm).what == "submitted"
    task = Image.objects.get(pk=image_id).moderation_tasks.get()
    categories = {"pass": (), "block": ("porn",), "review": ("sexy",)}[suggestion]
    deliver(task.task_id, suggestion, categories=categories)
    return image_id


def follow(api, after: str | None = None, limit: int = 100) -> dict:
    query = f"?limit={limit}" + (f"&after={after}" if after else "")
    answer = api.get(f"/api/v1/decisions{query}")
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_the_feed_lists_imms_and_a_persons_outcomes_with_the_clients_own_ids(
    api,
    imm,  # noqa: F811
    admin_user,
):
    blocked = settled_by_imm(api, imm, 1, "block", external_id="post-1")
    waiting = settled_by_imm(api, imm, 2, "review", external_id="post-2")
    review_services.decide(image_id=waiting, reviewer=admin_user, verdict="approve")
    page = follow(api)
    items = page["items"]
    assert [(i["image_id"], i["type"]) for i in items] == [
        (blocked, "image.rejected"),
        (waiting, "image.approved"),
    ]
    assert [i["external_id"] for i in items] == ["post-1", "post-2"]
    assert items[0]["decided_by"] == {"kind": "imm", "name": "IMM"}
    assert items[1]["decided_by"] == {"kind": "person", "name": admin_user.username}
    assert items[1]["status"] == "approved"
    assert items[0]["id"] == Event.objects.get(image_id=blocked).public_id
    assert page["next"]


def test_following_the_cursor_yields_each_event_once_and_a_later_change(
    api,
    imm,  # noqa: F811
    admin_user,
):
    ids = [settled_by_imm(api, imm, n, "pass") for n in range(1, 6)]
    first = follow(api, limit=2)
    second = follow(api, first["next"], limit=2)
    third = follow(api, second["next"], limit=2)
    seen = [i["image_id"] for p in (first, second, third) for i in p["items"]]
    assert seen == ids
    idle = follow(api, third["next"], limit=2)
    assert idle == {"items": [], "next": third["next"]}

    review_services.override(
        image_id=ids[0], admin=admin_user, to=Image.Status.REJECTED, reason="policy 4.2"
    )
    later = follow(api, third["next"])["items"]
    assert [(i["image_id"], i["type"], i["sequence"]) for i in later] == [
        (ids[0], "image.overridden", 2)
    ]
    assert later[0]["previous_status"] == "approved"
    assert later[0]["status"] == "rejected"


def test_another_clients_images_are_not_in_the_feed(api, api_for, imm):  # noqa: F811
    mine = settled_by_imm(api, imm, 1, "pass")
    other = api_for("other-shop")
    theirs = settled_by_imm(other, imm, 2, "block")
    assert [i["image_id"] for i in follow(api)["items"]] == [mine]
    assert [i["image_id"] for i in follow(other)["items"]] == [theirs]


def test_an_image_uploaded_on_the_page_is_in_no_clients_feed(api, make_image, admin_user):
    image = make_image(status=Image.Status.AWAITING_REVIEW)
    review_services.decide(image_id=image.pk, reviewer=admin_user, verdict="approve")
    assert Event.objects.filter(image=image).exists()
    assert follow(api)["items"] == []


@pytest.mark.parametrize(
    "cursor",
    ["nonsense", "MTox.Mjox", "a" * 201],
)
def test_a_cursor_the_feed_did_not_give_is_a_400_naming_the_field(api, cursor):
    answer = api.get(f"/api/v1/decisions?after={cursor}")
    assert answer.status_code in (400, 422)
    error = answer.json()["error"]
    assert error["field"] == "after"
    assert error["message"]


def test_an_altered_cursor_is_refused(api, imm):  # noqa: F811
    settled_by_imm(api, imm, 1, "pass")
    cursor = follow(api)["next"]
    altered = cursor[:-1] + ("A" if cursor[-1] != "A" else "B")
    answer = api.get(f"/api/v1/decisions?after={altered}")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_cursor"


@pytest.mark.parametrize("limit", [0, 501, -1])
def test_a_limit_out_of_range_is_refused_in_the_one_error_shape(api, limit):
    answer = api.get(f"/api/v1/decisions?limit={limit}")
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "limit"


def test_the_feed_needs_a_key_with_the_read_scope(api_for):
    submit_only = api_for("uploader", scopes=("submit",))
    assert submit_only.get("/api/v1/decisions").status_code == 403
    submit_only.key = None
    answer = submit_only.get("/api/v1/decisions")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"]
