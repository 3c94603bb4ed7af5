from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect, push_url, trigger_client_event

from moderation import limits
from moderation.audit import log as audit
from moderation.imm import pipeline
from moderation.models import AuditEntry, Image, ModerationResult
from moderation.routing import SCENE_CATEGORIES
from moderation.views import image_detail_context

from . import queue as queue_reads
from . import services
from .exposure import limits as exposure_limits
from .exposure import views as exposure_views
from .models import Claim, Decision, ReviewerPreference
from .qa import views as qa_views
from .sla import due as sla_due
from .sla import order as due_order

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        htmx: HtmxDetails
        user: User


REVIEW = "moderation.review_image"
ADMIN = "moderation.change_image"


def _vary(response: HttpResponse) -> HttpResponse:
    patch_vary_headers(response, ["HX-Request"])
    return response


def _preference(request: HttpRequest) -> ReviewerPreference:
    """The user's preferences, or the defaults (unsaved) if they never set any; read once a
    request (a decision's request claims the next item in their order, then shows it in their
    greyscale choice)."""
    found = getattr(request, "_reviewer_preference", None)
    if found is None:
        user = cast("User", request.user)  # the review pages require a signed-in reviewer
        found = ReviewerPreference.objects.filter(user=user).first() or ReviewerPreference(
            user=user
        )
        setattr(request, "_reviewer_preference", found)  # noqa: B010 - not a declared attribute
    return found


@permission_required(REVIEW, raise_exception=True)
@require_safe
def queue(request: HtmxHttpRequest) -> HttpResponse:
    """Items waiting for a person, oldest first, with filters, counts and the reviewer's figures."""
    filters = _filters(request, request.GET)
    now = timezone.now()
    preference = _preference(request)
    page = queue_reads.page(
        filters, after=request.GET.get("after", ""), now=now, by_due=preference.order_by_due
    )
    counts = queue_reads.counts(filters, page=page, now=now)
    uploaders = queue_reads.uploaders() if request.user.has_perm(ADMIN) else []
    limits_now = exposure_limits.standing(request.user.pk, now=now)
    context = {
        "nav": "queue",
        "filters": filters,
        "page": page,
        "counts": counts,
        "figures": queue_reads.figures(request.user.pk, counts, now=now),
        "held": services.held_image_id(request.user, now=now),
        "greyscale": preference.greyscale,
        "order_by_due": preference.order_by_due,
        "capped": limits_now.reached,
        "opted_out": sorted(limits_now.opted_out),
        "break_due": exposure_views.break_due(request),
        "scenes": SCENE_CATEGORIES,
        "ages": {key: label for key, (label, _, _) in queue_reads.AGES.items()},
        "uploaders": uploaders,
        "category_listed": any(name == filters.category for name, _ in counts.categories),
        "now": now,
    }
    template = "reviews/queue.html#rows" if request.htmx and not request.htmx.boosted else None
    return _vary(TemplateResponse(request, template or "reviews/queue.html", context))


def _filters(request: HtmxHttpRequest, query: QueryDict) -> queue_reads.Filters:
    """The queue filters in `query`, as far as this user may filter (uploader: admins only)."""
    return queue_reads.Filters.from_query(query, by_uploader=request.user.has_perm(ADMIN))


def _reviewable(request: HtmxHttpRequest, pk: int) -> Image | None:
    """The image `pk` if this user may see it in the review pages, else None.

    Every per-image view reads its image here (services.reviewable: reviewers see only what
    waits for review), and answers None with _not_waiting: a 404 that says nothing of the
    image's state, who decided it, or whether it exists.
    """
    return services.reviewable(request.user).select_related("uploaded_by").filter(pk=pk).first()


def _not_waiting(
    request: HtmxHttpRequest, pk: int, *, changed_nothing: bool = True
) -> HttpResponse:
    message = services.not_waiting_message(pk, changed_nothing=changed_nothing)
    return _render_pane(request, None, status=404, error=message)


