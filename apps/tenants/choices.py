from django.db import models


class TenantStatus(models.TextChoices):
    """Whether a tenant is served: a suspended tenant keeps its data, but logins, API and polling stop."""

    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
