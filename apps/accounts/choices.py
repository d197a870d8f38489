from django.db import models


class Role(models.TextChoices):
    """Role of a tenant user; apps.accounts.roles maps each role to its capabilities."""

    ADMIN = "admin", "Admin"
    OPERATOR = "operator", "Operator"
    VIEWER = "viewer", "Viewer"
    AUDITOR = "auditor", "Auditor"
