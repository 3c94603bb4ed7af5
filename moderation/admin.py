from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import AuditEntry, Image


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin[Image]):
    list_display = ["id", "original_filename", "status", "format", "width", "height", "uploaded_at"]
    list_filter = ["status", "format"]
    search_fields = ["sha256", "original_filename"]
    date_hierarchy = "uploaded_at"
    list_select_related = ["uploaded_by"]
    # Status moves only through the services (which write the audit log), never by hand here.
    readonly_fields = [f.name for f in Image._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin[AuditEntry]):
    list_display = [
        "id",
        "seq",
        "created_at",
        "actor_label",
        "action",
        "image",
        "state_before",
        "state_after",
    ]
    list_filter = ["action"]
    search_fields = ["actor_label", "action", "entry_hash"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
