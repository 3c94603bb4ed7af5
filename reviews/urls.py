from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.queue, name="review_queue"),
    path("qa/", include("reviews.qa.urls")),
    path("next/", views.next_item, name="review_next"),
    path("escalated/", views.escalated, name="review_escalated"),
    path("bulk/", views.bulk, name="review_bulk"),
    path("preferences/", views.preferences, name="review_preferences"),
    path("<int:pk>/", views.item, name="review_item"),
    path("<int:pk>/decide/", views.decide, name="review_decide"),
    path("<int:pk>/renew/", views.renew, name="review_renew"),
    path("<int:pk>/reopen/", views.reopen, name="review_reopen"),
    path("<int:pk>/override/", views.override, name="review_override"),
    path("decisions/<int:pk>/undo/", views.undo, name="review_undo"),
    path("calibration/", include("reviews.calibration.urls")),
    path("sla/", include("reviews.sla.urls")),
    path("exposure/", include("reviews.exposure.urls")),
]
