"""Tenant provisioning, run from the public schema."""

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from apps.accounts.choices import Role
from apps.audit.services import Actor, record_tenant_lifecycle

from .choices import TenantStatus
from .models import Domain, Tenant
from .validators import schema_name_validator, validate_domain_name

logger = logging.getLogger(__name__)


def provision_tenant(*, schema_name, name, domain, admin_username, admin_password, admin_email="", actor=None):
    """Create a tenant with its schema, its primary domain and a first user with the Admin role.

    The schema is created and migrated by django-tenants when the tenant is
    saved. When any later step fails, the tenant row and its schema are
    removed again so that no half-provisioned tenant stays behind.
    """
    try:
        schema_name_validator(schema_name)
    except ValidationError as exc:
        raise ValidationError(f"Schema name {schema_name!r} is invalid: {exc.messages[0]}") from None
    validate_domain_name(domain)
    # Checked against a user of that name, before any schema exists, so a weak password costs nothing.
    validate_password(admin_password, user=get_user_model()(username=admin_username, email=admin_email))
    if Tenant.objects.filter(schema_name=schema_name).exists():
        raise ValueError(f"Tenant schema {schema_name!r} already exists; choose another schema name.")
    if Domain.objects.filter(domain=domain).exists():
        raise ValueError(f"Domain {domain!r} is already used by another tenant; choose another domain.")

    logger.info("Provisioning tenant schema=%s domain=%s", schema_name, domain)
    # Celery beat serves active tenants only, so it leaves this one alone until its schema is ready.
    tenant = Tenant(schema_name=schema_name, name=name, status=TenantStatus.PROVISIONING)
    tenant.save()
    try:
        with transaction.atomic():
            Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
        with schema_context(schema_name), transaction.atomic():
            get_user_model().objects.create_user(
                username=admin_username, email=admin_email, password=admin_password,
                role=Role.ADMIN, is_staff=True,
            )
            record_tenant_lifecycle(
                tenant, "provisioned", actor=actor or Actor.system_job("tenants.provision"),
                detail={"domain": domain, "admin_username": admin_username},
            )
    except Exception:
        logger.exception("Provisioning tenant schema=%s failed; dropping its schema", schema_name)
        tenant.delete(force_drop=True)
        raise
    tenant.status = TenantStatus.ACTIVE
    tenant.save(update_fields=["status"])
    logger.info("Provisioned tenant schema=%s domain=%s admin=%s", schema_name, domain, admin_username)
    return tenant


def ensure_public_tenant(domain):
    """Map ``domain`` to the public schema, where the platform admin is served; idempotent."""
    public_schema = get_public_schema_name()
    tenant, created = Tenant.objects.get_or_create(schema_name=public_schema, defaults={"name": "Platform"})
    if created:
        logger.info("Created the platform tenant for schema %s", public_schema)
    existing = Domain.objects.filter(domain=domain).select_related("tenant").first()
    if existing and existing.tenant_id != tenant.id:
        raise ValueError(
            f"Domain {domain!r} already belongs to tenant {existing.tenant.schema_name!r}; "
            "choose another domain for the platform."
        )
    if existing is None:
        Domain.objects.create(domain=domain, tenant=tenant, is_primary=not tenant.domains.exists())
        logger.info("Platform admin is served on %s", domain)
    return tenant


def suspend_tenant(tenant, *, actor, reason):
    """Suspend a tenant: its domains return 403, its WebSockets are refused and beat stops polling it.

    The data stays. Return False when the tenant was already suspended.
    """
    if not reason.strip():
        raise ValueError(f"Give a reason for suspending tenant {tenant.schema_name!r}; it is shown in the audit log.")
    with transaction.atomic():
        changed = Tenant.objects.filter(pk=tenant.pk, status=TenantStatus.ACTIVE).update(
            status=TenantStatus.SUSPENDED, suspended_at=timezone.now(), suspension_reason=reason
        )
        if changed:
            record_tenant_lifecycle(tenant, "suspended", actor=actor, detail={"reason": reason})
    tenant.refresh_from_db(fields=["status", "suspended_at", "suspension_reason"])
    if changed:
        logger.info("Suspended tenant schema=%s by platform user %s", tenant.schema_name, actor.pk)
    return bool(changed)


def resume_tenant(tenant, *, actor):
    """Serve a suspended tenant again; return False when it was not suspended."""
    with transaction.atomic():
        changed = Tenant.objects.filter(pk=tenant.pk, status=TenantStatus.SUSPENDED).update(
            status=TenantStatus.ACTIVE, suspended_at=None, suspension_reason=""
        )
        if changed:
            record_tenant_lifecycle(tenant, "resumed", actor=actor)
    tenant.refresh_from_db(fields=["status", "suspended_at", "suspension_reason"])
    if changed:
        logger.info("Resumed tenant schema=%s by platform user %s", tenant.schema_name, actor.pk)
    return bool(changed)
