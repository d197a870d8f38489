"""The one permission layer of a tenant: which role may do what.

Every entry point calls this module and nothing else: the REST API through
``apps.accounts.permissions.RolePermission`` (the default DRF permission
class), the tenant's Django admin through ``apps.accounts.backends.RoleBackend``
(``user.has_perm`` lands here) and ``apps.accounts.sites.TenantAdminSite``,
HTMX views through ``apps.accounts.decorators``, WebSocket consumers and
services by calling the functions below directly.

Public functions (stable; other apps call them):

``has_capability(user, capability)``
    True when the user is active and their role grants the capability.
    ``capability`` is a ``Capability`` or its string value, e.g.
    ``has_capability(user, "acknowledge_alarm")``; an unknown string raises
    ValueError.
``check_capability(user, capability)``
    The same check for services: raises django's PermissionDenied with the
    role and capability in the message (DRF turns it into a 403).
``can_acknowledge_alarms(user)``, ``can_shelve_alarms(user)``,
``can_write_setpoints(user)``, ``can_configure_plant(user)``,
``can_manage_users(user)``, ``can_view_plant(user)``,
``can_view_audit_log(user)``, ``can_export_audit_log(user)``
    Shorthands for ``has_capability`` with one capability each.
``capabilities_of(user)``
    The frozenset of capabilities of the user (empty when inactive or anonymous).
``is_model_action_allowed(user, action, model)``
    Whether the user may "view", "add", "change" or "delete" rows of a model.
``register_model_policy(model_label, policy)``
    Sets the capabilities a model needs, e.g. from an app's ``ready()``::

        register_model_policy("alarms.alarm", ModelPolicy(
            view=Capability.VIEW_PLANT, change=Capability.ACKNOWLEDGE_ALARM))

    Models without their own policy use the policy of their app
    (``APP_POLICIES``); a model of an app without a policy is denied to every role.

A custom Django permission whose codename is a capability value, such as
``alarms.acknowledge_alarm``, is granted exactly when the role has that
capability, so ``permission_required("alarms.acknowledge_alarm")`` works too.

Inside a tenant ``is_staff`` and ``is_superuser`` grant nothing; only the role
counts. In the public schema, where the platform admin runs, Django's
superuser flag keeps its usual meaning (see ``User.has_perm``).
"""

import logging
from dataclasses import dataclass

from django.apps import apps
from django.core.exceptions import PermissionDenied
from django.db import models

from .choices import Role

logger = logging.getLogger(__name__)


class Capability(models.TextChoices):
    """An action a role may be granted, named for what the user does in the plant."""

    VIEW_PLANT = "view_plant", "View dashboards, live values and plant data"
    ACKNOWLEDGE_ALARM = "acknowledge_alarm", "Acknowledge alarms"
    SHELVE_ALARM = "shelve_alarm", "Shelve alarms"
    WRITE_SETPOINT = "write_setpoint", "Write setpoints to devices"
    CONFIGURE_PLANT = "configure_plant", "Add, change and delete sites, units, sensors, devices and alarm rules"
    MANAGE_USERS = "manage_users", "Add, change and deactivate users and their roles"
    VIEW_AUDIT_LOG = "view_audit_log", "Read the audit log"
    EXPORT_AUDIT_LOG = "export_audit_log", "Export the audit log"


_VIEWER = frozenset({Capability.VIEW_PLANT})
_OPERATOR = _VIEWER | {Capability.ACKNOWLEDGE_ALARM, Capability.SHELVE_ALARM, Capability.WRITE_SETPOINT}
_AUDITOR = frozenset({Capability.VIEW_AUDIT_LOG, Capability.EXPORT_AUDIT_LOG})

ROLE_CAPABILITIES = {
    Role.VIEWER: _VIEWER,
    Role.OPERATOR: _OPERATOR,
    # Admins configure the plant and its users; they may also read the audit
    # log, which no role can change.
    Role.ADMIN: frozenset(Capability),
    Role.AUDITOR: _AUDITOR,
}

MODEL_ACTIONS = ("view", "add", "change", "delete")


@dataclass(frozen=True)
class ModelPolicy:
    """The capability each model action needs; None denies the action to every role."""

    view: Capability | None = None
    add: Capability | None = None
    change: Capability | None = None
    delete: Capability | None = None

    def capability_for(self, action):
        if action not in MODEL_ACTIONS:
            raise ValueError(f"Unknown model action {action!r}; use one of {', '.join(MODEL_ACTIONS)}.")
        return getattr(self, action)


PLANT_CONFIGURATION = ModelPolicy(
    view=Capability.VIEW_PLANT,
    add=Capability.CONFIGURE_PLANT,
    change=Capability.CONFIGURE_PLANT,
    delete=Capability.CONFIGURE_PLANT,
)
USER_MANAGEMENT = ModelPolicy(
    view=Capability.MANAGE_USERS,
    add=Capability.MANAGE_USERS,
    change=Capability.MANAGE_USERS,
    delete=Capability.MANAGE_USERS,
)
# Audit entries are written only by services, never through a form or endpoint.
AUDIT_LOG = ModelPolicy(view=Capability.VIEW_AUDIT_LOG)
# Issued and blacklisted tokens, login attempts: user admins may inspect them
# and delete login attempts, which unlocks an account.
SECURITY_RECORDS = ModelPolicy(view=Capability.MANAGE_USERS, delete=Capability.MANAGE_USERS)
NO_ACCESS = ModelPolicy()

