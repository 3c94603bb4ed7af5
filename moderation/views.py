from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required, permission_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Min
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_tasks_db.models import DBTaskResult, get_date_max

from . import accounts, intake, limits, routing, services, signals
from .audit import log as audit
from .audit import sequencer
from .imm import inbox, notifications, pipeline
from .middleware import reads_own_body
from .models import AuditEntry, Image, ImmStatus, ModerationResult, RoutingRule

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        htmx: HtmxDetails


logger = logging.getLogger(__name__)

IMAGES_PER_PAGE = 48
HEALTH_BACKLOG_SECONDS = 300
HEALTH_POLLER_SECONDS = 120
HEALTH_INBOX_SECONDS = 60


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, with the old password checked by signing in, so wrong guesses are throttled."""

    form_class = accounts.ThrottledPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    # Admins land on the team dashboard (reviews.dashboard); reviewers on their queue.
    if request.user.has_perm("moderation.change_image"):
        return redirect("dashboard")
    if request.user.has_perm("moderation.view_image"):
        return redirect("image_list")
    if request.user.has_perm("moderation.review_image"):
        return redirect("review_queue")
    return TemplateResponse(request, "no_role.html", status=403)


@login_not_required
@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers and monitors: 503 only when the database is unreachable; the rest
    (IMM paused, the task backlog, the poller's heartbeat, notifications waiting in the inbox, the
    audit sequencer's lag) says what else needs a look."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        logger.exception("health check: database unreachable")
        return JsonResponse({"status": "down", "database": "unreachable"}, status=503)
    now = timezone.now()
    imm = ImmStatus.objects.filter(pk=1).first()
    # A task waits from when it was enqueued, or from its run_after if it was deferred.
    ready = DBTaskResult.objects.ready()
    starts = [
        ready.filter(run_after=get_date_max()).aggregate(t=Min("enqueued_at"))["t"],
        ready.exclude(run_after=get_date_max()).aggregate(t=Min("run_after"))["t"],
    ]
    oldest = min((t for t in starts if t is not None), default=None)
    backlog = max(0, int((now - oldest).total_seconds())) if oldest else 0
    seen = imm.poller_seen_at if imm else None
    poller_age = int((now - seen).total_seconds()) if seen else None
    problems = []
    if imm and imm.paused:
        problems.append("IMM submissions are paused")
    if backlog > HEALTH_BACKLOG_SECONDS:
        problems.append("tasks are waiting: are db_worker and imm_submitter running?")
    if poller_age is None or poller_age > HEALTH_POLLER_SECONDS:
        problems.append("the IMM poller has not run recently: is imm_poller running?")
    waiting = inbox.backlog(now=now)
    if waiting.oldest_seconds > HEALTH_INBOX_SECONDS:
        problems.append("IMM notifications wait in the inbox: is imm_poller applying them?")
    lag = sequencer.lag()
    lag_seconds = lag.oldest_seconds(now)
    if not settings.AUDIT_SIGNING_KEY:
        problems.append("no audit signing key is configured (AUDIT_SIGNING_KEY)")
    if lag_seconds > settings.AUDIT_SEQUENCER_MAX_LAG_SECONDS:
        problems.append("audit entries are waiting for a position: is audit_sequencer running?")
    return JsonResponse(
        {
            "status": "degraded" if problems else "ok",
            "database": "ok",
            "imm_submissions": "paused" if imm and imm.paused else "running",
            "oldest_waiting_task_seconds": backlog,
            "poller_last_round_seconds_ago": poller_age,
            "inbox_waiting": waiting.waiting,
            "inbox_failing": waiting.failing,
            "inbox_oldest_seconds": int(waiting.oldest_seconds),
            "audit_entries_waiting": lag.waiting,
            "audit_oldest_waiting_seconds": lag_seconds,
            "problems": problems,
        }
    )


@permission_required("moderation.add_image", raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def upload(request: HtmxHttpRequest) -> HttpResponse:
    """The upload page. Each file is checked on its own; one bad file never stops the others.

    The page's script posts one file per request (for a progress bar each) and swaps in the
    `result` partial; without JavaScript the form posts every file at once and the whole page
    comes back with a result per file.
    """
    results: list[services.IntakeResult] = []
    if request.method == "POST":
        context = audit.AuditContext.from_request(request)
        for uploaded in request.FILES.getlist("files"):
            results.append(
                services.ingest(
                    fp=cast(BinaryIO, uploaded),
                    filename=uploaded.name or "",
                    actor=request.user,
                    context=context,
                )
            )
    template = "images/upload.html"
    if request.htmx and request.method == "POST":
        template += "#results"
    response = TemplateResponse(request, template, {"results": results, "nav": "upload"})
    patch_vary_headers(response, ["HX-Request"])
    return response


@permission_required("moderation.view_image", raise_exception=True)
@require_safe
def image_list(request: HttpRequest) -> HttpResponse:
    images = Image.objects.newest_first().select_related("uploaded_by")
    status = request.GET.get("status", "")
    if status in Image.Status.values:
        images = images.filter(status=status)
    else:
        status = ""
    page = Paginator(images, IMAGES_PER_PAGE).get_page(request.GET.get("page"))
    return TemplateResponse(
        request,
        "images/list.html",
        {"page": page, "status": status, "statuses": Image.Status.choices, "nav": "images"},
    )


@require_safe
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(Image.objects.visible_to(request.user), pk=pk)
    return TemplateResponse(request, "images/detail.html", image_detail_context(image))


def image_detail_context(image: Image, **extra: object) -> dict[str, Any]:
    """What the image page shows (the reviews app's admin actions render it too)."""
    return {
        "image": image,
        "history": AuditEntry.objects.filter(image=image).order_by("id").select_related("actor"),
        "tasks": image.moderation_tasks.order_by("created_at", "id"),
        "results": image.moderation_results.all(),
        "retryable": (Image.Status.FAILED, Image.Status.EXPIRED),
        # The latest outcome event says who settled the image, how and why (None before any).
        "outcome": image.events.order_by("-sequence").first(),
        "settled": (Image.Status.APPROVED, Image.Status.REJECTED),
        "limits": limits,
        **extra,
    }


# Clear renditions: each one served is recorded as a reveal for the person it is served to.
_CLEAR = {"original": "file", "preview": "preview", "thumbnail": "thumbnail"}
# What pages load by default: the clear rendition's size, made from a few pixels of the thumbnail.
_BLURRED = {"preview-blurred": "preview", "thumbnail-blurred": "thumbnail"}


@require_safe
def image_file(request: HttpRequest, pk: int, variant: str) -> HttpResponseBase:
    """Image bytes, only for someone allowed to see the image, never from a public URL.

    Pages load the `-blurred` variants, which show nothing of the image. Clear pixels (the
    preview, the thumbnail, and the original for admins only) are served only when asked for,
    never cached, and each GET is recorded as a reveal for that person (signals.pixels_served).
    """
    image = get_object_or_404(Image.objects.visible_to(request.user), pk=pk)
    return serve_image_file(request, image, variant)


def serve_image_file(request: HttpRequest, image: Image, variant: str) -> HttpResponseBase:
    """The bytes of `variant` of an image the caller has already let this person see (QA's
    items are shown to the person holding them, through this same recording of reveals)."""
    if variant in _BLURRED:
        return _blurred(image, _BLURRED[variant])
    if variant == "original" and not request.user.has_perm("moderation.view_image"):
        # Reviewers see the EXIF-free preview; the original's metadata is not theirs to read.
        raise Http404("no such image")
    stored = getattr(image, _CLEAR[variant])
    if not stored.name:
        raise Http404("this image has no such rendition")
    content_type = image.content_type if variant == "original" else "image/webp"
    extension = stored.name.rsplit(".", 1)[-1]
    opened = default_storage.open(stored.name, "rb")
    if request.method == "GET":  # a HEAD carries no pixels
        try:
            signals.pixels_served.send(
                sender=Image, image=image, user=request.user, variant=variant
            )
        except BaseException:
            opened.close()
            raise
    response = FileResponse(
        opened,
        content_type=content_type,
        filename=f"image-{image.pk}-{variant}.{extension}",
        as_attachment=False,
    )
    # Not even the browser keeps clear pixels: each showing is a request, and so a record.
    response["Cache-Control"] = "private, no-store"
    _image_headers(response)
    return response


def _blurred(image: Image, stands_for: str) -> HttpResponse:
    if not image.thumbnail.name:
        raise Http404("this image has no preview")
    size = None
    if stands_for == "preview":
        if not image.preview.name:
            raise Http404("this image has no preview")
        with default_storage.open(image.preview.name, "rb") as preview:
            size = intake.image_size(cast(BinaryIO, preview))
    with default_storage.open(image.thumbnail.name, "rb") as thumbnail:
        data = intake.make_blurred(cast(BinaryIO, thumbnail), size=size)
    response = HttpResponse(data, content_type="image/webp")
    response["Content-Disposition"] = f'inline; filename="image-{image.pk}-blurred.webp"'
    # It shows nothing of the image, so a browser may keep it (for this person only).
    response["Cache-Control"] = "private, max-age=86400"
    _image_headers(response)
    return response


def _image_headers(response: HttpResponseBase) -> None:
    response["X-Content-Type-Options"] = "nosniff"
    # The bytes are user-supplied: never let a browser treat them as a document.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"


@login_not_required
@csrf_exempt
@reads_own_body
@require_POST
def imm_notification(request: HttpRequest) -> JsonResponse:
    """Where IMM's deliveries land. Answers fast: it checks the delivery and stores it in the
    inbox (no call to IMM, no lock); the poller's inbox applier routes it.

    An MNS push proves all it can (topic, Date, Content-MD5, a message that parses, a published
    certificate URL) before its signing certificate is fetched; see moderation.imm.notifications.
    """
    from .imm.client import mns_certificate

    mns = notifications.is_mns_push(request.headers)
    try:
        if not mns:
            notifications.check_token(
                request.headers.get("X-IMM-Notify-Token"), settings.IMM_NOTIFY_TOKEN
            )
        try:
            body = request.body
        except RequestDataTooBig:
            raise notifications.Refused(
                413, "the body is larger than a notification can be"
            ) from None
        push = None
        if mns:
            channel = pipeline.notification_parameter() or {}
            push = notifications.check_mns_push(
                method=request.method or "POST",
                path=request.get_full_path(),
                headers=request.headers,
                body=body,
                topic=channel.get("MNS", {}).get("TopicName"),
                topic_owner=settings.IMM_MNS_TOPIC_OWNER,
                region=settings.IMM_REGION,
            )
            data = push.message
        else:
            data = notifications.unwrap(body, request.content_type or "")
        try:
            message = pipeline.TaskMessage.parse(data)
        except ValueError as exc:
            raise notifications.Refused(400, str(exc)) from None
        if push is not None:
            push.verify(certificate_for=mns_certificate)
    except notifications.Refused as refused:
        logger.warning(
            "IMM notification refused (%s) from %s: %s",
            refused.status,
            request.META.get("REMOTE_ADDR"),
            refused.reason,
        )
        return JsonResponse({"error": refused.reason}, status=refused.status)
    # One INSERT: the poller's inbox applier records and routes it (moderation.imm.inbox).
    inbox.store(message=message, source=ModerationResult.Source.NOTIFICATION)
    logger.info("IMM notification for %s stored in the inbox", message.task_id)
    # MNS wants a 2xx and its own sample answers 201; anything else retries later.
    return JsonResponse(
        {"status": "accepted", "task_id": message.task_id}, status=201 if mns else 200
    )


@permission_required("moderation.change_image", raise_exception=True)
@require_POST
def image_retry(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(Image, pk=pk)
    if pipeline.retry_image(
        image=image, actor=request.user, context=audit.AuditContext.from_request(request)
    ):
        messages.success(request, f"Image {image.pk} is queued for IMM again.")
    else:
        messages.error(
            request,
            f"Image {image.pk} is {image.get_status_display().lower()}; "
            "only failed or expired images can be retried.",
        )
    return redirect(image)


@permission_required("moderation.change_image", raise_exception=True)
@require_POST
def imm_resume(request: HttpRequest) -> HttpResponse:
    queued = pipeline.resume_submissions(
        actor=request.user, context=audit.AuditContext.from_request(request)
    )
    messages.success(request, f"IMM submissions resumed; {queued} waiting image(s) queued.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("image_list")
    return redirect(target)


@permission_required("moderation.view_image", raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def routing_rules(request: HttpRequest) -> HttpResponse:
    """Categories that go to a person whatever IMM suggests. Changing them needs change_image."""
    if request.method == "POST":
        if not request.user.has_perm("moderation.change_image"):
            raise PermissionDenied
        context = audit.AuditContext.from_request(request)
        if "remove" in request.POST:
            removed = routing.remove_rule(
                rule_id=request.POST["remove"], actor=request.user, context=context
            )
            if removed:
                messages.success(request, f"Rule for “{removed}” removed.")
        else:
            try:
                rule = routing.add_rule(
                    category=request.POST.get("category", ""),
                    note=request.POST.get("note", ""),
                    actor=request.user,
                    context=context,
                )
            except ValueError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Images with “{rule.category}” now go to review.")
        return redirect("routing_rules")
    return TemplateResponse(
        request,
        "imm/routing.html",
        {
            "rules": RoutingRule.objects.select_related("created_by"),
            "scenes": routing.SCENE_CATEGORIES,
            "limits": limits,
            "nav": "routing",
        },
    )
