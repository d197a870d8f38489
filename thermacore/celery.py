"""Celery application whose tasks run in the schema of the tenant that queued them."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")

# Every task skips tenants that are suspended or still being provisioned.
app = CeleryApp("thermacore", task_cls="apps.tenants.celery_tasks:ActiveTenantTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
