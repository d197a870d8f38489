"""Celery application whose tasks run in the schema of the tenant that queued them."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")

app = CeleryApp("thermacore")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
