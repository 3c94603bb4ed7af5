from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "moderation.api"
    label = "api"
    verbose_name = "Platform API"
