"""Request context of the audit trail, kept in a contextvar so services need not pass the request on.

The request id comes from django-guid: the X-Request-ID header, or a new
UUID when the header is missing or invalid. The client address comes from
django-ipware, which trusts only the headers named in the IPWARE_* settings.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django_guid import get_guid
from ipware import get_client_ip

MAX_USER_AGENT_LENGTH = 512

_current_request = ContextVar("audit_request", default=None)


@dataclass(frozen=True)
class RequestContext:
    """Origin of a request; `request` is kept so the actor is read after authentication."""

    request_id: str
    source_ip: str | None
    user_agent: str
    request: object


def context_from_request(request):
    source_ip, _routable = get_client_ip(request)
    return RequestContext(
        request_id=getattr(request, "correlation_id", None) or get_guid() or "",
        source_ip=source_ip,
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:MAX_USER_AGENT_LENGTH],
        request=request,
    )


def current_context():
    """Return the RequestContext of the request being served, or None outside a request."""
    return _current_request.get()


@contextmanager
def request_context(request):
    """Make `request` the current request of the audit trail for the duration of the block."""
    context = context_from_request(request)
    token = _current_request.set(context)
    try:
        yield context
    finally:
        _current_request.reset(token)
