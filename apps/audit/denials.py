"""Permission denials of logged-in users as audit entries, from DRF views and from Django views.

Anonymous requests that are turned away (401, or a redirect to the login
page) are not recorded: failed logins already cover guessing at credentials.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import connection
from django_tenants.utils import get_public_schema_name
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler

from .choices import AuditAction, Outcome
from .services import record

logger = logging.getLogger(__name__)


def record_permission_denied(request, reason):
    """Record that the request's user was denied `request.method request.path`, with the reason shown to them."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    if connection.schema_name == get_public_schema_name():
        logger.debug("Not auditing a permission denial on the public schema for %s", request.path)
        return None
    return record(
        AuditAction.PERMISSION_DENIED,
        actor=user,
        outcome=Outcome.DENIED,
        detail={"method": request.method, "path": request.path, "reason": str(reason)[:500]},
        request=request,
    )


def exception_handler(exc, context):
    """Handle an API exception as DRF does, and record a permission denial (403) of a logged-in user."""
    response = drf_exception_handler(exc, context)
    if isinstance(exc, (exceptions.PermissionDenied, DjangoPermissionDenied)):
        record_permission_denied(context["request"], exc)
    return response
