import json
import logging

from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_tenants.utils import get_public_schema_name, schema_context
from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler

from .models import Tenant

logger = logging.getLogger(__name__)

# Name suffix that tenant-schemas-celery gives the entries of CELERY_BEAT_SCHEDULE sent to every tenant.
ALL_TENANTS_SUFFIX = "@__all_tenants_only__"


class ActiveTenantPeriodicTasks:
    """Latest change time of the periodic tasks in the public schema and every active tenant schema.

    tenant-schemas-celery 5.0.0's own version returns None as soon as the last tenant it
    visits has never changed a periodic task, so beat would miss changes in other schemas.
    """

    @classmethod
    def last_change(cls):
        with schema_context(get_public_schema_name()):
            schemas = list(Tenant.objects.active().values_list("schema_name", flat=True))
            changes = [PeriodicTasks.last_change()]
        for schema in schemas:
            with schema_context(schema):
                changes.append(PeriodicTasks.last_change())
        return max((change for change in changes if change is not None), default=None)


class ActiveTenantScheduler(TenantAwareDatabaseScheduler):
    """Celery beat scheduler that reads django-celery-beat's periodic tasks and sends them to active tenants only.

    Entries of CELERY_BEAT_SCHEDULE are stored in the public schema and sent once per active
    tenant. Each tenant schema may hold periodic tasks of its own, such as its poll groups,
    which are sent to that tenant only. Beat re-reads all of them when any schema's tasks change.
    """

    Changes = ActiveTenantPeriodicTasks

    def enabled_models(self):
        """Return the enabled periodic tasks of all schemas, those of CELERY_BEAT_SCHEDULE without a schema header.

        tenant-schemas-celery 5.0.0 gives every stored task the header ``_schema_name`` of the
        schema it is stored in. An entry sent to all tenants is stored in the public schema, and
        that header would make each tenant's copy run in the public schema instead.
        """
        models = super().enabled_models()
        for task in models:
            headers = json.loads(task.headers)
            if headers.get("_all_tenants_only"):
                headers.pop("_schema_name", None)
                task.headers = json.dumps(headers)
        return models

    def setup_schedule(self):
        super().setup_schedule()
        self.disable_removed_entries()

    def disable_removed_entries(self):
        """Disable the stored copies of entries that CELERY_BEAT_SCHEDULE no longer has, so beat stops sending them.

        They are disabled, not deleted, because a delete would also visit the poll groups that
        refer to periodic tasks, and the public schema has no poll group table.
        """
        current = {f"{name}{ALL_TENANTS_SUFFIX}" for name in self.app.conf.beat_schedule}
        with schema_context(get_public_schema_name()):
            removed = PeriodicTask.objects.filter(name__endswith=ALL_TENANTS_SUFFIX, enabled=True).exclude(
                name__in=current
            )
            names = sorted(removed.values_list("name", flat=True))
            removed.update(enabled=False)
        for name in names:
            self.schedule.pop(name, None)
            logger.info("Disabled periodic task %s, which CELERY_BEAT_SCHEDULE no longer lists", name)

    @classmethod
    def get_queryset(cls):
        return Tenant.objects.active()

    def get_tenant_schema_names(self, exclude_schemas):
        # A schema being provisioned may not have the periodic task tables yet.
        return list(self.get_queryset().exclude(schema_name__in=exclude_schemas).values_list("schema_name", flat=True))
