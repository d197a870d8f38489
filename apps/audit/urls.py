from django.urls import path

from . import pages

app_name = "audit"

urlpatterns = [
    path("", pages.entry_list, name="entries"),
]
