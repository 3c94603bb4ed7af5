from django.urls import path

from . import views

urlpatterns = [
    path("", views.page, name="dashboard"),
    path("<slug:name>.csv", views.chart_csv, name="dashboard_csv"),
]
