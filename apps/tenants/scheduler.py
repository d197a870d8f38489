from tenant_schemas_celery.scheduler import TenantAwarePersistentScheduler

from .models import Tenant


class ActiveTenantScheduler(TenantAwarePersistentScheduler):
    """Celery beat scheduler that sends periodic tasks (polling among them) to active tenants only."""

    @classmethod
    def get_queryset(cls):
        return Tenant.objects.active()
