"""IMM's four image-moderation operations, from request parameters to response body."""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .detector import DEFAULT_SCENES, SCENES
from .gateway import ApiError, invalid_argument, missing, not_found
from .store import STATUSES, SUCCEEDED, TASK_TYPE, Task, TaskStore

MAX_USER_DATA_BYTES = 2048
MAX_RESULTS = 100
SORTS = ("TaskId", "StartTime", "EndTime")

_OSS_URI = re.compile(r"oss://(?P<bucket>[a-z0-9][a-z0-9-]{1,61}[a-z0-9])/(?P<key>.+)", re.S)
_ALNUM = string.ascii_letters + string.digits


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def new_event_id() -> str:
    # Shaped like IMM's examples: 2E6-1I0FGn0zFnl5AflRfhzClma*****.
    prefix = secrets.token_hex(2)[:3].upper()
    return f"{prefix}-" + "".join(secrets.choice(_ALNUM) for _ in range(27))


def split_oss_uri(uri: str) -> tuple[str, str] | None:
    match = _OSS_URI.fullmatch(uri)
    return (match["bucket"], match["key"]) if match else None


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise missing(name)
    return value


def _json(params: dict[str, str], name: str, kind: type) -> Any:
    raw = params.get(name, "")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        what = "Array" if kind is list else "Object"
        raise ApiError(400, "InvalidJSON", f"{what} parsing error, {name}: {exc}") from None
    if not isinstance(value, kind):
        wanted = "a JSON array" if kind is list else "a JSON object"
        raise invalid_argument(f"The parameter {name} must be {wanted}.")
    return value


def _strings(params: dict[str, str], name: str) -> list[str] | None:
    value = _json(params, name, list)
    if value is not None and not all(isinstance(item, str) for item in value):
        raise invalid_argument(f"The parameter {name} must be an array of strings.")
    return value


