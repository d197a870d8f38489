from django.core.validators import RegexValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

# PostgreSQL identifiers are case-folded and limited to 63 bytes; the
# "pg_" prefix is reserved for system schemas.
schema_name_validator = RegexValidator(
    r"^(?!pg_)[a-z][a-z0-9_]{0,62}$",
    "Use 1 to 63 lowercase letters, digits or underscores, starting with a letter and not with 'pg_'.",
)


class Tenant(TenantMixin):
    """A customer company whose plant data lives in its own PostgreSQL schema."""

    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="IANA time zone name used to show and import local times."
    )

    auto_create_schema = True
    auto_drop_schema = True

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Domain(DomainMixin):
    """A host name that routes requests to its tenant, e.g. ``demo.localhost``."""

    def __str__(self):
        return self.domain
