"""DRF permission classes that ask the role layer (``apps.accounts.roles``)."""

from django.core.exceptions import ImproperlyConfigured
from rest_framework.permissions import BasePermission

from . import roles

METHOD_ACTIONS = {
    "GET": "view",
    "HEAD": "view",
    "OPTIONS": "view",
    "POST": "add",
    "PUT": "change",
    "PATCH": "change",
    "DELETE": "delete",
}


def _view_model(view):
    queryset = getattr(view, "queryset", None)
    if queryset is None and hasattr(view, "get_queryset"):
        queryset = view.get_queryset()
    return getattr(queryset, "model", None)


def required_capability(view):
    """Return the capability a view declares for the current request, or None to use the model policy.

    A view declares ``required_capability`` (one capability for every
    method) or ``action_capabilities`` (viewset action name to capability,
    e.g. ``{"acknowledge": Capability.ACKNOWLEDGE_ALARM}``).
    """
    by_action = getattr(view, "action_capabilities", None) or {}
    action = getattr(view, "action", None)
    if action in by_action:
        return by_action[action]
    return getattr(view, "required_capability", None)


class RolePermission(BasePermission):
    """Allow a request when the user's role grants it; the default permission class of the API.

    A view with ``any_role_allowed = True`` (the API root, one's own
    profile) is open to every active user with a role. Without a declared
    capability the HTTP method maps to a model action
    (GET view, POST add, PUT/PATCH change, DELETE delete) on the model of the
    view's queryset. A view with neither raises ImproperlyConfigured, so no
    endpoint is open by accident.
    """

    message = "Your role does not allow this action."

    def has_permission(self, request, view):
        user = request.user
        if user is None or not user.is_authenticated:
            return False

        if getattr(view, "any_role_allowed", False):
            return bool(roles.capabilities_of(user))

        capability = required_capability(view)
        if capability is not None:
            return roles.has_capability(user, capability)

        model = _view_model(view)
        if model is None:
            raise ImproperlyConfigured(
                f"{type(view).__name__} has no queryset and declares no required_capability; "
                "set one of them or give the view its own permission_classes."
            )
        action = METHOD_ACTIONS.get(request.method)
        if action is None:
            return False
        return roles.is_model_action_allowed(user, action, model)


def capability_permission(capability):
    """Return a DRF permission class that requires one capability, e.g. for ``permission_classes``."""
    capability = roles.Capability(capability)

    class HasCapability(BasePermission):
        message = f"Your role does not allow {capability.label.lower()}."

        def has_permission(self, request, view):
            return roles.has_capability(request.user, capability)

    HasCapability.__name__ = f"Has{capability.name.title().replace('_', '')}"
    return HasCapability
