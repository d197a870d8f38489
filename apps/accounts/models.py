from django.contrib.auth.models import AbstractUser, _user_has_module_perms, _user_has_perm
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.db import connection, models
from django_tenants.utils import get_public_schema_name
from rest_framework_api_key.models import AbstractAPIKey

from apps.tenants.quotas import QuotaCheckedQuerySet

from .choices import Role


class UserManager(DjangoUserManager.from_queryset(QuotaCheckedQuerySet)):
    """Django's user manager whose bulk writes check the max_users quota, as pre_save does for save()."""


class User(AbstractUser):
    """A person or machine account of one tenant; each tenant schema has its own users.

    The role decides what the user may do (``apps.accounts.roles``). Inside a
    tenant ``is_staff`` and ``is_superuser`` grant nothing.
    """

    role = models.CharField(
        max_length=16,
        choices=Role.choices,
        default=Role.VIEWER,
        help_text="Admin: configuration and users. Operator: alarms and setpoints. "
        "Viewer: read-only. Auditor: audit log only.",
    )

    objects = UserManager()

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        constraints = [
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="accounts_user_role_valid"),
        ]

    # Django's PermissionsMixin grants a superuser every permission before
    # asking the backends; in a tenant that would bypass the role layer.
    def has_perm(self, perm, obj=None):
        if self._is_platform_superuser():
            return True
        return _user_has_perm(self, perm, obj)

    def has_module_perms(self, app_label):
        if self._is_platform_superuser():
            return True
        return _user_has_module_perms(self, app_label)

    def _is_platform_superuser(self):
        return self.is_active and self.is_superuser and connection.schema_name == get_public_schema_name()


class ApiKey(AbstractAPIKey):
    """A long-lived credential of a machine client, such as a historian export or a building system.

    Each key acts as its own user, whose role scopes what the key may do.
    Only a hash of the key is stored; the key itself is shown once, when it
    is created, and a revoked key stays revoked.
    """

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, related_name="api_key", help_text="The machine account the key acts as."
    )
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
