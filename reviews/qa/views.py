"""QA pages: the IMM check queue and pane, the blind pane, adjudication, gold, rates, overview."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import push_url, trigger_client_event

from moderation import limits
from moderation.audit import log as audit
from moderation.models import AuditEntry, Image
from moderation.routing import SCENE_CATEGORIES
from moderation.views import serve_image_file
from reviews import services as reviews
from reviews.exposure import limits as exposure_limits
from reviews.models import Claim, ReviewerPreference
from reviews.sla import order as due_order

from . import accuracy, services
from .models import DoubleReview, GoldItem, ImmCheck, Rate

if TYPE_CHECKING:
    from reviews.views import HtmxHttpRequest

REVIEW = "moderation.review_image"
ADMIN = "moderation.change_image"
# What a person may load of an image in a QA pane: the blurred renditions, and the clear preview
# (recorded as a reveal by serve_image_file). The original stays on the image page, for admins.
VARIANTS = ("preview", "preview-blurred")
SETTLED_STATES = (Image.Status.APPROVED, Image.Status.REJECTED, Image.Status.ESCALATED)


def _vary(response: HttpResponse) -> HttpResponse:
    patch_vary_headers(response, ["HX-Request"])
    return response


def _greyscale(request: HtmxHttpRequest) -> bool:
    return ReviewerPreference.objects.filter(user=request.user, greyscale=True).exists()


def _history_before_people(image: Image) -> list[AuditEntry]:
    """The image's history as it stood while it waited for a person: the system's and the
    uploader's entries before anyone settled it. A blind pane shows only this, so no earlier
    decision (nor who made it, nor a reviewer who skipped it) can be read from it."""
    entries = []
    for entry in AuditEntry.objects.filter(image=image).order_by("id")[:200]:
        if entry.state_after in SETTLED_STATES and entry.state_before != entry.state_after:
            break
        # Nothing of people's work on it (reviews, QA: a gold mark would give the item away).
        if entry.action.startswith(("review.", "qa.")):
            continue
        if entry.actor_id is None or entry.actor_id == image.uploaded_by_id:
            entries.append(entry)
    return entries


# ---- the blind pane: double reviews and gold items, served by "Start reviewing" -------------


def serve_blind(request: HtmxHttpRequest, *, note: str = "") -> HttpResponse | None:
    """The hook in reviews.views (Start reviewing, and the next item after a decision): a blind
    item's pane when one is due for this reviewer, else None (the ordinary queue). An ordinary
    item the reviewer holds comes first."""
    # An admin can read the image page, the audit log and the gold list: nothing is blind to
    # them, so their answer would check nothing. They get the ordinary queue.
    if request.user.has_perm(ADMIN):
        return None
    blind = services.claim_blind(request.user)
    if blind is None:
        return None
    if not request.htmx:
        if note:
            messages.success(request, note)
        return redirect("qa_blind")
    response = _blind_pane(request, blind, note=note)
    return trigger_client_event(response, "queue-changed")


def _blind_pane(
    request: HtmxHttpRequest,
    blind: services.Blind | None,
    *,
    status: int = 200,
    note: str = "",
    error: str = "",
) -> HttpResponse:
    template = "qa/blind.html#pane" if request.htmx else "qa/blind.html"
    context = {
        "blind": blind,
        "image": blind.image if blind else None,
        "history": _history_before_people(blind.image) if blind else [],
        "greyscale": _greyscale(request),
        "waiting": reviews.waiting().order_by()[:100_000].count(),
        "reject_reasons": _reject_reasons(blind.image) if blind else [],
        "limits": limits,
        "undo_seconds": reviews.undo_window().total_seconds(),
        "note": note,
        "error": error,
        "nav": "queue",
    }
    response = TemplateResponse(request, template, context, status=status)
    if request.htmx:
        push_url(response, reverse("qa_blind"))
    return _vary(response)


def _reject_reasons(image: Image) -> list[str]:
    first = list(image.imm_categories)
    rest = [c for labels in SCENE_CATEGORIES.values() for c in labels if c not in first]
    return first + sorted(set(rest), key=rest.index)


@permission_required(REVIEW, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def blind(request: HtmxHttpRequest) -> HttpResponse:
    """The blind item the reviewer holds (GET), or their answer on it (POST), then the next."""
    now = timezone.now()
    if request.method != "POST":
        held = services.held_blind(request.user, now=now)
        if held is None:
            return redirect("review_next")
        return _blind_pane(request, held)
    image_id = limits.whole_number(request.POST.get("image", ""))
    if image_id is None:
        return _blind_pane(
            request,
            services.held_blind(request.user, now=now),
            status=400,
            error="Which image? Reload the page and try again.",
        )
    words = {"reject": "reason", "escalate": "note"}.get(request.POST.get("action", ""), "")
    try:
        note = services.answer_blind(
            person=request.user,
            image_id=image_id,
            action=request.POST.get("action", ""),
            reason=request.POST.get(words, "") if words else "",
            category=request.POST.get("reject_category", ""),
            context=audit.AuditContext.from_request(request),
            now=now,
        )
    except reviews.ReviewError as error:
        return _blind_pane(
            request,
            services.held_blind(request.user, now=now),
            status=error.status,
            error=error.message,
        )
    # After a skip the next item is an ordinary one: a blind item served now would be the one
    # just skipped (the oldest waiting), straight back.
    served = None if request.POST.get("action") == "skip" else serve_blind(request, note=note)
    if served is not None:
        return served
    claim = _claim_ordinary(request, exclude=image_id)
    messages.success(request, note)
    target = reverse("review_item", args=[claim.image_id]) if claim else reverse("review_queue")
    if request.htmx:
        from django_htmx.http import HttpResponseClientRedirect

        return _vary(HttpResponseClientRedirect(target))
    return redirect(target)


def _claim_ordinary(request: HtmxHttpRequest, *, exclude: int) -> Claim | None:
    """The next queue item after a blind answer, as Start reviewing hands it out: within the
    reviewer's opt-outs and daily limits, in the order they chose."""
    images = reviews.waiting()
    order: dict[str, Any] = {}
    if ReviewerPreference.objects.filter(user=request.user, order_by_due=True).exists():
        images, order = due_order.ordered(images), {"order": due_order.ORDER}
    return exposure_limits.claim_next(
        reviewer=request.user, images=images, exclude=[exclude], **order
    )


