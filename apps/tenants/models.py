import uuid

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import NotSupportedError, models
from django_tenants.models import DomainMixin, TenantMixin

from apps.accounts.choices import Role

from .choices import PROVISIONING_PROGRESS, ProvisioningStatus, ProvisioningStep, TenantStatus
from .validators import (
    schema_name_validator,
    validate_domain_name,
    validate_network,
    validate_throttle_rate,
    validate_time_zone,
)

# 100 years: longer than any plant's history, and short enough that "now minus retention" is a valid date.
MAX_RETENTION_DAYS = 36500


class TenantQuerySet(models.QuerySet):
    def active(self):
        """Return the tenants that are served and polled, i.e. not suspended."""
        return self.filter(status=TenantStatus.ACTIVE)

    def delete(self):
        # A queryset delete skips Tenant.delete() and so would leave every schema behind.
        raise NotSupportedError(
            "Deleting tenants in bulk is not supported because it would leave their schemas behind; "
            "delete each tenant on its own with tenant.delete(force_drop=True)."
        )


class Tenant(TenantMixin):
    """A customer company whose plant data lives in its own PostgreSQL schema.

    Quotas and the security policy are columns of this public-schema row, so
    only the platform operator changes them and every request already has
    them in ``request.tenant`` without a query into the tenant's schema.
    """

    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="IANA time zone name used to show and import local times.",
    )
    status = models.CharField(max_length=16, choices=TenantStatus.choices, default=TenantStatus.ACTIVE)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.CharField(max_length=500, blank=True)

    # Quotas: empty means no limit (apps.tenants.quotas enforces them).
    max_devices = models.PositiveIntegerField(null=True, blank=True, help_text="Maximum number of devices; empty for no limit.")
    max_sensors = models.PositiveIntegerField(null=True, blank=True, help_text="Maximum number of sensors; empty for no limit.")
    max_users = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Maximum number of active accounts, the machine users of API keys included; empty for no limit.",
    )
    api_rate_limit = models.CharField(
        max_length=32,
        default="600/min",
        validators=[validate_throttle_rate],
        help_text="API requests each user or API key may make, e.g. '600/min', '20/s' or '10000/day'.",
    )
    # The daily task telemetry.apply_retention drops the reading partitions older than this.
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_RETENTION_DAYS)],
        help_text=f"Days readings are kept, 1 to {MAX_RETENTION_DAYS}; empty to keep them for ever.",
    )

    # Security policy (apps.tenants.policy).
    password_min_length = models.PositiveSmallIntegerField(
        default=12,
        validators=[MinValueValidator(8), MaxValueValidator(128)],
        help_text="Minimum password length for this tenant's users (8 to 128 characters).",
    )
    session_timeout_minutes = models.PositiveIntegerField(
        default=480,
        validators=[MinValueValidator(5), MaxValueValidator(60 * 24 * 14)],
        help_text="Minutes of inactivity after which a browser session ends (5 minutes to 14 days).",
    )
    api_allowed_networks = ArrayField(
        models.CharField(max_length=49, validators=[validate_network]),
        default=list,
        blank=True,
        help_text="Networks in CIDR notation, e.g. 10.20.0.0/16, from which the API may be called; empty for any.",
    )
    two_factor_roles = ArrayField(
        models.CharField(max_length=16, choices=Role.choices),
        default=list,
        blank=True,
        help_text="Roles whose users must confirm each browser login with a TOTP code, e.g. admin,operator.",
    )

    auto_create_schema = True
    auto_drop_schema = True

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=TenantStatus.values), name="tenants_tenant_status_valid"),
            models.CheckConstraint(
                condition=~models.Q(status=TenantStatus.SUSPENDED) | models.Q(suspended_at__isnull=False),
                name="tenants_tenant_suspended_has_time",
            ),
            models.CheckConstraint(
                condition=models.Q(password_min_length__gte=8), name="tenants_tenant_password_min_length_at_least_8"
            ),
            models.CheckConstraint(
                condition=models.Q(session_timeout_minutes__gte=5), name="tenants_tenant_session_timeout_at_least_5"
            ),
        ]

    def __str__(self):
        return self.name

    def clean(self):
        # The schema name field comes from django-tenants, which checks less than PostgreSQL needs.
        try:
            schema_name_validator(self.schema_name)
        except ValidationError as exc:
            raise ValidationError({"schema_name": f"Schema name {self.schema_name!r} is invalid: {exc.messages[0]}"})

    @property
    def is_suspended(self):
        return self.status == TenantStatus.SUSPENDED


class Domain(DomainMixin):
    """A host name that routes requests to its tenant, e.g. ``demo.localhost``."""

    def __str__(self):
        return self.domain

    def clean(self):
        super().clean()
        try:
            validate_domain_name(self.domain)
        except ValidationError as exc:
            raise ValidationError({"domain": exc.messages}) from None


class ProvisioningJob(models.Model):
    """A request of a platform user to provision a tenant, carried out by the Celery task ``tenants.provision``.

    The platform API returns it with 202 and the client polls it until
    ``status`` is succeeded or failed. It stores the first admin's password
    only as a Django password hash.
    """

    ACTIVE_STATUSES = (ProvisioningStatus.PENDING, ProvisioningStatus.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    schema_name = models.CharField(max_length=63)
    name = models.CharField(max_length=200)
    domain = models.CharField(max_length=253)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    admin_username = models.CharField(max_length=150)
    admin_email = models.EmailField(blank=True)
    admin_password_hash = models.CharField(max_length=256)
    # Quotas and policy applied to the tenant row before it is activated, by Tenant field name.
    tenant_settings = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ProvisioningStatus.choices, default=ProvisioningStatus.PENDING)
    step = models.CharField(max_length=16, choices=ProvisioningStep.choices, default=ProvisioningStep.QUEUED)
    error = models.TextField(blank=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requested_by = models.CharField(max_length=150, help_text="User name of the platform user who asked for it.")
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Times the task was sent to the broker and the latest of them (apps.tenants.recovery re-sends lost ones).
    queue_attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            # Two unfinished requests for one schema or domain would race in provisioning.
            models.UniqueConstraint(
                fields=["schema_name"], condition=models.Q(status__in=["pending", "running"]),
                name="tenants_provisioningjob_one_active_per_schema",
            ),
            models.UniqueConstraint(
                fields=["domain"], condition=models.Q(status__in=["pending", "running"]),
                name="tenants_provisioningjob_one_active_per_domain",
            ),
        ]

    def __str__(self):
        return f"Provisioning of {self.schema_name} ({self.status})"

    @property
    def progress(self):
        """Percent complete, from the step reached; a failed job keeps the value of the step it failed in."""
        if self.status == ProvisioningStatus.SUCCEEDED:
            return 100
        return PROVISIONING_PROGRESS[ProvisioningStep(self.step)]


# Export and lifecycle records live in their own module; importing them here registers them with Django.
from .backup_models import TenantExport, TenantLifecycleEvent  # noqa: F401
