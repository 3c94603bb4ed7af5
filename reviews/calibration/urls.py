from django.urls import path

from . import views

urlpatterns = [
    path("", views.calibration, name="calibration"),
    path("thresholds/", views.thresholds, name="calibration_thresholds"),
]
