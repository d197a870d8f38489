from django.core.exceptions import PermissionDenied

from .context import request_context
from .denials import record_permission_denied
from .monitoring import check_request_credential


class AuditContextMiddleware:
    """Keep the current request's RequestContext for apps.audit.services.record.

    It must come after django-guid's middleware, which sets the request id.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with request_context(request) as context:
            response = self.get_response(request)
            # DRF puts the token or API key that authenticated the request on request.auth.
            check_request_credential(request, context.source_ip)
            return response

    def process_exception(self, request, exception):
        # Django views and the admin raise PermissionDenied; DRF views report theirs through
        # apps.audit.denials.exception_handler instead.
        if isinstance(exception, PermissionDenied):
            record_permission_denied(request, exception)
        return None
