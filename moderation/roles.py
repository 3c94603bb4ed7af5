"""The two roles, as Django groups with their permissions.

A data migration creates them; `sync_roles` is idempotent, so user creation calls it too (a test
database flushed between tests, or a permission added later, heals itself).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps

ADMINS = "admins"
REVIEWERS = "reviewers"
ROLES = {"admin": ADMINS, "reviewer": REVIEWERS}

# (app_label, codename)
ROLE_PERMISSIONS: dict[str, list[tuple[str, str]]] = {
    ADMINS: [
        ("moderation", "add_image"),
        ("moderation", "view_image"),
        ("moderation", "change_image"),
        ("moderation", "review_image"),
        ("moderation", "view_auditentry"),
    ],
    REVIEWERS: [
        ("moderation", "review_image"),
    ],
}


def sync_roles(apps: Any = global_apps) -> None:
    """Create the groups and give them exactly their permissions."""
    from django.contrib.auth.management import create_permissions

    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for app_config in apps.get_app_configs():
        # Permissions are normally created after migrations; make sure ours exist now.
        original = getattr(app_config, "models_module", None)
        app_config.models_module = original or True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = original
    for group_name, wanted in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        perms = [
            permission_model.objects.get(content_type__app_label=app, codename=codename)
            for app, codename in wanted
        ]
        group.permissions.set(perms)