@permission_required(REVIEW, raise_exception=True)
@require_POST
def blind_renew(request: HtmxHttpRequest) -> HttpResponse:
    if services.renew_blind(request.user):
        return HttpResponse(status=204)
    return HttpResponse(
        "Your claim on this image has expired; it may be someone else's now. "
        "Take the next item from the queue.",
        status=409,
        content_type="text/plain; charset=utf-8",
    )


@permission_required(REVIEW, raise_exception=True)
@require_safe
def blind_file(request: HtmxHttpRequest, variant: str) -> HttpResponseBase:
    held = services.held_blind(request.user, now=timezone.now())
    if held is None or variant not in VARIANTS:
        raise Http404("no such image")
    return serve_image_file(request, held.image, variant)


# ---- QA of IMM's verdicts -------------------------------------------------------------------


@permission_required(REVIEW, raise_exception=True)
@require_safe
def imm_queue(request: HtmxHttpRequest) -> HttpResponse:
    now = timezone.now()
    open_checks = ImmCheck.objects.filter(state=ImmCheck.State.OPEN)
    return TemplateResponse(
        request,
        "qa/imm_queue.html",
        {
            "open": open_checks.count(),
            "held": services.held_check(request.user, now=now),
            "recent": ImmCheck.objects.exclude(state=ImmCheck.State.OPEN)
            .filter(checked_by=request.user)
            .select_related("image")
            .order_by("-checked_at")[:20],
            "nav": "qa",
        },
    )


@permission_required(REVIEW, raise_exception=True)
@require_POST
def imm_next(request: HtmxHttpRequest) -> HttpResponse:
    check = services.claim_check(request.user)
    if check is None:
        messages.info(request, "No automatic verdicts are waiting for QA.")
        return redirect("qa_imm_queue")
    return redirect("qa_imm_item", pk=check.pk)


def _imm_pane(
    request: HtmxHttpRequest, check: ImmCheck, *, status: int = 200, **extra: object
) -> HttpResponse:
    now = timezone.now()
    context = {
        "check": check,
        "image": check.image,
        "mine": check.claimed_by_id == request.user.pk
        and check.claim_expires_at is not None
        and check.claim_expires_at > now,
        "is_admin": request.user.has_perm(ADMIN),
        "greyscale": _greyscale(request),
        "human_decided": check.image.human_decided_at is not None,
        "limits": limits,
        "nav": "qa",
        **extra,
    }
    return TemplateResponse(request, "qa/imm_pane.html", context, status=status)


