"""Per-tenant quotas on devices, sensors and users, checked when a row is saved or created in bulk.

A ``pre_save`` receiver checks single saves, the one place that the REST API,
the tenant admin, device-profile imports and management commands all pass
through. ``bulk_create()``, ``bulk_update()`` and ``update()`` send no model
signals, so the quota-bound models use QuotaCheckedQuerySet, which checks
the rows a bulk call would add before it writes any of them.
"""

import logging
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.db import connection, models
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

    def __init__(self, quota, limit, schema_name, *, adding=1, existing=None):
        self.quota = quota
        self.limit = limit
        message = f"Quota {quota.field} exceeded: tenant {schema_name!r} may have at most {limit} {quota.noun}. "
        if adding > 1:
            message += f"It has {existing}, and this request would add {adding}; nothing was created. "
        message += f"Delete unused {quota.noun} or ask the platform operator to raise {quota.field}."
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


def check_quota(quota, model, adding=1):
    """Raise QuotaExceeded when the tenant of the current schema has no room for ``adding`` more rows."""
    if adding <= 0:
        return
    tenant = current_tenant()
    limit = getattr(tenant, quota.field, None) if tenant is not None else None
    if limit is None:
        return

    # Two concurrent creations would both see room for one more, so they queue on a
    # transaction-level lock per schema and quota. Outside a transaction there is no lock.
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"quota:{tenant.schema_name}:{quota.field}"])
    existing = quota.count(model)
    if existing + adding > limit:
        logger.info("Tenant %s: %s quota of %d reached (%d present, %d requested)",
                    tenant.schema_name, quota.field, limit, existing, adding)
        raise QuotaExceeded(quota, limit, tenant.schema_name, adding=adding, existing=existing)


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


def quota_for_model(model):
    """Return the Quota that counts rows of ``model``, or None."""
    label = model._meta.concrete_model._meta.label
    return next((quota for quota in QUOTAS if quota.model == label), None)


class QuotaCheckedQuerySet(models.QuerySet):
    """A QuerySet whose bulk writes check the tenant's quota on the model's rows before writing.

    ``bulk_create`` counts the new objects (active ones for users), and for
    users ``bulk_update`` and ``update`` count the accounts they reactivate.
    All rows are checked at once, so an over-quota call writes none of them.
    Call these inside a transaction for the per-quota lock of check_quota.
    NOTE: ``bulk_create(update_conflicts=True)`` counts every object as new,
    so an upsert near the limit may be rejected although it adds fewer rows.
    """

    def bulk_create(self, objs, *args, **kwargs):
        objs = list(objs)
        quota = quota_for_model(self.model)
        if quota is not None:
            adding = sum(1 for obj in objs if _adds_row_in_bulk(quota, obj))
            check_quota(quota, self.model, adding)
        return super().bulk_create(objs, *args, **kwargs)

    def bulk_update(self, objs, fields, *args, **kwargs):
        objs = list(objs)
        quota = quota_for_model(self.model)
        if quota is not None and quota.field == "max_users" and "is_active" in fields:
            activating = [obj.pk for obj in objs if obj.is_active]
            check_quota(quota, self.model, self._inactive_count(activating))
        return super().bulk_update(objs, fields, *args, **kwargs)

    def update(self, **kwargs):
        quota = quota_for_model(self.model)
        if quota is not None and quota.field == "max_users" and kwargs.get("is_active") is True:
            check_quota(quota, self.model, self.filter(is_active=False).count())
        return super().update(**kwargs)

    def _inactive_count(self, pks):
        if not pks:
            return 0
        return self.model._default_manager.filter(pk__in=pks, is_active=False).count()


def _adds_row_in_bulk(quota, obj):
    if quota.field == "max_users" and not obj.is_active:
        return False
    return obj._state.adding
