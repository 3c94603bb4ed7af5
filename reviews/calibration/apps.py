from django.apps import AppConfig


class CalibrationConfig(AppConfig):
    name = "reviews.calibration"
    label = "calibration"
    verbose_name = "IMM calibration"