@permission_required(REVIEW, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def imm_item(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """One sampled automatic verdict: Confirm, Overturn (with a reason) or Skip."""
    check = services.visible_check(request.user, pk)
    if check is None:
        return TemplateResponse(
            request,
            "qa/imm_pane.html",
            {"error": f"QA item {pk} is not yours to see; take the next one.", "nav": "qa"},
            status=404,
        )
    if request.method != "POST":
        return _imm_pane(request, check)
    action = request.POST.get("action", "")
    if action == "skip":
        services.release_check(check_id=pk, person=request.user)
        messages.info(request, f"Skipped QA item {pk}; it stays in the QA queue.")
        return redirect("qa_imm_queue")
    try:
        outcome = services.answer_check(
            check_id=pk,
            person=request.user,
            action=action,
            reason=request.POST.get("reason", ""),
            context=audit.AuditContext.from_request(request),
        )
    except reviews.ReviewError as error:
        return _imm_pane(request, check, status=error.status, error=error.message)
    messages.success(request, outcome.message)
    following = services.claim_check(request.user)
    if following is None:
        return redirect("qa_imm_queue")
    return redirect("qa_imm_item", pk=following.pk)


@permission_required(REVIEW, raise_exception=True)
@require_safe
def imm_file(request: HtmxHttpRequest, pk: int, variant: str) -> HttpResponseBase:
    check = services.visible_check(request.user, pk)
    if check is None or variant not in VARIANTS:
        raise Http404("no such image")
    return serve_image_file(request, check.image, variant)


# ---- admins: overview, rates, adjudication, gold --------------------------------------------


@permission_required(ADMIN, raise_exception=True)
@require_safe
def overview(request: HtmxHttpRequest) -> HttpResponse:
    return _overview(request)


def _overview(request: HtmxHttpRequest, *, status: int = 200, error: str = "") -> HttpResponse:
    return TemplateResponse(
        request,
        "qa/overview.html",
        {
            "counts": accuracy.counts(),
            "accuracy": accuracy.per_reviewer(),
            "rates": Rate.objects.order_by("kind", "category"),
            "kinds": Rate.Kind.choices,
            "error": error,
            "nav": "qa",
        },
        status=status,
    )


@permission_required(ADMIN, raise_exception=True)
@require_POST
def rates(request: HtmxHttpRequest) -> HttpResponse:
    try:
        services.set_rate(
            kind=request.POST.get("kind", ""),
            category=request.POST.get("category", ""),
            percent_text=request.POST.get("percent", ""),
            admin=request.user,
            context=audit.AuditContext.from_request(request),
        )
    except reviews.ReviewError as error:
        return _overview(request, status=error.status, error=error.message)
    messages.success(request, "Rate saved.")
    return redirect("qa_overview")


@permission_required(ADMIN, raise_exception=True)
@require_safe
def adjudication(request: HtmxHttpRequest) -> HttpResponse:
    return _adjudication(request)


def _adjudication(request: HtmxHttpRequest, *, status: int = 200, error: str = "") -> HttpResponse:
    disputed = (
        DoubleReview.objects.filter(state=DoubleReview.State.DISPUTED)
        .select_related("image", "first_reviewer", "second_reviewer", "decision")
        .order_by("answered_at", "id")[:100]
    )
    return TemplateResponse(
        request,
        "qa/adjudication.html",
        {"disputed": disputed, "limits": limits, "error": error, "nav": "qa"},
        status=status,
    )


@permission_required(ADMIN, raise_exception=True)
@require_POST
def adjudicate(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    try:
        double = services.rule(
            double_id=pk,
            admin=request.user,
            ruling=request.POST.get("ruling", ""),
            reason=request.POST.get("reason", ""),
            context=audit.AuditContext.from_request(request),
        )
    except reviews.ReviewError as error:
        return _adjudication(request, status=error.status, error=error.message)
    message = f"Ruled {double.ruling} on image {double.image_id}."
    if double.image.status != services.VERDICT_STATUS[double.ruling]:
        message += (
            f" It stays {double.image.get_status_display().lower()}: it was decided again "
            "after the disagreement, and that decision stands."
        )
    messages.success(request, message)
    return redirect("qa_adjudication")


@permission_required(ADMIN, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def gold(request: HtmxHttpRequest) -> HttpResponse:
    status, error = 200, ""
    if request.method == "POST":
        image_id = limits.whole_number(request.POST.get("image", ""))
        try:
            if image_id is None:
                raise services.Invalid("Give the image's number, e.g. 1234.")
            services.mark_gold(
                image_id=image_id,
                admin=request.user,
                expected=request.POST.get("expected", ""),
                context=audit.AuditContext.from_request(request),
            )
        except reviews.ReviewError as e:
            status, error = e.status, e.message
        else:
            messages.success(request, f"Image {image_id} is gold.")
            return redirect("qa_gold")
    items = GoldItem.objects.filter(active=True).select_related("image").order_by("-marked_at")
    return TemplateResponse(
        request,
        "qa/gold.html",
        {"items": items[:200], "error": error, "nav": "qa"},
        status=status,
    )


@permission_required(ADMIN, raise_exception=True)
@require_POST
def gold_retire(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    try:
        services.retire_gold(
            gold_id=pk, admin=request.user, context=audit.AuditContext.from_request(request)
        )
    except reviews.ReviewError as error:
        messages.error(request, error.message)
    return redirect("qa_gold")
