"""Per-tenant quotas on devices, sensors and users, checked when a row is saved.

The check runs in a ``pre_save`` receiver, the one place that the REST API,
the tenant admin, device-profile imports and management commands all pass
through. ``QuerySet.bulk_create`` and ``update()`` skip model signals, so code
that creates these rows must not use them.
"""

import logging
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models.signals import pre_save
from django_tenants.utils import get_public_schema_name, get_tenant_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quota:
    """A countable limit: the Tenant field that sets it and the model whose rows it counts."""

    field: str
    model: str
    noun: str

    def count(self, model):
        rows = model._default_manager.all()
        if self.field == "max_users":
            rows = rows.filter(is_active=True)
        return rows.count()


QUOTAS = (
    Quota("max_devices", "protocols.Device", "devices"),
    Quota("max_sensors", "sensors.Sensor", "sensors"),
    Quota("max_users", "accounts.User", "active users"),
)


class QuotaExceeded(PermissionDenied):
    """Saving the object would take the tenant past one of its quotas, so the API and admin return 403."""

    def __init__(self, quota, limit, schema_name):
        self.quota = quota
        self.limit = limit
        message = (
            f"Quota {quota.field} exceeded: tenant {schema_name!r} may have at most {limit} {quota.noun}. "
            f"Delete unused {quota.noun} or ask the platform operator to raise {quota.field}."
        )
        super().__init__(message)


def current_tenant():
    """Return the Tenant row of the connection's schema, or None in the public schema."""
    if connection.schema_name == get_public_schema_name():
        return None
    tenant = getattr(connection, "tenant", None)
    tenant_model = get_tenant_model()
    if isinstance(tenant, tenant_model):
        return tenant
    # schema_context() sets a stand-in without the tenant's columns.
    return tenant_model.objects.filter(schema_name=connection.schema_name).first()


def check_quota(quota, model):
    """Raise QuotaExceeded when the tenant of the current schema has no room for one more row."""
    tenant = current_tenant()
    limit = getattr(tenant, quota.field, None) if tenant is not None else None
    if limit is None:
        return

    # Two concurrent creations would both see room for one more, so they queue on a
    # transaction-level lock per schema and quota. Outside a transaction there is no lock.
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"quota:{tenant.schema_name}:{quota.field}"])
    if quota.count(model) >= limit:
        logger.info("Tenant %s: %s quota of %d reached", tenant.schema_name, quota.field, limit)
        raise QuotaExceeded(quota, limit, tenant.schema_name)


def _adds_row(quota, instance):
    if instance._state.adding:
        return quota.field != "max_users" or instance.is_active
    if quota.field == "max_users" and instance.is_active:
        # Reactivating an account takes a place again.
        return type(instance)._default_manager.filter(pk=instance.pk, is_active=False).exists()
    return False


def _receiver_for(quota):
    def check_before_save(sender, instance, raw=False, **kwargs):
        # Fixture loading (raw) restores existing data, e.g. a tenant import, and is not limited.
        if raw or not _adds_row(quota, instance):
            return
        check_quota(quota, sender)

    check_before_save.__name__ = f"check_{quota.field}"
    return check_before_save


_RECEIVERS = {quota.field: _receiver_for(quota) for quota in QUOTAS}


def connect_receivers():
    """Connect the quota checks to their models; called from TenantsConfig.ready()."""
    for quota in QUOTAS:
        pre_save.connect(_RECEIVERS[quota.field], sender=quota.model, dispatch_uid=f"tenants.quota.{quota.field}")
