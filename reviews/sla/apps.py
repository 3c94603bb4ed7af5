from django.apps import AppConfig


class SlaConfig(AppConfig):
    name = "reviews.sla"
    label = "sla"
    verbose_name = "Response-time targets"
