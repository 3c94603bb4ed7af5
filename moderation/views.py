from __future__ import annotations

import logging
from typing import TYPE_CHECKING, BinaryIO, cast

from django.contrib.auth.decorators import login_not_required, permission_required
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

from . import audit, services
from .models import AuditEntry, Image

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        htmx: HtmxDetails


logger = logging.getLogger(__name__)

IMAGES_PER_PAGE = 48


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    if request.user.has_perm("moderation.view_image"):
        return redirect("image_list")
    if request.user.has_perm("moderation.review_image"):
        return redirect("review_queue")
    return TemplateResponse(request, "no_role.html", status=403)


@login_not_required
@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except Exception:
        logger.exception("health check: database unreachable")
        database = "unreachable"
    status = 200 if database == "ok" else 503
    return JsonResponse(
        {"status": "ok" if status == 200 else "degraded", "database": database}, status=status
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
    history = AuditEntry.objects.filter(image=image).order_by("seq").select_related("actor")
    return TemplateResponse(request, "images/detail.html", {"image": image, "history": history})


_VARIANTS = {"original": "file", "preview": "preview", "thumbnail": "thumbnail"}


@require_safe
def image_file(request: HttpRequest, pk: int, variant: str) -> FileResponse:
    """Image bytes, only for someone allowed to see the image, never from a public URL."""
    image = get_object_or_404(Image.objects.visible_to(request.user), pk=pk)
    stored = getattr(image, _VARIANTS[variant])
    if not stored.name:
        raise Http404("this image has no such rendition")
    content_type = image.content_type if variant == "original" else "image/webp"
    extension = stored.name.rsplit(".", 1)[-1]
    response = FileResponse(
        default_storage.open(stored.name, "rb"),
        content_type=content_type,
        filename=f"image-{image.pk}-{variant}.{extension}",
        as_attachment=False,
    )
    response["X-Content-Type-Options"] = "nosniff"
    # The bytes are user-supplied: never let a browser treat them as a document.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=3600"
    return response
