from django.urls import path

from . import pages

app_name = "audit"

urlpatterns = [
    path("", pages.entry_list, name="entries"),
    path("exports/", pages.start_export, name="start-export"),
    path("exports/<int:pk>/", pages.export_status, name="export-status"),
    path("exports/<int:pk>/file/", pages.export_download, {"part": "file"}, name="export-file"),
    path("exports/<int:pk>/manifest/", pages.export_download, {"part": "manifest"}, name="export-manifest"),
]