APP_POLICIES = {
    "units": PLANT_CONFIGURATION,
    "sensors": PLANT_CONFIGURATION,
    "protocols": PLANT_CONFIGURATION,
    "telemetry": PLANT_CONFIGURATION,
    "dashboards": PLANT_CONFIGURATION,
    "alarms": PLANT_CONFIGURATION,
    "analytics": PLANT_CONFIGURATION,
    "edge": PLANT_CONFIGURATION,
    "accounts": USER_MANAGEMENT,
    "audit": AUDIT_LOG,
    # The admin's own change history is an audit record as well.
    "admin": AUDIT_LOG,
    "token_blacklist": SECURITY_RECORDS,
    "axes": SECURITY_RECORDS,
    # Deleting a user's TOTP device lets them enrol a new one, e.g. after losing a phone.
    "otp_totp": SECURITY_RECORDS,
    # Groups and per-user permissions are replaced by roles.
    "auth": NO_ACCESS,
    "contenttypes": NO_ACCESS,
    "sessions": NO_ACCESS,
    # Tenants and domains belong to the platform admin in the public schema.
    "tenants": NO_ACCESS,
    # The library's own key table is unused; keys live in accounts.ApiKey.
    "rest_framework_api_key": NO_ACCESS,
    # Periodic tasks could send any task with any arguments, so they change only through
    # protocols.PollGroup (apps.protocols.schedules) and the settings.
    "django_celery_beat": NO_ACCESS,
}

# Models whose rows operators act on, unlike the configuration of their app.
# Alarm occurrences are created by the evaluator, so no role adds or deletes
# them; "change" covers acknowledging and shelving.
_model_policies = {
    "alarms.alarm": ModelPolicy(view=Capability.VIEW_PLANT, change=Capability.ACKNOWLEDGE_ALARM),
    "alarms.alarmtransition": ModelPolicy(view=Capability.VIEW_PLANT),
    "alarms.alarmrulestate": ModelPolicy(view=Capability.VIEW_PLANT),
    # API keys are created and revoked only through apps.accounts.services.
    "accounts.apikey": ModelPolicy(view=Capability.MANAGE_USERS),
    # Readings are history: they may be added (ingest) but never changed or deleted.
    "telemetry.reading": ModelPolicy(view=Capability.VIEW_PLANT, add=Capability.CONFIGURE_PLANT),
}


def register_model_policy(model_label, policy):
    """Set the policy of one model, given as "app_label.ModelName" (case-insensitive)."""
    if not isinstance(policy, ModelPolicy):
        raise TypeError(f"policy for {model_label!r} must be a ModelPolicy, not {type(policy).__name__}.")
    _model_policies[model_label.lower()] = policy


def policy_for(model):
    """Return the ModelPolicy of a model class, or None when neither it nor its app has one."""
    meta = model._meta
    return _model_policies.get(meta.label_lower, APP_POLICIES.get(meta.app_label))


def _as_capability(capability):
    try:
        return Capability(capability)
    except ValueError:
        raise ValueError(
            f"Unknown capability {capability!r}; use one of {', '.join(Capability.values)}."
        ) from None


def capabilities_of(user):
    """Return the capabilities of the user's role; none for anonymous, inactive or role-less users."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    role = getattr(user, "role", None)
    try:
        return ROLE_CAPABILITIES[Role(role)]
    except ValueError:
        logger.warning("User %s has unknown role %r; granting nothing", user.pk, role)
        return frozenset()


def has_capability(user, capability):
    """Return whether the user's role grants the capability."""
    return _as_capability(capability) in capabilities_of(user)


def check_capability(user, capability):
    """Raise PermissionDenied unless the user's role grants the capability."""
    capability = _as_capability(capability)
    if not has_capability(user, capability):
        role = getattr(user, "role", None) or "none"
        raise PermissionDenied(f"Your role ({role}) does not allow {capability.label.lower()}.")


def can_view_plant(user):
    return has_capability(user, Capability.VIEW_PLANT)


def can_acknowledge_alarms(user):
    return has_capability(user, Capability.ACKNOWLEDGE_ALARM)


def can_shelve_alarms(user):
    return has_capability(user, Capability.SHELVE_ALARM)


def can_write_setpoints(user):
    return has_capability(user, Capability.WRITE_SETPOINT)


def can_configure_plant(user):
    return has_capability(user, Capability.CONFIGURE_PLANT)


def can_manage_users(user):
    return has_capability(user, Capability.MANAGE_USERS)


def can_view_audit_log(user):
    return has_capability(user, Capability.VIEW_AUDIT_LOG)


def can_export_audit_log(user):
    return has_capability(user, Capability.EXPORT_AUDIT_LOG)


def is_model_action_allowed(user, action, model):
    """Return whether the user may perform a model action ("view", "add", "change", "delete")."""
    policy = policy_for(model)
    if policy is None:
        logger.warning("Model %s has no role policy; denying %s to user %s", model._meta.label, action, user.pk)
        return False
    capability = policy.capability_for(action)
    return capability is not None and capability in capabilities_of(user)


def is_permission_granted(user, perm):
    """Return whether a Django permission string ("app_label.codename") is granted by the user's role.

    Codenames of the form "<action>_<model_name>" follow the model's policy;
    a codename that is a capability value follows that capability; any
    other permission is denied.
    """
    app_label, _, codename = perm.partition(".")
    if codename in Capability.values:
        return has_capability(user, codename)
    action, _, model_name = codename.partition("_")
    if action not in MODEL_ACTIONS:
        return False
    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        return False
    return is_model_action_allowed(user, action, model)


def granted_permissions(user):
    """Return every "app_label.<action>_<model_name>" permission the user's role grants."""
    if not capabilities_of(user):
        return set()
    granted = set()
    for model in apps.get_models():
        for action in MODEL_ACTIONS:
            if is_model_action_allowed(user, action, model):
                granted.add(f"{model._meta.app_label}.{action}_{model._meta.model_name}")
    return granted