def _pane_context(request: HtmxHttpRequest, image: Image | None, **extra: object) -> dict:
    """Everything the review pane shows for one image (or the empty queue when None)."""
    context: dict[str, object] = {
        "image": image,
        "greyscale": _preference(request).greyscale,
        # Live, not the cached filter counts: the number must move as decisions are made.
        "waiting": services.waiting().order_by()[: queue_reads.COUNT_CAP].count(),
        "is_admin": request.user.has_perm(ADMIN),
        "undo_seconds": services.undo_window().total_seconds(),
        "limits": limits,
        "nav": "queue",
        "break_due": exposure_views.break_due(request),
        **extra,
    }
    if image is not None:
        claim = Claim.objects.select_related("reviewer").filter(image=image).first()
        result = (
            ModerationResult.objects.filter(image=image, applied=True)
            .select_related("task")
            .order_by("-received_at", "-id")
            .first()
        )
        # Numbered as IMM numbers them (frames of the image, every Interval-th), not 0, 1, 2, ...
        frames = (
            pipeline.checked_frames(
                frames_total=result.frames_total,
                frame_count=image.frame_count,
                interval=result.task.interval if result.task else 1,
                max_frames=result.task.max_frames if result.task else result.frames_total,
                block_frames=result.block_frames,
            )
            if result
            else []
        )
        context.update(
            {
                "claim": claim,
                "mine": claim is not None
                and claim.reviewer_id == request.user.pk
                and claim.expires_at > timezone.now(),
                "result": result,
                "frames": frames,
                "history": AuditEntry.objects.filter(image=image)
                .order_by("id")
                .select_related("actor"),
                "reject_reasons": _reject_reasons(image),
                "escalation": _standing_escalation(image),
                "due": sla_due.describe(sla_due.stored(image), timezone.now()),
            }
        )
        if image.status == Image.Status.ESCALATED:
            context["nav"] = "escalated"
    return context


def _standing_escalation(image: Image) -> Decision | None:
    """The escalation an escalated image is waiting on (the latest not undone): its note, who
    and when, for the admin who decides it."""
    if image.status != Image.Status.ESCALATED:
        return None
    return Decision.objects.standing_escalations().filter(image=image).last()


def _reject_reasons(image: Image) -> list[str]:
    first = list(image.imm_categories)
    rest = [c for labels in SCENE_CATEGORIES.values() for c in labels if c not in first]
    return first + sorted(set(rest), key=rest.index)


def _render_pane(
    request: HtmxHttpRequest, image: Image | None, *, status: int = 200, **extra: object
) -> HttpResponse:
    template = "reviews/pane.html#pane" if request.htmx else "reviews/pane.html"
    response = TemplateResponse(
        request, template, _pane_context(request, image, **extra), status=status
    )
    if request.htmx and image is not None:
        push_url(response, reverse("review_item", args=[image.pk]))
    elif request.htmx:
        push_url(response, reverse("review_next"))
    return _vary(response)


def _claim_next(request: HtmxHttpRequest, *, exclude: list[int] | None = None) -> Claim | None:
    """Start reviewing / Next: the next item for this reviewer, within the posted filters, in
    the order they chose (oldest or most urgent first)."""
    now = timezone.now()
    images = _filters(request, request.POST).apply(services.waiting(), now=now)
    if _preference(request).order_by_due:
        images = due_order.ordered(images)
        order: dict[str, Any] = {"order": due_order.ORDER}
    else:
        order = {}
    # Never a category the reviewer opted out of, or whose daily limit they reached.
    return exposure_limits.claim_next(
        reviewer=request.user, images=images, now=now, exclude=exclude or (), **order
    )


