from django.urls import path

from . import views

urlpatterns = [
    path("", views.webhooks, name="webhooks"),
    path("endpoints/<int:pk>/", views.endpoint_action, name="webhook_endpoint"),
    path("deliveries/<int:pk>/resend", views.delivery_resend, name="webhook_resend"),
]
