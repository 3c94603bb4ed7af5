from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from . import views
from .api import api as platform_api
from .api import views as api_views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    # Sign-in, sign-out and password change only: admins reset passwords (manage.py
    # changepassword or the admin), so there is no emailed reset link to abuse or misconfigure.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
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
    path("dashboard/", include("reviews.dashboard.urls")),
    path("api/v1/", platform_api.urls),
    platform_api.catch_all,
    path("api-keys/", api_views.keys_page, name="api_keys"),
    path("api-keys/<int:key_id>/revoke", api_views.revoke, name="api_key_revoke"),
    path("audit/", include("moderation.audit.urls")),
    path("webhooks/", include("moderation.webhooks.urls")),
    # The admin's own password change checks the old password without counting wrong guesses.
    path("admin/password_change/", RedirectView.as_view(pattern_name="password_change")),
    path("admin/", admin.site.urls),
]
