from django.core.validators import RegexValidator
from django.db import NotSupportedError, models
from django_tenants.models import DomainMixin, TenantMixin

from .choices import TenantStatus

# PostgreSQL identifiers are case-folded and limited to 63 bytes; the
# "pg_" prefix is reserved for system schemas.
schema_name_validator = RegexValidator(
    r"^(?!pg_)[a-z][a-z0-9_]{0,62}$",
    "Use 1 to 63 lowercase letters, digits or underscores, starting with a letter and not with 'pg_'.",
)


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
        max_length=64, default="UTC", help_text="IANA time zone name used to show and import local times."
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

    @property
    def is_suspended(self):
        return self.status == TenantStatus.SUSPENDED


class Domain(DomainMixin):
    """A host name that routes requests to its tenant, e.g. ``demo.localhost``."""

    def __str__(self):
        return self.domain
