import pytest
from django.apps import apps
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import connection

from apps.accounts import roles
from apps.accounts.choices import Role
from apps.accounts.roles import Capability
from apps.units.models import Unit
from tests.accounts.conftest import create_user

EXPECTED_CAPABILITIES = {
    Role.VIEWER: {"view_plant"},
    Role.OPERATOR: {"view_plant", "acknowledge_alarm", "shelve_alarm", "write_setpoint"},
    Role.ADMIN: {
        "view_plant", "acknowledge_alarm", "shelve_alarm", "write_setpoint", "configure_plant", "manage_users",
        "view_audit_log", "export_audit_log",
    },
    Role.AUDITOR: {"view_audit_log", "export_audit_log"},
}


@pytest.mark.parametrize("role", list(Role))
def test_role_grants_exactly_its_capabilities(alpha, role):
    user = create_user(role)

    granted = {capability for capability in Capability.values if roles.has_capability(user, capability)}

    assert granted == EXPECTED_CAPABILITIES[role]


def test_named_shorthands_follow_role(alpha):
    operator = create_user(Role.OPERATOR)
    viewer = create_user(Role.VIEWER)

    assert roles.can_acknowledge_alarms(operator)
    assert roles.can_shelve_alarms(operator)
    assert roles.can_write_setpoints(operator)
    assert not roles.can_configure_plant(operator)
    assert not roles.can_acknowledge_alarms(viewer)
    assert not roles.can_write_setpoints(viewer)
    assert roles.can_view_plant(viewer)


def test_new_user_defaults_to_viewer(alpha):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="fresh", password="Plant-room-key-8842")

    assert user.role == Role.VIEWER


def test_inactive_user_has_no_capabilities(alpha):
    user = create_user(Role.ADMIN, is_active=False)

    assert roles.capabilities_of(user) == frozenset()
    assert not user.has_perm("units.view_unit")


def test_anonymous_user_has_no_capabilities():
    assert roles.capabilities_of(AnonymousUser()) == frozenset()
    assert not roles.has_capability(AnonymousUser(), "view_plant")


def test_unknown_capability_names_value():
    with pytest.raises(ValueError, match="'acknowledge_alarms'"):
        roles.has_capability(AnonymousUser(), "acknowledge_alarms")


def test_check_capability_names_role(alpha):
    viewer = create_user(Role.VIEWER)

    with pytest.raises(PermissionDenied, match=r"role \(viewer\) does not allow write setpoints"):
        roles.check_capability(viewer, Capability.WRITE_SETPOINT)


def test_superuser_flag_grants_nothing_in_tenant(alpha):
    viewer = create_user(Role.VIEWER, is_superuser=True, is_staff=True)

    assert viewer.has_perm("units.view_unit")
    assert not viewer.has_perm("units.change_unit")
    assert not viewer.has_perm("accounts.add_user")
    assert not viewer.has_module_perms("accounts")


def test_group_permissions_grant_nothing(alpha):
    from django.contrib.auth.models import Group, Permission

    viewer = create_user(Role.VIEWER)
    group = Group.objects.create(name="writers")
    group.permissions.add(Permission.objects.get(codename="change_unit"))
    viewer.groups.add(group)
    viewer.user_permissions.add(Permission.objects.get(codename="delete_unit"))

    assert not viewer.has_perm("units.change_unit")
    assert not viewer.has_perm("units.delete_unit")


@pytest.mark.parametrize(
    ("role", "perm", "granted"),
    [
        (Role.ADMIN, "units.add_unit", True),
        (Role.ADMIN, "accounts.change_user", True),
        (Role.ADMIN, "auth.change_group", False),
        (Role.OPERATOR, "units.view_unit", True),
        (Role.OPERATOR, "units.change_unit", False),
        (Role.OPERATOR, "alarms.acknowledge_alarm", True),
        (Role.VIEWER, "alarms.acknowledge_alarm", False),
        (Role.AUDITOR, "units.view_unit", False),
        (Role.AUDITOR, "admin.view_logentry", True),
        (Role.AUDITOR, "admin.delete_logentry", False),
        (Role.ADMIN, "units.frobnicate_unit", False),
        (Role.ADMIN, "nosuchapp.view_thing", False),
    ],
)
def test_django_permission_follows_role(alpha, role, perm, granted):
    user = create_user(role)

    assert user.has_perm(perm) is granted


def test_granted_permissions_of_viewer_are_views_only(alpha):
    viewer = create_user(Role.VIEWER)

    permissions = viewer.get_all_permissions()

    assert "units.view_unit" in permissions
    assert "protocols.view_device" in permissions
    assert all(permission.split(".")[1].startswith("view_") for permission in permissions)


def test_every_model_has_role_policy():
    models_without_policy = [model._meta.label for model in apps.get_models() if roles.policy_for(model) is None]

    assert models_without_policy == [], "add them to APP_POLICIES or call register_model_policy"


def test_registered_model_policy_overrides_app_policy(alpha):
    operator = create_user(Role.OPERATOR)
    roles.register_model_policy("units.Unit", roles.ModelPolicy(view=Capability.VIEW_PLANT, change=Capability.WRITE_SETPOINT))
    try:
        assert roles.is_model_action_allowed(operator, "change", Unit)
        assert not roles.is_model_action_allowed(operator, "delete", Unit)
    finally:
        roles._model_policies.pop("units.unit")


def test_register_model_policy_rejects_non_policy():
    with pytest.raises(TypeError, match="units.Unit"):
        roles.register_model_policy("units.Unit", {"view": "view_plant"})


def test_unknown_model_action_names_value(alpha):
    admin = create_user(Role.ADMIN)

    with pytest.raises(ValueError, match="'approve'"):
        roles.is_model_action_allowed(admin, "approve", Unit)


def test_public_schema_grants_role_nothing(alpha):
    admin = create_user(Role.ADMIN)
    connection.set_schema_to_public()

    assert not admin.has_perm("units.view_unit")
    assert not admin.has_perm("tenants.view_tenant")


def test_public_schema_superuser_keeps_all_permissions(db):
    from django.contrib.auth import get_user_model

    platform_admin = get_user_model().objects.create_superuser(username="platform", password="Plant-room-key-8842")

    assert platform_admin.has_perm("tenants.delete_tenant")
    assert platform_admin.has_module_perms("tenants")
