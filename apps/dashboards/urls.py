from django.urls import path

from . import views

app_name = "dashboards"

urlpatterns = [
    path("", views.live, name="live"),
    path("units/<int:pk>/", views.unit_detail, name="unit_detail"),
]
