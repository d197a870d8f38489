"""Authentication events as audit entries: Django's auth signals, django-axes lockouts and JWT issue and refresh."""

import logging

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import connection
from django.dispatch import receiver
from django_tenants.utils import get_public_schema_name
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from .choices import ActorType, AuditAction, Outcome
from .services import Actor, record

logger = logging.getLogger(__name__)


def _on_tenant(event):
    # The platform admin logs in on the public schema, which has no audit table.
    if connection.schema_name == get_public_schema_name():
        logger.debug("Not auditing %s on the public schema", event)
        return False
    return True


@receiver(user_logged_in, dispatch_uid="audit_user_logged_in")
def record_login(sender, request, user, **kwargs):
    if _on_tenant("login"):
        record(AuditAction.LOGIN, actor=user, obj=user, request=request)


@receiver(user_login_failed, dispatch_uid="audit_user_login_failed")
def record_login_failure(sender, credentials, request=None, **kwargs):
    if not _on_tenant("failed login"):
        return
    # Django masks the password in `credentials`; only the username is kept.
    username = str(credentials.get("username", ""))[:150]
    record(
        AuditAction.LOGIN_FAILED,
        actor=Actor(ActorType.ANONYMOUS, "", username),
        outcome=Outcome.FAILURE,
        detail={"username": username},
        request=request,
    )


@receiver(user_logged_out, dispatch_uid="audit_user_logged_out")
def record_logout(sender, request, user, **kwargs):
    if user is not None and _on_tenant("logout"):
        record(AuditAction.LOGOUT, actor=user, obj=user, request=request)


def record_lockout(sender, request=None, username="", ip_address=None, **kwargs):
    if _on_tenant("lockout"):
        record(
            AuditAction.LOCKOUT,
            actor=Actor(ActorType.ANONYMOUS, "", str(username or "")[:150]),
            outcome=Outcome.DENIED,
            detail={"username": username or "", "ip_address": ip_address or ""},
            request=request,
        )


if apps.is_installed("axes"):
    from axes.signals import user_locked_out

    user_locked_out.connect(record_lockout, dispatch_uid="audit_user_locked_out")


def record_token_issued(user, request):
    """Record that a JWT pair was issued to user; called by the token serializer once credentials passed."""
    record(AuditAction.TOKEN_ISSUED, actor=user, obj=user, request=request)


def record_token_refreshed(refresh_token, request):
    """Record that a refresh token was exchanged; the actor is the user the token names."""
    user_id = str(refresh_token.get(jwt_settings.USER_ID_CLAIM, ""))
    username = get_user_model().objects.filter(pk=user_id).values_list("username", flat=True).first() if user_id else None
    record(
        AuditAction.TOKEN_REFRESHED,
        actor=Actor(ActorType.USER, user_id, username or ""),
        detail={"jti": str(refresh_token.get(jwt_settings.JTI_CLAIM, ""))},
        request=request,
    )
