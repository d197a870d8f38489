from django.urls import path

from . import views

urlpatterns = [
    path("entries/", views.AuditEntryListView.as_view(), name="audit-entry-list"),
    path("export/", views.AuditExportView.as_view(), name="audit-export"),
    path("export/manifest/", views.AuditExportManifestView.as_view(), name="audit-export-manifest"),
]
