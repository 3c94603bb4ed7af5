from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "reviews.dashboard"
    label = "dashboard"
    verbose_name = "Team dashboard"