@permission_required(REVIEW, raise_exception=True)
@require_safe
def item(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The review pane for one image: the claimant decides; others see who holds it."""
    image = _reviewable(request, pk)
    if image is None:
        return _not_waiting(request, pk, changed_nothing=False)
    return _render_pane(request, image)


@permission_required(REVIEW, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def next_item(request: HtmxHttpRequest) -> HttpResponse:
    """Start reviewing / Next: the reviewer's held item, or claim the oldest waiting one."""
    if request.method == "POST":
        # QA's blind items (double reviews, gold) come through the same button.
        served = qa_views.serve_blind(request)
        if served is not None:
            return served
        claim = _claim_next(request)
        if claim is None:
            if not request.htmx:
                messages.info(request, "Nothing is waiting for review. Well done.")
                return redirect("review_queue")
            return _render_pane(request, None)
        if not request.htmx:
            return redirect("review_item", pk=claim.image_id)
        return _render_pane(request, claim.image)
    held = services.current_claim(request.user)
    if held is not None:
        return redirect("review_item", pk=held.image_id)
    return _render_pane(request, None)


@permission_required(REVIEW, raise_exception=True)
@require_POST
def decide(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Approve, Reject, Escalate or Skip, then the next item (htmx swaps it in; else redirect).

    An admin who decided an escalated item goes back to the escalated list.
    """
    action = request.POST.get("action", "")
    context = audit.AuditContext.from_request(request)
    image = _reviewable(request, pk)
    if image is None:
        return _not_waiting(request, pk)
    if action == "skip":
        services.release(image=image, reviewer=request.user, context=context)
        return _after(request, exclude=[image.pk], note="Skipped; it stays in the queue.")
    verdicts = {
        "approve": Decision.Verdict.APPROVE,
        "reject": Decision.Verdict.REJECT,
        "escalate": Decision.Verdict.ESCALATE,
    }
    if action not in verdicts:
        return _refused(request, image, "Choose Approve, Reject, Escalate or Skip.", 400)
    # Not "category" for the reject category: that name is the queue filter's, which the next
    # claim reads.
    category = request.POST.get("reject_category", "") if action == "reject" else ""
    words = {"reject": "reason", "escalate": "note"}.get(action)
    try:
        outcome = services.decide(
            image_id=image.pk,
            reviewer=request.user,
            verdict=verdicts[action],
            reason=request.POST.get(words, "") if words else "",
            category=category,
            context=context,
        )
    except services.ReviewError as error:
        return _refused(request, image, error.message, error.status)
    label = outcome.decision.get_verdict_display().lower()
    note = f"Image {image.pk} {label}."
    if outcome.decision.status_before == Image.Status.ESCALATED:
        # The admin was working through the escalated list: back to it, not into the queue.
        # The list offers the undo the pane would have (for the undo window).
        messages.success(request, note)
        target = f"{reverse('review_escalated')}?undo={outcome.decision.pk}"
        return _vary(HttpResponseClientRedirect(target) if request.htmx else redirect(target))
    return _after(request, exclude=[image.pk], note=note, decision=outcome)


def _refused(request: HtmxHttpRequest, image: Image, message: str, status: int) -> HttpResponse:
    # The pane with the reason and the real status, with or without htmx: a redirect would lose
    # the status. The image is read again through what this user may see: one settled meanwhile
    # is no longer shown to a reviewer (the message says so, without its state).
    current = _reviewable(request, image.pk)
    if current is None:
        return _not_waiting(request, image.pk)
    return _render_pane(request, current, status=status, error=message)


def _after(
    request: HtmxHttpRequest,
    *,
    exclude: list[int],
    note: str,
    decision: services.Outcome | None = None,
) -> HttpResponse:
    served = qa_views.serve_blind(request, note=note)
    if served is not None:
        return served
    claim = _claim_next(request, exclude=exclude)
    if not request.htmx:
        messages.success(request, note)
        if claim is None:
            return redirect("review_queue")
        return redirect("review_item", pk=claim.image_id)
    response = _render_pane(
        request,
        claim.image if claim else None,
        note=note,
        undo=decision.decision if decision else None,
    )
    return trigger_client_event(response, "queue-changed")


@permission_required(REVIEW, raise_exception=True)
@require_POST
def undo(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    try:
        outcome = services.undo(
            decision_id=pk, reviewer=request.user, context=audit.AuditContext.from_request(request)
        )
    except services.ReviewError as error:
        if not request.htmx:
            messages.error(request, error.message)
            return redirect("review_next")
        held = services.current_claim(request.user)
        return _render_pane(
            request, held.image if held else None, status=error.status, error=error.message
        )
    if not request.htmx:
        messages.success(request, f"Undone: image {outcome.image.pk} is back with you.")
        return redirect("review_item", pk=outcome.image.pk)
    response = _render_pane(request, outcome.image, note="Undone. The image is back with you.")
    return trigger_client_event(response, "queue-changed")


@permission_required(REVIEW, raise_exception=True)
@require_POST
def renew(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The reviewer is active on the item: extend the lease. 409 if it is no longer theirs, 404
    if the reviewer can no longer see it (settled meanwhile: nothing said of how).

    The text of a 404 or 409 is what the pane shows: why the item is gone, and what to do next.
    """
    image = _reviewable(request, pk)
    if image is None:
        message = f"{services.not_waiting_message(pk)} Take the next item from the queue."
        return HttpResponse(message, status=404, content_type="text/plain; charset=utf-8")
    if services.extend_lease(image_id=pk, reviewer_id=request.user.pk) is not None:
        return HttpResponse(status=204)
    if image.status not in services.DECIDABLE:
        # Only admins see a settled image: they are told how it was settled.
        message = (
            f"Image {pk} was settled meanwhile: it is {image.get_status_display().lower()}. "
            "Take the next item from the queue."
        )
    else:
        message = (
            "Your claim on this image has expired; it may be someone else's now. "
            "Take the next item from the queue."
        )
    return HttpResponse(message, status=409, content_type="text/plain; charset=utf-8")


@permission_required(REVIEW, raise_exception=True)
@require_POST
def preferences(request: HtmxHttpRequest) -> HttpResponse:
    ReviewerPreference.objects.update_or_create(
        user=request.user,
        defaults={
            "greyscale": request.POST.get("greyscale") == "on",
            "order_by_due": request.POST.get("order_by_due") == "on",
        },
    )
    target = request.POST.get("next", "")
    # Local paths only: "//host/" and "/\\host/" start with a slash but leave the site.
    if not (target.startswith("/") and url_has_allowed_host_and_scheme(target, allowed_hosts=None)):
        target = reverse("review_queue")
    if request.htmx:
        return HttpResponseClientRedirect(target)
    return redirect(target)


@permission_required(ADMIN, raise_exception=True)
@require_safe
def escalated(request: HtmxHttpRequest) -> HttpResponse:
    """Admins: escalated items first, then everything waiting, to decide one by one or in bulk."""
    return _escalated_page(request)


def _escalated_page(
    request: HtmxHttpRequest, *, status: int = 200, reason: str = ""
) -> HttpResponse:
    images = (
        Image.objects.filter(status__in=services.DECIDABLE)
        .select_related("uploaded_by")
        .order_by("-status", "status_changed_at", "id")[:200]
    )
    # The latest escalation that still stands (later rows win): an undone one is no note.
    escalations = Decision.objects.standing_escalations().filter(image__in=[i.pk for i in images])
    notes = {d.image_id: d for d in escalations}  # later rows win: the one that stands
    return TemplateResponse(
        request,
        "reviews/escalated.html",
        {
            "images": images,
            "notes": notes,
            "limits": limits,
            "reason": reason,
            "undo": _undoable(request, request.GET.get("undo", "")),
            "undo_seconds": services.undo_window().total_seconds(),
            "nav": "escalated",
        },
        status=status,
    )


def _undoable(request: HtmxHttpRequest, decision_id: str) -> Decision | None:
    """The user's own decision `decision_id` if it can still be undone (for the Undo button)."""
    pk = limits.whole_number(decision_id)
    if pk is None:
        return None
    return (
        Decision.objects.undoable_kinds()
        .filter(
            pk=pk,
            reviewer=request.user,
            created_at__gte=timezone.now() - services.undo_window(),
            undone_by__isnull=True,
        )
        .first()
    )


@permission_required(ADMIN, raise_exception=True)
@require_POST
def bulk(request: HtmxHttpRequest) -> HttpResponse:
    """Approve or reject several items from the list, each decided and audited on its own."""
    action = request.POST.get("action")
    try:
        reason = services.check_words(request.POST.get("reason", ""), what="reason")
        if action not in ("approve", "reject"):
            raise services.Invalid("Choose Approve or Reject.")
        if action == "reject" and not reason:
            raise services.Invalid("Rejecting needs a reason.")
    except services.Invalid as error:
        # The list again with the message and a 400, nothing decided.
        messages.error(request, error.message)
        return _escalated_page(request, status=error.status, reason=request.POST.get("reason", ""))
    ids = [pk for v in request.POST.getlist("images") if (pk := limits.whole_number(v)) is not None]
    context = audit.AuditContext.from_request(request)
    done, refused = 0, []
    for image_id in ids:
        try:
            services.decide(
                image_id=image_id,
                reviewer=request.user,
                verdict=action,
                reason=reason,
                context=context,
            )
            done += 1
        except (services.ReviewError, Image.DoesNotExist) as error:
            refused.append(f"{image_id}: {getattr(error, 'message', 'not found')}")
    if done:
        verb = "approved" if action == "approve" else "rejected"
        messages.success(request, f"{done} image(s) {verb}, each on the audit log.")
    for line in refused:
        messages.error(request, line)
    return redirect("review_escalated")


@permission_required(ADMIN, raise_exception=True)
@require_POST
def reopen(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """An admin sends a settled image back to the review queue (with a reason)."""
    return _later_change(request, pk, "reopen")


@permission_required(ADMIN, raise_exception=True)
@require_POST
def override(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """An admin changes a settled image's outcome, approved to rejected or back (with a reason)."""
    return _later_change(request, pk, "override")


def _later_change(request: HtmxHttpRequest, pk: int, what: str) -> HttpResponse:
    """Reopen or override from the image page: with htmx the outcome card (and the status and
    history beside it) is swapped; without, a redirect to the page, or the page with the reason
    and the real status (400, 409) when refused."""
    image = get_object_or_404(Image, pk=pk)
    reason = request.POST.get("reason", "")
    expected = request.POST.get("expected") or None
    context = audit.AuditContext.from_request(request)
    try:
        if what == "reopen":
            outcome = services.reopen(
                image_id=image.pk,
                admin=request.user,
                reason=reason,
                expected=expected,
                context=context,
            )
            note = f"Image {image.pk} is back in the review queue."
        else:
            outcome = services.override(
                image_id=image.pk,
                admin=request.user,
                to=request.POST.get("to", ""),
                reason=reason,
                expected=expected,
                context=context,
            )
            note = f"Image {image.pk} is now {outcome.image.get_status_display().lower()}."
    except services.ReviewError as error:
        image.refresh_from_db()
        template = "images/detail.html#changed" if request.htmx else "images/detail.html"
        response = TemplateResponse(
            request,
            template,
            image_detail_context(image, error=error.message),
            status=error.status,
        )
        return _vary(response)
    if not request.htmx:
        messages.success(request, note)
        return _vary(redirect(outcome.image))
    response = TemplateResponse(
        request, "images/detail.html#changed", image_detail_context(outcome.image, note=note)
    )
    return _vary(response)
