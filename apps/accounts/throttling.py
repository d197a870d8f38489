"""Rate limits on the login page, the admin login and the token endpoints, per client address.

They complement the django-axes lockout, which counts failures per user name
and address: this limit also stops one address from trying many user names.
"""

from django.db import connection
from django.http import HttpResponse
from rest_framework.throttling import SimpleRateThrottle

RATE_LIMITED_MESSAGE = (
    "Too many login attempts from this address (limit {rate}); try again in {wait} seconds."
)


class AuthenticationRateThrottle(SimpleRateThrottle):
    """Count authentication attempts per tenant schema and client address (REST_FRAMEWORK rate "authentication")."""

    scope = "authentication"

    def get_cache_key(self, request, view):
        return f"throttle:{connection.schema_name}:{self.scope}:{self.get_ident(request)}"


def rate_limited_response(request):
    """Return a 429 response when the request's address is over the authentication rate, else None.

    For Django views (login pages); DRF views list AuthenticationRateThrottle in throttle_classes.
    """
    throttle = AuthenticationRateThrottle()
    if throttle.allow_request(request, None):
        return None
    wait = max(1, round(throttle.wait() or 1))
    response = HttpResponse(
        RATE_LIMITED_MESSAGE.format(rate=throttle.rate, wait=wait),
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(wait)
    return response