def _int(params: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    if not re.fullmatch(r"[0-9]+", raw):
        raise invalid_argument(f"The parameter {name} must be a whole number; got {raw!r}.")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise invalid_argument(f"The parameter {name} must be {bounds}; got {value}.")
    return value


def _epoch_ms(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid_argument(f"The parameter {name} must hold ISO-8601 times.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_argument(f"The parameter {name} holds a bad time: {value!r}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _time_range(params: dict[str, str], name: str) -> tuple[int | None, int | None]:
    value = _json(params, name, dict)
    if value is None:
        return None, None
    return _epoch_ms(value.get("Start"), name), _epoch_ms(value.get("End"), name)


@dataclass(frozen=True)
class _Page:
    sort: str
    order: str
    value: Any
    task_id: str

    def token(self) -> str:
        raw = json.dumps([self.sort, self.order, self.value, self.task_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> _Page:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            sort, order, value, task_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise invalid_argument("The specified NextToken is not valid.") from None
        if sort not in SORTS or order not in ("asc", "desc") or not isinstance(task_id, str):
            raise invalid_argument("The specified NextToken is not valid.")
        return cls(sort, order, value, task_id)


class Operations:
    """The actions; `created` is called with each new task once it is stored."""

    def __init__(
        self,
        *,
        store: TaskStore,
        project: str,
        now_ms: Callable[[], int],
        created: Callable[[Task], None],
    ) -> None:
        self.store = store
        self.project = project
        self.now_ms = now_ms
        self.created = created
        self.actions: dict[str, Callable[[dict[str, str], str], dict[str, Any]]] = {
            "CreateImageModerationTask": self.create_image_moderation_task,
            "GetTask": self.get_task,
            "GetImageModerationResult": self.get_image_moderation_result,
            "ListTasks": self.list_tasks,
        }

    def _project(self, params: dict[str, str]) -> str:
        project = _required(params, "ProjectName")
        if project != self.project:
            raise not_found("Project")
        return project

    def create_image_moderation_task(self, params: dict[str, str], request_id: str) -> dict:
        project = self._project(params)
        source_uri = _required(params, "SourceURI")
        if split_oss_uri(source_uri) is None:
            raise invalid_argument(
                f"The parameter SourceURI must be oss://<bucket>/<object>; got {source_uri!r}."
            )
        scenes = _strings(params, "Scenes") or list(DEFAULT_SCENES)
        unknown = [scene for scene in scenes if scene not in SCENES]
        if unknown:
            raise invalid_argument(
                f"The parameter Scenes holds unknown scene(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(SCENES)}."
            )
        tags = _json(params, "Tags", dict)
        if tags is not None and not all(isinstance(v, str) for v in tags.values()):
            raise invalid_argument("The parameter Tags must map names to string values.")
        notification = _json(params, "Notification", dict)
        _json(params, "CredentialConfig", dict)  # accepted and ignored: no chained roles here
        user_data = params.get("UserData")
        if user_data is not None and len(user_data.encode()) > MAX_USER_DATA_BYTES:
            raise invalid_argument(
                f"The parameter UserData is {len(user_data.encode()):,} bytes; "
                f"at most {MAX_USER_DATA_BYTES:,} are allowed."
            )
        task = Task(
            task_id=f"{TASK_TYPE}-{uuid.uuid4()}",
            project=project,
            source_uri=source_uri,
            start_ms=self.now_ms(),
            request_id=request_id,
            event_id=new_event_id(),
            scenes=list(dict.fromkeys(scenes)),
            interval=_int(params, "Interval", 1, 1, None),
            max_frames=_int(params, "MaxFrames", 1, 1, None),
            tags=tags,
            user_data=user_data,
            notification=notification,
        )
        self.store.save(task)
        self.created(task)
        return {"RequestId": request_id, "TaskId": task.task_id, "EventId": task.event_id}

    def _task(self, params: dict[str, str]) -> Task:
        self._project(params)
        task_type = _required(params, "TaskType")
        task_id = _required(params, "TaskId")
        task = self.store.get(task_id, now_ms=self.now_ms())
        if task is None or task.task_type != task_type:
            raise not_found("TaskId")
        return task

    def get_task(self, params: dict[str, str], request_id: str) -> dict:
        task = self._task(params)
        response = {"RequestId": request_id, "ProjectName": task.project}
        return response | task.info() | {"EventId": task.event_id}

    def get_image_moderation_result(self, params: dict[str, str], request_id: str) -> dict:
        task = self._task(params)
        response: dict[str, Any] = {"RequestId": request_id, "ProjectName": task.project}
        response |= task.info() | {"EventId": task.event_id}
        if task.status == SUCCEEDED and task.result is not None:
            response["ModerationResult"] = task.result
        return response

    def list_tasks(self, params: dict[str, str], request_id: str) -> dict:
        project = self._project(params)
        task_types = _strings(params, "TaskTypes") or None  # [] filters nothing out
        status = params.get("Status") or None
        if status is not None and status not in STATUSES:
            raise invalid_argument(
                f"The parameter Status must be one of {', '.join(STATUSES)}; got {status!r}."
            )
        max_results = _int(params, "MaxResults", MAX_RESULTS, 1, MAX_RESULTS)
        order = (params.get("Order") or "asc").lower()
        if order not in ("asc", "desc"):
            raise invalid_argument("The parameter Order must be asc or desc.")
        sort = params.get("Sort") or "TaskId"
        if sort not in SORTS:
            raise invalid_argument(f"The parameter Sort must be one of {', '.join(SORTS)}.")
        tag = None
        if selector := params.get("TagSelector"):
            key, sep, value = selector.partition("=")
            if not sep or not key:
                raise invalid_argument("The parameter TagSelector must be key=value.")
            tag = (key, value)
        after = None
        if token := params.get("NextToken"):
            page = _Page.from_token(token)
            if (page.sort, page.order) != (sort, order):
                raise invalid_argument(
                    "The specified NextToken belongs to a listing with another Sort or Order."
                )
            after = (page.value, page.task_id)
        rows = self.store.query(
            now_ms=self.now_ms(),
            project=project,
            task_types=task_types,
            status=status,
            tag=tag,
            start_range=_time_range(params, "StartTimeRange"),
            end_range=_time_range(params, "EndTimeRange"),
            sort=sort,
            descending=order == "desc",
            after=after,
            limit=max_results + 1,
        )
        next_token = ""
        if len(rows) > max_results:
            rows = rows[:max_results]
            value, last = rows[-1]
            next_token = _Page(sort, order, value, last.task_id).token()
        tasks = [
            {**task.info(), "Progress": 0 if task.status == "Running" else 100} for _, task in rows
        ]
        return {
            "RequestId": request_id,
            "ProjectName": project,
            "NextToken": next_token,
            "MaxResults": str(max_results),
            "Tasks": tasks,
        }
