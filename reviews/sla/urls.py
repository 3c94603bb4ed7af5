from django.urls import path

from . import views

urlpatterns = [
    path("", views.targets, name="sla_targets"),
]
