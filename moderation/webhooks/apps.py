from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "moderation.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from moderation.events.models import Event

        from . import fanout

        # The outbox: deliveries are written in the transaction that writes the event.
        post_save.connect(fanout.on_event_saved, sender=Event, dispatch_uid="webhooks.fanout")
