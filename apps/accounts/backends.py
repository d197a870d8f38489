"""Authentication backend whose permissions come from the user's role, not from groups."""

from django.contrib.auth.backends import ModelBackend
from django.db import connection
from django_tenants.utils import get_public_schema_name

from . import roles


def _in_tenant_schema():
    return connection.schema_name != get_public_schema_name()


class RoleBackend(ModelBackend):
    """Log users in with their password and decide ``has_perm`` through ``apps.accounts.roles``.

    Group and per-user permissions are ignored, so the role is the only
    source of rights. In the public schema no role applies; there only
    platform superusers hold permissions (see ``User.has_perm``).
    """

    def get_user_permissions(self, user_obj, obj=None):
        return set()

    def get_group_permissions(self, user_obj, obj=None):
        return set()

    def get_all_permissions(self, user_obj, obj=None):
        if obj is not None or not _in_tenant_schema():
            return set()
        return roles.granted_permissions(user_obj)

    def has_perm(self, user_obj, perm, obj=None):
        if not _in_tenant_schema():
            return False
        return roles.is_permission_granted(user_obj, perm)

    def has_module_perms(self, user_obj, app_label):
        if not _in_tenant_schema():
            return False
        return any(perm.startswith(f"{app_label}.") for perm in roles.granted_permissions(user_obj))
