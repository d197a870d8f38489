"""API request rate limits per tenant, counted per user or API key in the Redis cache."""

from rest_framework.exceptions import Throttled
from rest_framework.throttling import SimpleRateThrottle

from .quotas import current_tenant


class TenantUserRateThrottle(SimpleRateThrottle):
    """Limit each user, API key or anonymous address to the tenant's ``api_rate_limit``.

    An API key acts as its own machine user, so each key has its own budget.
    The history lives in the default cache (Redis), whose keys also carry the schema.
    """

    scope = "tenant_user"

    def get_rate(self):
        # The rate is the tenant's, known only once the request is there (allow_request).
        return None

    def allow_request(self, request, view):
        tenant = current_tenant()
        if tenant is None:
            return True
        self.rate = tenant.api_rate_limit
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self.tenant = tenant
        if super().allow_request(request, view):
            return True
        raise Throttled(
            wait=self.wait(),
            detail=(
                f"Quota api_rate_limit exceeded: tenant {tenant.schema_name!r} allows {self.rate} API requests "
                "per user or API key."
            ),
        )

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"address:{self.get_ident(request)}"
        return f"throttle:{self.tenant.schema_name}:{self.scope}:{ident}"
