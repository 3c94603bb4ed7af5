from django.apps import AppConfig


class ModerationConfig(AppConfig):
    name = "moderation"
    verbose_name = "Moderation"

    def ready(self) -> None:
        # Connects the receiver that records sign-in lockouts in the audit log.
        from . import accounts  # noqa: F401
