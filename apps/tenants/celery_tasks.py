"""The base class of every Celery task: tenant-schemas-celery's TenantTask, skipping tenants that are not active."""

import logging

from django.db import connection
from django_tenants.utils import get_public_schema_name
from tenant_schemas_celery.task import TenantTask

from .choices import TenantStatus

logger = logging.getLogger(__name__)


class ActiveTenantTask(TenantTask):
    """Run a task in the schema it was queued for, unless that tenant is no longer active.

    Beat sends nothing to a suspended tenant, but a task queued before the
    suspension (a poll, a notification retry) would still run. This skips it
    and returns None. Tasks of the public schema always run.
    NOTE: tenant-schemas-celery caches tenant rows for CELERY_TASK_TENANT_CACHE_SECONDS,
    so a task may still run that long after the suspension.
    """

    abstract = True

    def __call__(self, *args, **kwargs):
        tenant = getattr(connection, "tenant", None)
        status = getattr(tenant, "status", TenantStatus.ACTIVE)
        if connection.schema_name != get_public_schema_name() and status != TenantStatus.ACTIVE:
            logger.info("Task %s[%s] for schema %s skipped: the tenant is %s",
                        self.name, self.request.id, connection.schema_name, status)
            return None
        return super().__call__(*args, **kwargs)
