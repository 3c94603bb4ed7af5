from django.apps import AppConfig


class QaConfig(AppConfig):
    name = "reviews.qa"
    label = "qa"
    verbose_name = "Quality assurance"
