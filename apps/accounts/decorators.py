"""Role checks for Django and HTMX views, decided by ``apps.accounts.roles``.

Anonymous users are sent to the login page; logged-in users whose role lacks
the capability get 403.
"""

from functools import wraps

from django.contrib.auth.mixins import AccessMixin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ImproperlyConfigured

from . import roles


def _check(request, capability):
    """Return a login redirect for anonymous users, raise PermissionDenied for a missing capability."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    roles.check_capability(request.user, capability)
    return None


def capability_required(capability):
    """Decorate a view function so that only users whose role grants ``capability`` reach it."""
    capability = roles.Capability(capability)

    def decorator(view_func):
        @wraps(view_func)
        def wrapped(request, *args, **kwargs):
            redirect = _check(request, capability)
            if redirect is not None:
                return redirect
            return view_func(request, *args, **kwargs)

        wrapped.required_capability = capability
        return wrapped

    return decorator


class CapabilityRequiredMixin(AccessMixin):
    """Class-based view mixin; set ``required_capability`` on the view."""

    required_capability = None

    def dispatch(self, request, *args, **kwargs):
        if self.required_capability is None:
            raise ImproperlyConfigured(f"{type(self).__name__} sets no required_capability; set it to a Capability.")
        redirect = _check(request, self.required_capability)
        if redirect is not None:
            return redirect
        return super().dispatch(request, *args, **kwargs)
