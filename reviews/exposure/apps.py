from django.apps import AppConfig


class ExposureConfig(AppConfig):
    name = "reviews.exposure"
    label = "exposure"
    verbose_name = "Reviewer exposure"
