"""Channels groups that let account and tenant events close the WebSockets a credential opened.

Every live socket joins the group of its user, of its tenant and, when it
was opened with a browser session or a JWT, of that session or token login.
Logout (session or JWT), password change,
deactivation, role change, API-key revocation and tenant suspension send a
``socket.close`` message to the matching group once their transaction has
committed, and each consumer in the group closes its socket with the code
given. An API key acts as its own machine user, so the user group covers the key.
"""

import hashlib
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_out
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

logger = logging.getLogger(__name__)

# Channels message type; AsyncConsumer dispatches it to the method socket_close.
CLOSE_MESSAGE_TYPE = "socket.close"
# Close codes in the application range 4000-4999 (RFC 6455, section 7.4.2).
CLOSE_CREDENTIAL_ENDED = 4401
CLOSE_TENANT_SUSPENDED = 4403

# A change of one of these fields ends the user's sockets.
CREDENTIAL_FIELDS = ("password", "is_active", "role")


def user_group(schema, user_id):
    return f"{schema}.sockets.user.{user_id}"


def session_group(schema, session_key):
    """Return the group of a browser session. Its name carries a hash, because the session key is a secret."""
    digest = hashlib.sha256(session_key.encode()).hexdigest()[:40]
    return f"{schema}.sockets.session.{digest}"


def login_group(schema, login_id):
    """Return the group of the sockets opened with access tokens of one token login (tokens.LOGIN_CLAIM)."""
    return f"{schema}.sockets.login.{login_id}"


def tenant_group(schema):
    return f"{schema}.sockets.tenant"


def send_close(groups, *, code, reason):
    """Send a close message to every socket in ``groups`` now. Write paths use close_after_commit instead."""
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, {"type": CLOSE_MESSAGE_TYPE, "code": code, "reason": reason})
        except Exception:
            # The change has already committed, so a failed send is logged, not raised. A socket that missed
            # the message stays open until it disconnects, and its next handshake checks the credential again.
            logger.exception("Sending a socket close to group %s failed", group)
            continue
        logger.info("Sent socket close %d to group %s: %s", code, group, reason)


def close_after_commit(groups, *, code, reason):
    """Close the sockets in ``groups`` once the current transaction commits (at once outside a transaction)."""
    groups = list(groups)
    transaction.on_commit(lambda: send_close(groups, code=code, reason=reason))


def close_user_sockets(schema, user_id, reason):
    close_after_commit([user_group(schema, user_id)], code=CLOSE_CREDENTIAL_ENDED, reason=reason)


def close_login_sockets(schema, user_id, login_id, reason):
    """Close the sockets of one token login once the transaction commits.

    A token without a login id was issued before tokens carried one, so all
    of its user's sockets are closed instead.
    """
    group = login_group(schema, login_id) if login_id else user_group(schema, user_id)
    close_after_commit([group], code=CLOSE_CREDENTIAL_ENDED, reason=reason)


def close_tenant_sockets(schema, reason):
    close_after_commit([tenant_group(schema)], code=CLOSE_TENANT_SUSPENDED, reason=reason)


@receiver(user_logged_out, dispatch_uid="accounts.sockets.logout")
def _close_on_logout(sender, request, user, **kwargs):
    # Django sends user_logged_out before it flushes the session, so the key is still there.
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key and connection.schema_name:
        close_after_commit(
            [session_group(connection.schema_name, session_key)],
            code=CLOSE_CREDENTIAL_ENDED, reason="Logged out.",
        )


@receiver(pre_save, sender="accounts.User", dispatch_uid="accounts.sockets.pre_save")
def _remember_credential(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance.pk is None:
        return
    if update_fields is not None and not set(update_fields) & set(CREDENTIAL_FIELDS):
        # A login saves only last_login, so it costs no query here.
        return
    instance._credential_before = sender._default_manager.filter(pk=instance.pk).values(*CREDENTIAL_FIELDS).first()


@receiver(post_save, sender="accounts.User", dispatch_uid="accounts.sockets.post_save")
def _close_on_credential_change(sender, instance, created, raw=False, **kwargs):
    before = instance.__dict__.pop("_credential_before", None)
    if raw or created or before is None:
        return
    changed = [name for name in CREDENTIAL_FIELDS if before[name] != getattr(instance, name)]
    if instance.is_active and "is_active" in changed:
        # A reactivated account has no sockets to close.
        changed.remove("is_active")
    if not changed:
        return
    reasons = {
        "password": "Password changed; log in again.",
        "is_active": "Account deactivated.",
        "role": "Role changed; reconnect.",
    }
    close_user_sockets(connection.schema_name, instance.pk, reasons[changed[0]])


@receiver(post_delete, sender="accounts.User", dispatch_uid="accounts.sockets.post_delete")
def _close_on_delete(sender, instance, **kwargs):
    close_user_sockets(connection.schema_name, instance.pk, "Account deleted.")
