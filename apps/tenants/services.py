"""Tenant provisioning, run from the public schema."""

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from apps.accounts.choices import Role
from apps.accounts.sockets import close_tenant_sockets
from apps.audit.services import Actor, field_changes, record_tenant_lifecycle, snapshot

from .choices import ProvisioningStep, TenantStatus
from .models import Domain, Tenant
from .validators import schema_name_validator, validate_domain_name

logger = logging.getLogger(__name__)

# Tenant fields that the platform operator sets per tenant: quotas, security policy and display settings.
TENANT_SETTING_FIELDS = (
    "name", "time_zone",
    "max_devices", "max_sensors", "max_users", "api_rate_limit", "retention_days",
    "password_min_length", "session_timeout_minutes", "api_allowed_networks", "two_factor_roles",
)


def check_provisioning_request(
    *, schema_name, name, domain, admin_username, admin_password=None, admin_email="", time_zone="UTC",
    tenant_settings=None,
):
    """Validate a provisioning request without creating anything; return the unsaved Tenant.

    Raises ValidationError for an invalid schema name, domain, password or
    tenant setting (keyed by field where there is one), and ValueError when
    the schema name or domain is already taken.
    """
    try:
        schema_name_validator(schema_name)
    except ValidationError as exc:
        raise ValidationError(f"Schema name {schema_name!r} is invalid: {exc.messages[0]}") from None
    validate_domain_name(domain)
    if admin_password is not None:
        # Checked against a user of that name, before any schema exists, so a weak password costs nothing.
        validate_password(admin_password, user=get_user_model()(username=admin_username, email=admin_email))
    if Tenant.objects.filter(schema_name=schema_name).exists():
        raise ValueError(f"Tenant schema {schema_name!r} already exists; choose another schema name.")
    if Domain.objects.filter(domain=domain).exists():
        raise ValueError(f"Domain {domain!r} is already used by another tenant; choose another domain.")

    allowed = [name for name in TENANT_SETTING_FIELDS if name not in ("name", "time_zone")]
    unknown = sorted(set(tenant_settings or {}) - set(allowed))
    if unknown:
        raise ValidationError(f"Unknown tenant settings {', '.join(unknown)}; use only {', '.join(allowed)}.")
    # Celery beat serves active tenants only, so it leaves this one alone until its schema is ready.
    tenant = Tenant(
        schema_name=schema_name, name=name, time_zone=time_zone, status=TenantStatus.PROVISIONING,
        **(tenant_settings or {}),
    )
    tenant.full_clean(validate_unique=False)
    return tenant


def provision_tenant(
    *, schema_name, name, domain, admin_username, admin_password=None, admin_password_hash=None, admin_email="",
    actor=None, time_zone="UTC", tenant_settings=None, on_step=None,
):
    """Create a tenant with its schema, its primary domain and a first user with the Admin role.

    Give the admin's password either as ``admin_password`` (validated here)
    or as ``admin_password_hash`` from Django's ``make_password`` (validated
    by the caller when it was hashed). ``tenant_settings`` sets quotas and
    policy fields of the tenant row. ``on_step`` is called with each
    ProvisioningStep as it begins.

    The schema is created and migrated by django-tenants when the tenant is
    saved. When any later step fails, the tenant row and its schema are
    removed again so that no half-provisioned tenant stays behind.
    """
    if (admin_password is None) == (admin_password_hash is None):
        raise TypeError("Give exactly one of admin_password and admin_password_hash.")
    report_step = on_step or (lambda step: None)
    tenant = check_provisioning_request(
        schema_name=schema_name, name=name, domain=domain, admin_username=admin_username,
        admin_password=admin_password, admin_email=admin_email, time_zone=time_zone,
        tenant_settings=tenant_settings,
    )

    logger.info("Provisioning tenant schema=%s domain=%s", schema_name, domain)
    report_step(ProvisioningStep.SCHEMA)
    tenant.save()
    try:
        report_step(ProvisioningStep.DOMAIN)
        with transaction.atomic():
            Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
        report_step(ProvisioningStep.ADMIN)
        with schema_context(schema_name), transaction.atomic():
            admin = get_user_model().objects.create_user(
                username=admin_username, email=admin_email, password=admin_password,
                role=Role.ADMIN, is_staff=True,
            )
            if admin_password_hash is not None:
                admin.password = admin_password_hash
                admin.save(update_fields=["password"])
            record_tenant_lifecycle(
                tenant, "provisioned", actor=actor or Actor.system_job("tenants.provision"),
                detail={"domain": domain, "admin_username": admin_username},
            )
    except Exception:
        logger.exception("Provisioning tenant schema=%s failed; dropping its schema", schema_name)
        tenant.delete(force_drop=True)
        raise
    report_step(ProvisioningStep.ACTIVATING)
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
    """Suspend a tenant: its domains return 403, its open WebSockets close, new ones are refused and beat stops polling it.

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
            close_tenant_sockets(tenant.schema_name, "Tenant suspended; contact the platform operator.")
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


def update_tenant_settings(tenant, changes, *, actor):
    """Change quotas, policy or display settings of a tenant and record the change in its audit trail.

    ``changes`` maps names of TENANT_SETTING_FIELDS to new values. Raises
    ValidationError naming the field for an invalid value; then nothing is
    saved. Returns the field changes as {"field": [before, after]}.
    """
    unknown = sorted(set(changes) - set(TENANT_SETTING_FIELDS))
    if unknown:
        raise ValidationError(
            f"Unknown tenant settings {', '.join(unknown)}; use only {', '.join(TENANT_SETTING_FIELDS)}."
        )
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = snapshot(tenant)
        for name, value in changes.items():
            setattr(tenant, name, value)
        tenant.full_clean(validate_unique=False)
        changed = field_changes(before, snapshot(tenant))
        if changed:
            tenant.save(update_fields=list(changed))
            record_tenant_lifecycle(tenant, "settings_changed", actor=actor, detail={"changes": changed})
    if changed:
        logger.info("Changed settings %s of tenant schema=%s by platform user %s",
                    ", ".join(changed), tenant.schema_name, getattr(actor, "pk", actor))
    return changed
