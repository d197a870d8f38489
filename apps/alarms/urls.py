from django.urls import path

from . import views

app_name = "alarms"

urlpatterns = [
    path("", views.alarm_list, name="list"),
    path("banner/", views.banner, name="banner"),
    path("<int:pk>/acknowledge/", views.acknowledge, name="acknowledge"),
    path("<int:pk>/shelve/", views.shelve, name="shelve"),
    path("<int:pk>/unshelve/", views.unshelve, name="unshelve"),
]
