"""The IMM client against httpx.MockTransport: signing, the wire, parsing, errors and retries."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from moderation.imm import signing as acs3
from moderation.imm.client import (
    BlockFrame,
    ImageModerationResult,
    ImmClient,
    ImmConfig,
    ImmError,
    ModerationVerdict,
    TaskInfo,
)

VECTORS = {
    v["name"]: v
    for v in json.loads((Path(__file__).parent / "data" / "signature_vectors.json").read_text())[
        "vectors"
    ]
}
SECRET = "test-secret-do-not-leak-0123456789"
TOKEN = "sts-token-do-not-leak-abcdef"
TASK_ID = "ImageModeration-00000000-1111-2222-3333-444444444444"

Reply = Callable[[httpx.Request], httpx.Response]


def ok(body: Any, headers: dict[str, str] | None = None) -> Reply:
    return lambda request: httpx.Response(200, json=body, headers=headers)


def fail(
    status: int,
    code: str,
    message: str = "",
    request_id: str = "req-err",
    headers: dict[str, str] | None = None,
) -> Reply:
    body = {
        "RequestId": request_id,
        "HostId": "imm.cn-hangzhou.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": "https://api.aliyun.com/troubleshoot?q=" + code,
    }
    return lambda request: httpx.Response(status, json=body, headers=headers)


def raise_(exc_type: type[httpx.TransportError], text: str = "boom") -> Reply:
    def reply(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)

    return reply


def canned(name: str) -> dict[str, Any]:
    return copy.deepcopy(VECTORS[name]["canned_response_body"])


@dataclass
class Harness:
    client: ImmClient
    config: ImmConfig
    requests: list[httpx.Request] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)


@pytest.fixture
def imm() -> Iterator[Callable[..., Harness]]:
    """Build a client whose transport plays `replies` in order (the last one repeats)."""
    made: list[Harness] = []

    def make(
        *replies: Reply,
        random: float = 0.5,
        now: Callable[[], datetime] | None = None,
        **config: Any,
    ) -> Harness:
        settings: dict[str, Any] = {
            "endpoint": "https://imm.cn-hangzhou.aliyuncs.com",
            "region": "cn-hangzhou",
            "project": "moderation-demo",
            "access_key_id": "LTAI5tEXAMPLEaccessKeyId",
            "access_key_secret": SECRET,
        }
        settings.update(config)
        queue = list(replies) or [ok(canned("get_task_image_moderation"))]
        harness = Harness(client=None, config=ImmConfig(**settings))  # type: ignore[arg-type]

        def handler(request: httpx.Request) -> httpx.Response:
            harness.requests.append(request)
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            return reply(request)

        harness.client = ImmClient(
            harness.config,
            transport=httpx.MockTransport(handler),
            sleep=harness.sleeps.append,
            random=lambda: random,
            _now=now,
        )
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.client.close()


def query_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.url.query.decode("ascii"), keep_blank_values=True))


def assert_correctly_signed(request: httpx.Request, config: ImmConfig) -> None:
    """Recompute the signature from the request as it went out, the way IMM would."""
    auth = acs3.parse_authorization(request.headers["authorization"])
    assert auth.access_key_id == config.access_key_id
    sent_acs = [name for name in request.headers if name.startswith("x-acs-")]
    assert auth.signed_headers == sorted(["host", *sent_acs])
    query = query_of(request)
    expected = acs3.sign(
        method=request.method,
        query=query,
        headers={name: request.headers[name] for name in auth.signed_headers},
        signed_header_names=auth.signed_headers,
        access_key_id=config.access_key_id,
        access_key_secret=config.access_key_secret,
        body=request.content,
    )
    assert acs3.signatures_match(expected.signature, auth.signature)
    assert request.headers["x-acs-content-sha256"] == acs3.EMPTY_BODY_SHA256
    assert request.content == b""


# Signing and the wire


@pytest.mark.parametrize(
    ("call", "action"),
    [
        (lambda c: c.create_image_moderation_task(source_uri="oss://b/a.jpg"), "Create"),
        (lambda c: c.get_task(TASK_ID), "GetTask"),
        (lambda c: c.get_image_moderation_result(TASK_ID), "GetImageModerationResult"),
        (lambda c: c.list_tasks(), "ListTasks"),
    ],
    ids=["create", "get_task", "get_result", "list_tasks"],
)
def test_every_operation_is_signed_so_imm_can_recompute_the_signature(imm, call, action):
    harness = imm(ok({"RequestId": "r", "TaskId": TASK_ID, "Tasks": []}))
    call(harness.client)
    [request] = harness.requests
    assert request.method == "POST"
    assert request.url.path == "/"
    assert request.headers["x-acs-action"].startswith(action)
    assert request.headers["x-acs-version"] == "2020-09-30"
    assert request.headers["accept"] == "application/json"
    assert_correctly_signed(request, harness.config)


def test_it_reproduces_the_sdk_vector_for_a_create_with_minimal_headers():
    vector = VECTORS["create_image_moderation_task_minimal_headers"]
    inputs = vector["inputs"]
    params = inputs["api_parameters_before_serialization"]
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=canned("create_image_moderation_task_mns"))

    config = ImmConfig(
        endpoint=f"https://{inputs['endpoint']}",
        region=inputs["region_id"],
        project=params["ProjectName"],
        access_key_id=inputs["access_key_id"],
        access_key_secret=inputs["access_key_secret"],
    )
    with ImmClient(
        config,
        transport=httpx.MockTransport(handler),
        _now=lambda: datetime(2024, 5, 20, 8, 30, tzinfo=UTC),
        _nonce=lambda: inputs["x_acs_signature_nonce"],
    ) as client:
        client.create_image_moderation_task(
            source_uri=params["SourceURI"],
            scenes=params["Scenes"],
            tags=params["Tags"],
            user_data=params["UserData"],
            notification=params["Notification"],
        )

    [request] = sent
    for name, value in vector["request"]["headers_sent"].items():
        assert request.headers[name] == value
    assert str(request.url) == vector["request"]["wire_url_rfc3986_equivalent"]
    assert request.url.query.decode() == vector["signing"]["canonical_query_string"]


def test_the_query_sent_is_byte_for_byte_the_canonical_query_that_was_signed(imm):
    harness = imm(ok(canned("create_image_moderation_task_mns")))
    harness.client.create_image_moderation_task(
        source_uri="oss://review-bucket/a b+c*d~e/é.jpg",
        scenes=["porn", "terrorism"],
        interval=2,
        max_frames=10,
        tags={"queue": "default", "note": "a&b=c d"},
        user_data='{"image_id": 1, "name": "café + tea"}',
        notification={"MNS": {"TopicName": "imm-results"}},
        credential_config={"ServiceRole": "AliyunIMMDefaultRole"},
    )
    [request] = harness.requests
    query = query_of(request)
    assert request.url.query == acs3.canonical_query(query).encode("ascii")
    # Spaces go as %20 and '+' as %2B, never a bare '+' that a server might read as a space.
    assert b"+" not in request.url.query
    assert b"%20" in request.url.query
    assert query == {
        "ProjectName": "moderation-demo",
        "SourceURI": "oss://review-bucket/a b+c*d~e/é.jpg",
        "Scenes": '["porn","terrorism"]',
        "Interval": "2",
        "MaxFrames": "10",
        "Tags": '{"queue":"default","note":"a&b=c d"}',
        "UserData": '{"image_id": 1, "name": "café + tea"}',
        "Notification": '{"MNS":{"TopicName":"imm-results"}}',
        "CredentialConfig": '{"ServiceRole":"AliyunIMMDefaultRole"}',
    }
    assert_correctly_signed(request, harness.config)


def test_it_serialises_create_parameters_as_the_sdk_does(imm):
    vector = VECTORS["create_image_moderation_task_mns"]
    params = vector["inputs"]["api_parameters_before_serialization"]
    harness = imm(ok(canned("create_image_moderation_task_mns")))
    harness.client.create_image_moderation_task(
        source_uri=params["SourceURI"],
        scenes=params["Scenes"],
        tags=params["Tags"],
        user_data=params["UserData"],
        notification=params["Notification"],
    )
    assert query_of(harness.requests[0]) == vector["request"]["query_params"]


def test_it_signs_the_host_with_a_non_default_port_as_httpx_sends_it(imm):
    harness = imm(endpoint="http://127.0.0.1:8001/")
    harness.client.get_task(TASK_ID)
    [request] = harness.requests
    assert request.headers["host"] == "127.0.0.1:8001"
    assert str(request.url).startswith("http://127.0.0.1:8001/?")
    assert_correctly_signed(request, harness.config)


def test_it_sends_and_signs_the_sts_headers_when_a_security_token_is_set(imm):
    harness = imm(security_token=TOKEN)
    harness.client.get_task(TASK_ID)
    [request] = harness.requests
    assert request.headers["x-acs-accesskey-id"] == "LTAI5tEXAMPLEaccessKeyId"
    assert request.headers["x-acs-security-token"] == TOKEN
    signed = acs3.parse_authorization(request.headers["authorization"]).signed_headers
    assert {"x-acs-accesskey-id", "x-acs-security-token"} <= set(signed)
    assert_correctly_signed(request, harness.config)


def test_without_a_security_token_no_sts_headers_are_sent(imm):
    harness = imm()
    harness.client.get_task(TASK_ID)
    assert "x-acs-security-token" not in harness.requests[0].headers
    assert "x-acs-accesskey-id" not in harness.requests[0].headers


def test_each_attempt_is_signed_afresh_with_a_new_nonce_and_date():
    clock = iter(datetime(2024, 5, 20, 8, 30, tzinfo=UTC) + timedelta(seconds=n) for n in range(9))
    sent: list[httpx.Request] = []
    replies = iter([fail(503, "ServiceUnavailable"), fail(500, "InternalError")])

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return next(replies, ok(canned("get_task_image_moderation")))(request)

    config = ImmConfig(
        endpoint="https://imm.cn-hangzhou.aliyuncs.com",
        region="cn-hangzhou",
        project="moderation-demo",
        access_key_id="ak",
        access_key_secret=SECRET,
    )
    with ImmClient(
        config,
        transport=httpx.MockTransport(handler),
        sleep=lambda s: None,
        _now=lambda: next(clock),
    ) as client:
        client.get_task(TASK_ID)

    assert len(sent) == 3
    assert [r.headers["x-acs-date"] for r in sent] == [
        "2024-05-20T08:30:00Z",
        "2024-05-20T08:30:01Z",
        "2024-05-20T08:30:02Z",
    ]
    nonces = [r.headers["x-acs-signature-nonce"] for r in sent]
    assert len(set(nonces)) == 3
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces)
    assert len({r.headers["authorization"] for r in sent}) == 3
    for request in sent:
        assert_correctly_signed(request, config)


def test_the_date_is_sent_in_utc_whatever_the_clocks_zone(imm):
    beijing = datetime(2024, 5, 21, 0, 30, 5, tzinfo=timezone(timedelta(hours=8)))
    harness = imm(now=lambda: beijing)
    harness.client.get_task(TASK_ID)
    assert harness.requests[0].headers["x-acs-date"] == "2024-05-20T16:30:05Z"


# Operations


def test_it_parses_a_created_task(imm):
    harness = imm(ok(canned("create_image_moderation_task_mns")))
    result = harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert result.request_id == "EXAMPLE-REQ-0001"
    assert result.task_id == TASK_ID
    assert result.event_id == "EXAMPLE-EVENT-0001"
    assert harness.requests[0].headers["x-acs-action"] == "CreateImageModerationTask"


def test_a_create_answered_without_a_task_id_is_ambiguous(imm):
    harness = imm(ok({"RequestId": "r-1"}))
    with pytest.raises(ImmError) as caught:
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert caught.value.code == "InvalidResponse"
    assert caught.value.ambiguous
    assert len(harness.requests) == 1


def test_get_task_asks_for_an_image_moderation_task_and_parses_it(imm):
    vector = VECTORS["get_task_image_moderation"]
    harness = imm(ok(canned("get_task_image_moderation")))
    task = harness.client.get_task(TASK_ID)
    assert query_of(harness.requests[0]) == vector["request"]["query_params"]
    assert harness.requests[0].headers["x-acs-action"] == "GetTask"
    assert task == TaskInfo(
        task_id=TASK_ID,
        task_type="ImageModeration",
        status="Succeeded",
        code="",
        message="",
        start_time="2024-05-20T08:30:01.123Z",
        end_time="2024-05-20T08:30:03.456Z",
        tags={"queue": "default", "submitted_by": "user-42"},
        user_data='{"image_id":1234,"tenant":"acme"}',
        raw=vector["canned_response_body"],
    )


def test_get_image_moderation_result_parses_the_verdict(imm):
    vector = VECTORS["get_image_moderation_result"]
    harness = imm(ok(canned("get_image_moderation_result")))
    result = harness.client.get_image_moderation_result(TASK_ID)
    assert query_of(harness.requests[0]) == vector["request"]["query_params"]
    assert harness.requests[0].headers["x-acs-action"] == "GetImageModerationResult"
    assert result.request_id == "EXAMPLE-REQ-0005"
    assert result.task_id == TASK_ID
    assert result.status == "Succeeded"
    assert result.event_id == "EXAMPLE-EVENT-0001"
    assert result.user_data == '{"image_id":1234,"tenant":"acme"}'
    assert result.start_time == "2024-05-20T08:30:01.123Z"
    assert result.end_time == "2024-05-20T08:30:03.456Z"
    assert result.verdict == ModerationVerdict(
        uri="oss://review-bucket/uploads/2024/05/20/img_0001.jpg",
        suggestion="block",
        categories=["porn"],
        frames_total=1,
        block_frames=[BlockFrame(label="porn", offset=0, rate=99.91)],
    )
    assert result.raw == vector["canned_response_body"]


@pytest.mark.parametrize(
    "moderation_result",
    [None, {}, {"Suggestion": ""}, {"URI": "oss://b/a.jpg", "Categories": []}],
    ids=["absent", "empty", "blank-suggestion", "no-suggestion"],
)
def test_a_result_without_a_suggestion_has_no_verdict(imm, moderation_result):
    body = canned("get_image_moderation_result")
    body.update(Status="Running", EndTime="")
    body.pop("ModerationResult")
    if moderation_result is not None:
        body["ModerationResult"] = moderation_result
    harness = imm(ok(body))
    result = harness.client.get_image_moderation_result(TASK_ID)
    assert result.status == "Running"
    assert result.verdict is None


def test_a_failed_task_reports_its_code_and_message(imm):
    body = {
        "RequestId": "r",
        "TaskId": TASK_ID,
        "TaskType": "ImageModeration",
        "Status": "Failed",
        "Code": "InvalidArgument",
        "Message": "image download timed out",
    }
    harness = imm(ok(body))
    result = harness.client.get_image_moderation_result(TASK_ID)
    assert (result.status, result.code, result.message) == (
        "Failed",
        "InvalidArgument",
        "image download timed out",
    )
    assert result.verdict is None


def test_list_tasks_sends_the_filters_and_parses_the_page(imm):
    vector = VECTORS["list_tasks_image_moderation"]
    harness = imm(ok(canned("list_tasks_image_moderation")))
    page = harness.client.list_tasks(
        tag_selector="queue=default",
        status="Succeeded",
        max_results=20,
        order="desc",
        sort="StartTime",
    )
    expected = dict(vector["request"]["query_params"])
    del expected["StartTimeRange"]  # not offered by the client
    assert query_of(harness.requests[0]) == expected
    assert harness.requests[0].headers["x-acs-action"] == "ListTasks"
    assert page.request_id == "EXAMPLE-REQ-0004"
    assert page.next_token == ""
    [task] = page.tasks
    assert task.task_id == TASK_ID
    assert task.status == "Succeeded"
    assert task.tags == {"queue": "default"}
    assert task.user_data == '{"image_id":1234}'
    assert task.raw == vector["canned_response_body"]["Tasks"][0]


def test_list_tasks_by_default_asks_for_image_moderation_tasks_100_at_a_time(imm):
    harness = imm(ok({"RequestId": "r"}))
    page = harness.client.list_tasks()
    assert query_of(harness.requests[0]) == {
        "ProjectName": "moderation-demo",
        "TaskTypes": '["ImageModeration"]',
        "MaxResults": "100",
    }
    assert page.tasks == []
    assert page.next_token == ""


@pytest.mark.parametrize("max_results", [0, 101])
def test_list_tasks_refuses_a_page_size_imm_does_not_accept(imm, max_results):
    harness = imm()
    with pytest.raises(ValueError, match="max_results"):
        harness.client.list_tasks(max_results=max_results)
    assert harness.requests == []


def test_iter_tasks_follows_next_token_across_three_pages(imm):
    pages = {
        None: (["t1", "t2"], "page-2"),
        "page-2": (["t3", "t4"], "page-3"),
        "page-3": (["t5"], ""),
    }

    def reply(request: httpx.Request) -> httpx.Response:
        ids, next_token = pages[query_of(request).get("NextToken")]
        tasks = [{"TaskId": i, "TaskType": "ImageModeration", "Status": "Running"} for i in ids]
        return httpx.Response(200, json={"RequestId": "r", "Tasks": tasks, "NextToken": next_token})

    harness = imm(reply)
    tasks = list(harness.client.iter_tasks(tag_selector="image=42", max_results=2))
    assert [t.task_id for t in tasks] == ["t1", "t2", "t3", "t4", "t5"]
    queries = [query_of(r) for r in harness.requests]
    assert [q.get("NextToken") for q in queries] == [None, "page-2", "page-3"]
    assert all(q["TagSelector"] == "image=42" and q["MaxResults"] == "2" for q in queries)


def test_iter_tasks_refuses_a_next_token_that_comes_back_again(imm):
    harness = imm(ok({"RequestId": "r", "Tasks": [{"TaskId": "t1"}], "NextToken": "same"}))
    with pytest.raises(ImmError, match="NextToken") as caught:
        list(harness.client.iter_tasks())
    assert caught.value.code == "InvalidResponse"
    assert len(harness.requests) == 2


def test_a_verdict_is_read_tolerantly_and_written_back_in_imms_shape():
    verdict = ModerationVerdict.from_dict(
        {
            "URI": "oss://b/a.gif",
            "Suggestion": "review",
            "Categories": ["sexy"],
            "Frames": {
                "TotalCount": "3",
                "BlockFrames": [
                    {"Label": "sexy", "Offset": 2, "Rate": "97.5"},
                    {"Label": "porn", "Offset": "1", "Rate": 88},
                    {"Label": "odd"},
                ],
            },
        }
    )
    assert verdict.frames_total == 3
    assert verdict.block_frames == [
        BlockFrame("sexy", 2, 97.5),
        BlockFrame("porn", 1, 88.0),
        BlockFrame("odd", 0, 0.0),
    ]
    assert verdict.as_dict() == {
        "URI": "oss://b/a.gif",
        "Suggestion": "review",
        "Categories": ["sexy"],
        "Frames": {
            "TotalCount": 3,
            "BlockFrames": [
                {"Label": "sexy", "Offset": 2, "Rate": 97.5},
                {"Label": "porn", "Offset": 1, "Rate": 88.0},
                {"Label": "odd", "Offset": 0, "Rate": 0.0},
            ],
        },
    }
    assert ModerationVerdict.from_dict(verdict.as_dict()) == verdict


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        ({"Frames": [1]}, "ModerationResult.Frames is a list, not an object"),
        ({"Categories": "porn"}, "ModerationResult.Categories is a string, not a list"),
        ({"Categories": [{"a": 1}]}, "ModerationResult.Categories[0] is an object, not a string"),
        ({"Frames": {"BlockFrames": {}}}, "Frames.BlockFrames is an object, not a list"),
        ({"Frames": {"BlockFrames": ["x"]}}, "Frames.BlockFrames[0] is a string, not an object"),
        ({"Frames": {"TotalCount": -1}}, "Frames.TotalCount is out of range"),
        ({"Frames": {"TotalCount": 2**40}}, "Frames.TotalCount is out of range"),
        ({"Frames": {"TotalCount": "many"}}, "Frames.TotalCount is not a whole number"),
        ({"Frames": {"BlockFrames": [{"Rate": "not a number"}]}}, "Rate is not a number"),
        ({"Frames": {"BlockFrames": [{"Rate": float("nan")}]}}, "Rate is not a finite number"),
        ({"Frames": {"BlockFrames": [{"Offset": 1.5}]}}, "Offset is not a whole number"),
        ({"URI": "a\x00b"}, "ModerationResult.URI holds a NUL character"),
    ],
)
def test_a_verdict_of_the_wrong_shape_is_refused_with_the_reason(verdict, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        ModerationVerdict.from_dict({"Suggestion": "block", **verdict})


def test_an_unreadable_verdict_from_imm_is_an_invalid_response(imm):
    answer = {**canned("get_image_moderation_result")}
    answer["ModerationResult"] = {**answer["ModerationResult"], "Frames": "lots"}
    harness = imm(ok(answer))
    with pytest.raises(ImmError, match="unreadable verdict") as caught:
        harness.client.get_image_moderation_result(TASK_ID)
    assert caught.value.code == "InvalidResponse"


def test_a_verdict_without_frames_or_categories_gets_empty_defaults():
    verdict = ModerationVerdict.from_dict({"Suggestion": "pass"})
    assert verdict == ModerationVerdict(
        uri="", suggestion="pass", categories=[], frames_total=0, block_frames=[]
    )
    assert ModerationVerdict.from_dict({"Suggestion": "pass", "Frames": None}) == verdict


def test_task_info_and_results_tolerate_missing_and_null_fields():
    task = TaskInfo.from_dict({"TaskId": "t", "Tags": None, "UserData": None})
    assert (task.task_id, task.status, task.tags, task.user_data) == ("t", "", {}, "")
    result = ImageModerationResult.from_dict({})
    assert result.task_id == ""
    assert result.verdict is None


# Errors


def test_it_reads_imms_error_body(imm):
    harness = imm(
        fail(400, "InvalidArgument", "The parameter ProjectName is required.", request_id="R-9")
    )
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    error = caught.value
    assert (error.code, error.message, error.request_id, error.http_status) == (
        "InvalidArgument",
        "The parameter ProjectName is required.",
        "R-9",
        400,
    )
    assert error.retry_after is None
    assert not error.ambiguous
    assert str(error) == (
        "InvalidArgument: The parameter ProjectName is required. (RequestId R-9, HTTP 400)"
    )


def test_it_reads_an_error_body_with_lower_case_keys(imm):
    body = {"code": "ResourceNotFound", "message": "The specified resource TaskId is not found."}
    harness = imm(
        lambda r: httpx.Response(
            404, json={**body, "requestId": "R-lower"}, headers={"x-acs-request-id": "R-header"}
        )
    )
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    assert caught.value.code == "ResourceNotFound"
    assert caught.value.message == "The specified resource TaskId is not found."
    assert caught.value.request_id == "R-lower"


def test_the_request_id_falls_back_to_the_response_header(imm):
    harness = imm(
        lambda r: httpx.Response(
            400, json={"Code": "InvalidArgument"}, headers={"x-acs-request-id": "R-header"}
        )
    )
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    assert caught.value.request_id == "R-header"


def test_a_non_json_error_body_still_gives_an_error_with_the_http_status(imm):
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    harness = imm(lambda r: httpx.Response(502, text=html), max_attempts=1)
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    error = caught.value
    assert error.code == "InvalidResponse"
    assert error.http_status == 502
    assert "502 Bad Gateway" in error.message
    assert error.retryable


def test_a_2xx_that_is_not_json_is_an_invalid_response(imm):
    harness = imm(lambda r: httpx.Response(200, text="OK"))
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    assert caught.value.code == "InvalidResponse"
    assert caught.value.http_status == 200
    assert not caught.value.retryable
    assert len(harness.requests) == 1


@pytest.mark.parametrize(
    ("code", "status", "message", "access_denied", "retryable"),
    [
        ("SignatureDoesNotMatch", 400, "", True, False),
        ("IncompleteSignature", 400, "", True, False),
        ("InvalidAccessKeyId.NotFound", 404, "", True, False),
        ("Forbidden.RAM", 403, "", True, False),
        ("NoPermission", 403, "", True, False),
        ("InvalidSecurityToken.Expired", 400, "", True, False),
        ("AccessDenied", 403, "", True, False),
        ("Unknown", 401, "", True, False),
        ("Throttling.User", 403, "", False, True),
        ("Throttling", 429, "", False, True),
        ("Denied", 400, "Request was denied due to user flow control.", False, True),
        ("InternalError", 500, "", False, True),
        ("ServiceUnavailable", 503, "", False, True),
        ("InvalidArgument", 400, "", False, False),
        ("MissingTaskId", 400, "", False, False),
        ("InvalidJSON", 400, "", False, False),
        ("ResourceNotFound", 404, "", False, False),
        ("LimitExceededError", 400, "", False, False),
        ("ResourceAlreadyExists", 400, "", False, False),
        ("Transport", 0, "ConnectError", False, True),
        ("Timeout", 0, "ReadTimeout", False, True),
        ("InvalidResponse", 200, "", False, False),
        ("InvalidResponse", 502, "", False, True),
    ],
)
def test_errors_are_classified_as_access_denied_or_retryable(
    code, status, message, access_denied, retryable
):
    error = ImmError(code, message, http_status=status)
    assert error.access_denied is access_denied
    assert error.retryable is retryable


def test_an_x_acs_retry_after_hint_makes_an_error_retryable():
    assert ImmError("Busy", "", http_status=400, retry_after=1.0).retryable
    assert not ImmError("InvalidArgument", "", http_status=400, retry_after=1.0).retryable


def test_an_error_keeps_every_field_when_pickled():
    error = ImmError("Timeout", "ReadTimeout", "R-1", 0, 1.5, True)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (clone.code, clone.message, clone.request_id, clone.http_status) == (
        "Timeout",
        "ReadTimeout",
        "R-1",
        0,
    )
    assert clone.retry_after == 1.5
    assert clone.ambiguous
    assert str(clone) == str(error)


# Retries


def test_it_retries_a_burst_of_5xx_then_succeeds(imm):
    harness = imm(
        fail(500, "InternalError"),
        fail(503, "ServiceUnavailable"),
        fail(502, "BadGateway"),
        ok(canned("get_task_image_moderation")),
    )
    task = harness.client.get_task(TASK_ID)
    assert task.status == "Succeeded"
    assert len(harness.requests) == 4
    # min(5, 0.2 * 2**n) * 0.5 for n = 0, 1, 2
    assert harness.sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_it_honours_x_acs_retry_after_when_throttled(imm):
    harness = imm(
        fail(400, "Throttling.User", "Request was denied", headers={"x-acs-retry-after": "1500"}),
        ok(canned("get_image_moderation_result")),
    )
    result = harness.client.get_image_moderation_result(TASK_ID)
    assert result.verdict is not None
    assert harness.sleeps == [1.5]


def test_the_backoff_wins_when_it_is_longer_than_the_retry_after_hint(imm):
    harness = imm(
        fail(429, "Throttling", headers={"x-acs-retry-after": "10"}),
        ok(canned("get_task_image_moderation")),
        random=1.0,
    )
    harness.client.get_task(TASK_ID)
    assert harness.sleeps == [0.2]


def test_a_retry_after_hint_is_capped_at_four_backoff_caps(imm):
    harness = imm(
        fail(400, "Throttling.User", headers={"x-acs-retry-after": "600000"}),
        ok(canned("get_task_image_moderation")),
    )
    harness.client.get_task(TASK_ID)
    assert harness.sleeps == [20.0]


def test_it_retries_flow_control_reported_as_http_400_without_a_throttling_code(imm):
    harness = imm(
        fail(400, "Denied", "Request was denied due to user flow control."),
        ok(canned("get_task_image_moderation")),
    )
    harness.client.get_task(TASK_ID)
    assert len(harness.requests) == 2


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError],
)
def test_it_retries_a_transport_error_on_a_read(imm, exc_type):
    harness = imm(raise_(exc_type), ok(canned("list_tasks_image_moderation")))
    page = harness.client.list_tasks()
    assert len(page.tasks) == 1
    assert len(harness.requests) == 2
    assert harness.sleeps == [0.1]


@pytest.mark.parametrize(
    "exc_type", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout, httpx.PoolTimeout]
)
def test_it_retries_a_timeout_on_a_read(imm, exc_type):
    harness = imm(raise_(exc_type, "timed out"), ok(canned("get_task_image_moderation")))
    assert harness.client.get_task(TASK_ID).task_id == TASK_ID
    assert len(harness.requests) == 2


@pytest.mark.parametrize(
    ("exc_type", "code"),
    [
        (httpx.ReadTimeout, "Timeout"),
        (httpx.WriteTimeout, "Timeout"),
        (httpx.RemoteProtocolError, "Transport"),
        (httpx.ReadError, "Transport"),
        (httpx.WriteError, "Transport"),
    ],
)
def test_a_timeout_or_dropped_connection_on_create_is_not_retried_and_is_ambiguous(
    imm, exc_type, code
):
    harness = imm(raise_(exc_type), ok(canned("create_image_moderation_task_mns")))
    with pytest.raises(ImmError) as caught:
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert caught.value.code == code
    assert caught.value.ambiguous
    assert caught.value.http_status == 0
    assert len(harness.requests) == 1
    assert harness.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_on_create_is_not_retried_and_is_ambiguous(imm, status):
    harness = imm(fail(status, "InternalError"), ok(canned("create_image_moderation_task_mns")))
    with pytest.raises(ImmError) as caught:
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert caught.value.ambiguous
    assert caught.value.http_status == status
    assert len(harness.requests) == 1


def test_a_2xx_on_create_that_cannot_be_read_is_ambiguous(imm):
    harness = imm(lambda r: httpx.Response(200, text="<html>"))
    with pytest.raises(ImmError) as caught:
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert caught.value.ambiguous
    assert len(harness.requests) == 1


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_create_is_retried_when_the_connection_was_never_made(imm, exc_type):
    harness = imm(raise_(exc_type), ok(canned("create_image_moderation_task_mns")))
    result = harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert result.task_id == TASK_ID
    assert len(harness.requests) == 2
    assert (
        harness.requests[0].headers["x-acs-signature-nonce"]
        != (harness.requests[1].headers["x-acs-signature-nonce"])
    )


def test_create_is_retried_when_throttled(imm):
    harness = imm(
        fail(400, "Throttling.User", "Request was denied due to user flow control."),
        fail(403, "Throttling", headers={"x-acs-retry-after": "250"}),
        ok(canned("create_image_moderation_task_mns")),
    )
    result = harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert result.task_id == TASK_ID
    assert len(harness.requests) == 3
    assert harness.sleeps == pytest.approx([0.1, 0.25])


def test_a_failed_connection_on_create_is_not_ambiguous_when_attempts_run_out(imm):
    harness = imm(raise_(httpx.ConnectError), max_attempts=2)
    with pytest.raises(ImmError) as caught:
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg")
    assert caught.value.code == "Transport"
    assert not caught.value.ambiguous
    assert len(harness.requests) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "InvalidArgument"),
        (404, "ResourceNotFound"),
        (400, "SignatureDoesNotMatch"),
        (400, "MissingTaskId"),
        (400, "InvalidJSON"),
        (400, "LimitExceededError"),
        (404, "InvalidAccessKeyId.NotFound"),
        (403, "Forbidden.RAM"),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_task(TASK_ID),
        lambda c: c.create_image_moderation_task(source_uri="oss://b/a.jpg"),
    ],
    ids=["read", "create"],
)
def test_it_does_not_retry_an_error_in_the_request(imm, status, code, call):
    harness = imm(fail(status, code, headers={"x-acs-retry-after": "100"}), ok({}))
    with pytest.raises(ImmError) as caught:
        call(harness.client)
    assert caught.value.code == code
    assert not caught.value.ambiguous
    assert len(harness.requests) == 1
    assert harness.sleeps == []


def test_it_gives_up_after_max_attempts_with_the_last_error(imm):
    harness = imm(
        fail(500, "InternalError", request_id="R-1"),
        fail(503, "ServiceUnavailable", request_id="R-2"),
        fail(500, "InternalError", request_id="R-3"),
        fail(502, "BadGateway", request_id="R-4"),
        ok(canned("get_task_image_moderation")),
    )
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    assert (caught.value.code, caught.value.request_id) == ("BadGateway", "R-4")
    assert len(harness.requests) == 4
    assert len(harness.sleeps) == 3


def test_a_timeout_on_a_read_that_never_ends_gives_up_with_a_timeout_error(imm):
    harness = imm(raise_(httpx.ReadTimeout, "timed out"), max_attempts=3)
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)
    assert caught.value.code == "Timeout"
    assert caught.value.message == "ReadTimeout: timed out"
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len(harness.requests) == 3


def test_backoff_grows_exponentially_and_is_capped(imm):
    harness = imm(
        fail(503, "ServiceUnavailable"),
        max_attempts=8,
        backoff_base=1.0,
        backoff_cap=5.0,
        random=1.0,
    )
    with pytest.raises(ImmError):
        harness.client.get_task(TASK_ID)
    assert harness.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_backoff_uses_full_jitter(imm):
    harness = imm(fail(503, "ServiceUnavailable"), max_attempts=3, random=0.0)
    with pytest.raises(ImmError):
        harness.client.get_task(TASK_ID)
    assert harness.sleeps == [0.0, 0.0]


def test_one_attempt_means_no_retry(imm):
    harness = imm(fail(503, "ServiceUnavailable"), max_attempts=1)
    with pytest.raises(ImmError):
        harness.client.get_task(TASK_ID)
    assert len(harness.requests) == 1
    assert harness.sleeps == []


# Secrets and logging


def test_secrets_never_appear_in_config_repr_error_str_or_logs(imm, caplog):
    caplog.set_level(logging.DEBUG)
    echo = f"server saw secret {SECRET} and token {TOKEN}"
    harness = imm(
        raise_(httpx.ReadTimeout, f"timed out near {TOKEN}"),
        fail(500, "InternalError", echo),
        fail(400, "SignatureDoesNotMatch", echo),
        security_token=TOKEN,
    )
    with pytest.raises(ImmError) as caught:
        harness.client.get_task(TASK_ID)

    signatures = [
        acs3.parse_authorization(r.headers["authorization"]).signature for r in harness.requests
    ]
    assert len(signatures) == 3
    forbidden = [SECRET, TOKEN, "ACS3-HMAC-SHA256", *signatures]
    texts = [
        repr(harness.config),
        str(harness.config),
        str(caught.value),
        repr(caught.value),
        caught.value.message,
    ]
    texts += [record.getMessage() for record in caplog.records]
    assert any("SignatureDoesNotMatch" in t for t in texts)
    for text in texts:
        for secret in forbidden:
            assert secret not in text
    assert all("authorization" not in r.getMessage().lower() for r in caplog.records)
    assert "LTAI5tEXAMPLEaccessKeyId" in repr(harness.config)


def test_each_attempt_is_logged_at_debug_and_retries_at_warning(imm, caplog):
    caplog.set_level(logging.DEBUG, logger="moderation.imm")
    harness = imm(
        fail(503, "ServiceUnavailable", request_id="R-503"),
        ok(canned("get_task_image_moderation")),
    )
    harness.client.get_task(TASK_ID)
    records = [r for r in caplog.records if r.name == "moderation.imm"]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(debug) == 2
    assert re.fullmatch(r"IMM GetTask attempt 1: HTTP 503 RequestId R-503 in \d+ ms", debug[0])
    assert re.fullmatch(
        r"IMM GetTask attempt 2: HTTP 200 RequestId EXAMPLE-REQ-0003 in \d+ ms", debug[1]
    )
    assert warnings == [
        "IMM GetTask attempt 1/4 failed (ServiceUnavailable (RequestId R-503, HTTP 503)); "
        "retrying in 0.10s"
    ]


# Input checks, configuration and the connection


def test_user_data_over_2048_bytes_is_refused_before_sending(imm):
    harness = imm(ok(canned("create_image_moderation_task_mns")))
    too_long = "é" * 1025  # 1,025 characters but 2,050 bytes of UTF-8
    with pytest.raises(ValueError, match="2050 bytes"):
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg", user_data=too_long)
    assert harness.requests == []
    harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg", user_data="é" * 1024)
    assert len(harness.requests) == 1


def test_scenes_must_be_a_list_not_a_bare_string(imm):
    harness = imm()
    with pytest.raises(TypeError, match="scenes"):
        harness.client.create_image_moderation_task(source_uri="oss://b/a.jpg", scenes="porn")
    assert harness.requests == []


def test_it_reuses_one_http_client_and_transport_for_many_calls():
    closed: list[bool] = []

    class Transport(httpx.MockTransport):
        def close(self) -> None:
            closed.append(True)

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=canned("get_task_image_moderation"))

    config = ImmConfig(
        endpoint="https://imm.cn-hangzhou.aliyuncs.com",
        region="cn-hangzhou",
        project="p",
        access_key_id="ak",
        access_key_secret=SECRET,
    )
    with ImmClient(config, transport=Transport(handler)) as client:
        http = client._http
        for _ in range(3):
            client.get_task(TASK_ID)
        client.list_tasks()
        assert client._http is http
        assert closed == []
    assert len(seen) == 4
    assert closed == [True]
    assert http.is_closed


def test_timeouts_come_from_the_config():
    config = ImmConfig(
        endpoint="https://imm.cn-hangzhou.aliyuncs.com",
        region="cn-hangzhou",
        project="p",
        access_key_id="ak",
        access_key_secret=SECRET,
        timeout=3.5,
    )
    with ImmClient(config, transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        assert client._http.timeout == httpx.Timeout(3.5)


def test_the_config_is_read_from_django_settings(settings):
    settings.IMM_ENDPOINT = "https://imm.cn-shanghai.aliyuncs.com"
    settings.IMM_REGION = "cn-shanghai"
    settings.IMM_PROJECT = "prod-moderation"
    settings.IMM_ACCESS_KEY_ID = "LTAIprod"
    settings.IMM_ACCESS_KEY_SECRET = SECRET
    settings.IMM_SECURITY_TOKEN = TOKEN
    config = ImmConfig.from_settings()
    assert config.endpoint == "https://imm.cn-shanghai.aliyuncs.com"
    assert config.region == "cn-shanghai"
    assert config.project == "prod-moderation"
    assert config.access_key_id == "LTAIprod"
    assert config.access_key_secret == SECRET
    assert config.security_token == TOKEN
    assert config.max_attempts == 4


def test_the_config_has_emulator_defaults_before_the_settings_exist(settings):
    for name in (
        "IMM_ENDPOINT",
        "IMM_REGION",
        "IMM_PROJECT",
        "IMM_ACCESS_KEY_ID",
        "IMM_ACCESS_KEY_SECRET",
        "IMM_SECURITY_TOKEN",
    ):
        if hasattr(settings, name):
            delattr(settings, name)
    config = ImmConfig.from_settings()
    assert config.endpoint == "http://127.0.0.1:8001"
    assert config.region == "cn-hangzhou"
    assert config.security_token is None


def test_an_empty_security_token_setting_means_no_token(settings):
    settings.IMM_SECURITY_TOKEN = ""
    assert ImmConfig.from_settings().security_token is None


@pytest.mark.parametrize(
    "endpoint",
    ["imm.cn-hangzhou.aliyuncs.com", "ftp://imm", "https://imm.example/api", "https://imm/?a=1"],
)
def test_the_config_refuses_an_endpoint_it_cannot_sign_for(endpoint):
    with pytest.raises(ValueError, match="endpoint"):
        ImmConfig(
            endpoint=endpoint, region="r", project="p", access_key_id="a", access_key_secret="s"
        )


@pytest.mark.parametrize(
    ("field_name", "value"), [("max_attempts", 0), ("timeout", 0), ("backoff_cap", -1)]
)
def test_the_config_refuses_nonsense_retry_settings(field_name, value):
    with pytest.raises(ValueError, match=field_name):
        ImmConfig(
            endpoint="https://imm",
            region="r",
            project="p",
            access_key_id="a",
            access_key_secret="s",
            **{field_name: value},
        )
