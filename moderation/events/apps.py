from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "moderation.events"
    label = "events"
    verbose_name = "Outcome events"
