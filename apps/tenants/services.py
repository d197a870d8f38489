"""Tenant provisioning, run from the public schema."""

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.utils import timezone
from django_tenants.models import TenantMixin
from django_tenants.signals import post_schema_sync
from django_tenants.utils import get_public_schema_name, quote_schema_name, schema_context, schema_exists

from apps.accounts.choices import Role
from apps.accounts.sockets import close_tenant_sockets
from apps.audit.services import Actor, field_changes, record_tenant_lifecycle, snapshot

from .choices import ProvisioningStep, TenantStatus
from .models import Domain, Tenant
from .redis_keys import delete_tenant_keys
from .validators import validate_domain_name, validate_new_schema_name

logger = logging.getLogger(__name__)

# SQLSTATE of CREATE SCHEMA on a schema that exists (duplicate_schema).
DUPLICATE_SCHEMA = "42P06"
# Comment on every schema that provisioning or a restore creates, so that a clean-up drops only a schema it created.
SCHEMA_OWNER_COMMENT = "thermacore tenant {tenant_id}"

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
        validate_new_schema_name(schema_name)
    except ValidationError as exc:
        raise ValidationError({"schema_name": f"Schema name {schema_name!r} is invalid: {exc.messages[0]}"}) from None
    validate_domain_name(domain)
    try:
        get_user_model().username_validator(admin_username)
    except ValidationError as exc:
        raise ValidationError(
            {"admin_username": f"Admin user name {admin_username!r} is invalid: {exc.messages[0]}"}
        ) from None
    if admin_password is not None:
        # Checked against a user of that name, before any schema exists, so a weak password costs nothing.
        validate_password(admin_password, user=get_user_model()(username=admin_username, email=admin_email))
    if Tenant.objects.filter(schema_name=schema_name).exists():
        raise ValueError(f"Tenant schema {schema_name!r} already exists; choose another schema name.")
    if Domain.objects.filter(domain=domain).exists():
        raise ValueError(f"Domain {domain!r} is already used by another tenant; choose another domain.")
    if schema_exists(schema_name):
        raise ValueError(
            f"Schema {schema_name!r} already exists in the database but belongs to no tenant; "
            "choose another schema name, or drop that schema if it is a leftover."
        )

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
    if tenant.max_users == 0:
        raise ValidationError({"max_users": "max_users 0 leaves no room for the first admin; give at least 1 or none."})
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

    The schema is created and migrated right after the tenant row is saved.
    When that or any later step fails, the tenant row and its schema are
    removed again so that no half-provisioned tenant stays behind. A schema
    that someone else created meanwhile is left alone (SchemaTaken). Redis
    keys left by a deleted tenant of the same schema name are deleted first,
    so a Redis outage raises redis.RedisError before anything is created.
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
    # A deleted tenant of the same schema name may have left live values, spooled readings or counters.
    delete_tenant_keys(schema_name)
    report_step(ProvisioningStep.SCHEMA)
    # django-tenants would adopt a schema that appeared since the check above, and drop it on a later failure.
    tenant.auto_create_schema = False
    tenant.save()
    try:
        create_tenant_schema(tenant)
    except SchemaTaken:
        logger.warning("Schema %s appeared while provisioning; removed the tenant row and left the schema alone",
                       schema_name)
        discard_tenant(tenant)
        raise
    except Exception:
        logger.exception("Creating schema %s failed; removing the tenant row", schema_name)
        discard_tenant(tenant)
        raise
    try:
        _migrate_new_schema(tenant)
    except Exception:
        logger.exception("Migrating the new schema %s failed; dropping it", schema_name)
        discard_tenant(tenant)
        raise
    try:
        report_step(ProvisioningStep.DOMAIN)
        try:
            with transaction.atomic():
                Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
        except IntegrityError:
            raise ValueError(
                f"Domain {domain!r} was taken by another tenant while this one was being provisioned; "
                "request the tenant again with another domain."
            ) from None
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
        discard_tenant(tenant)
        raise
    report_step(ProvisioningStep.ACTIVATING)
    tenant.status = TenantStatus.ACTIVE
    tenant.save(update_fields=["status"])
    logger.info("Provisioned tenant schema=%s domain=%s admin=%s", schema_name, domain, admin_username)
    return tenant


class SchemaTaken(ValueError):
    """The schema of a tenant being provisioned already exists in the database, created by someone else."""


def create_tenant_schema(tenant):
    """Create the empty schema of a saved tenant and mark it as created for that tenant (see discard_tenant).

    Raises SchemaTaken and leaves that schema untouched when it already exists, because it is not this tenant's.
    """
    quoted = quote_schema_name(tenant.schema_name)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {quoted}")
            cursor.execute(f"COMMENT ON SCHEMA {quoted} IS %s", [SCHEMA_OWNER_COMMENT.format(tenant_id=tenant.pk)])
    except ProgrammingError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != DUPLICATE_SCHEMA:
            raise
        raise SchemaTaken(
            f"Schema {tenant.schema_name!r} was created in the database by someone else while the tenant was being "
            "provisioned; it was left as it is. Choose another schema name, or drop that schema if it is a leftover."
        ) from None


def discard_tenant(tenant):
    """Remove an unfinished tenant's row and domains, and its schema only when created for this tenant row.

    A schema without this tenant's mark (see create_tenant_schema) is left
    alone and logged: someone else created it, or it is a system schema.
    """
    quoted = quote_schema_name(tenant.schema_name)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", [tenant.schema_name]
        )
        row = cursor.fetchone()
        if row is not None and row[0] == SCHEMA_OWNER_COMMENT.format(tenant_id=tenant.pk):
            cursor.execute(f"DROP SCHEMA {quoted} CASCADE")
            logger.info("Dropped schema %s of unfinished tenant %s", tenant.schema_name, tenant.pk)
        elif row is not None:
            logger.warning(
                "Left schema %s alone while removing unfinished tenant %s: this tenant did not create it",
                tenant.schema_name, tenant.pk,
            )
    tenant.auto_drop_schema = False
    tenant.delete()


def _migrate_new_schema(tenant):
    """Migrate a schema made by create_tenant_schema, as django-tenants does on save."""
    try:
        call_command("migrate_schemas", tenant=True, schema_name=tenant.schema_name, interactive=False, verbosity=1)
    finally:
        connection.set_schema_to_public()
    post_schema_sync.send(sender=TenantMixin, tenant=tenant.serializable_fields())


def ensure_public_tenant(domain):
    """Map ``domain`` to the public schema, where the platform admin is served; idempotent.

    Raises ValidationError for a value that is not a host name.
    """
    validate_domain_name(domain)
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
