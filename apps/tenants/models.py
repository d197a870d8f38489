from django.core.exceptions import ValidationError
from django.db import NotSupportedError, models
from django_tenants.models import DomainMixin, TenantMixin

from .choices import TenantStatus
from .validators import schema_name_validator, validate_domain_name, validate_time_zone


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
    """A customer company whose plant data lives in its own PostgreSQL schema."""

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
