from django.urls import path

from . import views

urlpatterns = [
    path("", views.exposure, name="exposure"),
    path("mine/", views.mine, name="exposure_mine"),
    path("break/", views.dismiss_break, name="exposure_break"),
]
