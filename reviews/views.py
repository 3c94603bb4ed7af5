from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_safe

from moderation.models import Image

ITEMS_PER_PAGE = 50


@permission_required("moderation.review_image", raise_exception=True)
@require_safe
def queue(request: HttpRequest) -> HttpResponse:
    """Images waiting for a human decision, oldest first."""
    waiting = Image.objects.awaiting_review().order_by("status_changed_at", "id")
    page = Paginator(waiting, ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    return TemplateResponse(request, "reviews/queue.html", {"page": page, "nav": "queue"})
