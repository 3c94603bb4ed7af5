from django.contrib import admin
from django.urls import include, path, re_path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("images/", views.image_list, name="image_list"),
    path("images/upload/", views.upload, name="upload"),
    path("images/<int:pk>/", views.image_detail, name="image_detail"),
    re_path(
        r"^images/(?P<pk>[0-9]+)/(?P<variant>original|preview|thumbnail|preview-blurred|thumbnail-blurred)$",
        views.image_file,
        name="image_file",
    ),
    path("images/<int:pk>/retry", views.image_retry, name="image_retry"),
    path("imm/notifications/", views.imm_notification, name="imm_notification"),
    path("imm/routing/", views.routing_rules, name="routing_rules"),
    path("imm/resume/", views.imm_resume, name="imm_resume"),
    path("reviews/", include("reviews.urls")),
    path("audit/", include("reviews.urls_audit")),
    path("admin/", admin.site.urls),
]
