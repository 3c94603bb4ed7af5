from django.urls import path, re_path

from . import views

urlpatterns = [
    path("", views.overview, name="qa_overview"),
    path("rates/", views.rates, name="qa_rates"),
    path("imm/", views.imm_queue, name="qa_imm_queue"),
    path("imm/next/", views.imm_next, name="qa_imm_next"),
    path("imm/<int:pk>/", views.imm_item, name="qa_imm_item"),
    re_path(
        r"^imm/(?P<pk>[0-9]+)/(?P<variant>preview|preview-blurred)$",
        views.imm_file,
        name="qa_imm_file",
    ),
    path("item/", views.blind, name="qa_blind"),
    path("item/renew/", views.blind_renew, name="qa_blind_renew"),
    re_path(r"^item/(?P<variant>preview|preview-blurred)$", views.blind_file, name="qa_blind_file"),
    path("adjudication/", views.adjudication, name="qa_adjudication"),
    path("adjudication/<int:pk>/", views.adjudicate, name="qa_adjudicate"),
    path("gold/", views.gold, name="qa_gold"),
    path("gold/<int:pk>/retire/", views.gold_retire, name="qa_gold_retire"),
]
