"""Account changes, each audited in the same transaction."""

import logging

from django.core.exceptions import ValidationError
from django.db import connection, transaction

from apps.audit.choices import AuditAction
from apps.audit.services import record, snapshot

from .choices import Role
from .models import ApiKey, User
from .roles import Capability, check_capability
from .sockets import close_user_sockets

logger = logging.getLogger(__name__)

# Fields a user may change on their own account; role, flags and password have their own paths.
PROFILE_FIELDS = ("first_name", "last_name", "email")


def update_profile(user, *, actor, changes):
    """Apply ``changes`` (a subset of PROFILE_FIELDS) to the user and audit the change."""
    unknown = sorted(set(changes) - set(PROFILE_FIELDS))
    if unknown:
        raise ValueError(f"Fields {unknown} cannot be changed on a profile; allowed are {list(PROFILE_FIELDS)}.")
    with transaction.atomic():
        before = snapshot(user)
        for field, value in changes.items():
            setattr(user, field, value)
        user.save(update_fields=list(changes))
        record(AuditAction.OBJECT_UPDATED, actor=actor, obj=user, before=before, after=snapshot(user))
    logger.info("Schema %s: profile of user %s changed (%s)", connection.schema_name, user.pk, ", ".join(changes))
    return user


def create_api_key(*, name, role, actor, expiry_date=None):
    """Create an API key acting as a new machine user with ``role``; return (api_key, key).

    The key is returned only here; the database keeps only its hash.
    """
    check_capability(actor, Capability.MANAGE_USERS)
    role = Role(role)
    with transaction.atomic():
        api_key = ApiKey(name=name, created_by=actor, expiry_date=expiry_date)
        key = ApiKey.objects.assign_key(api_key)
        api_key.user = User.objects.create_user(username=f"api-key-{api_key.prefix}", password=None, role=role)
        api_key.save()
        record(
            AuditAction.API_KEY_CREATED, actor=actor, obj=api_key.user,
            detail={"prefix": api_key.prefix, "name": name, "role": role.value},
        )
    logger.info("Schema %s: API key %s with role %s created by user %s",
                connection.schema_name, api_key.prefix, role.value, actor.pk)
    return api_key, key


def revoke_api_key(api_key, *, actor):
    """Revoke the key for good and deactivate its machine user; revoking twice changes nothing."""
    check_capability(actor, Capability.MANAGE_USERS)
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=api_key.pk, revoked=False).update(revoked=True)
        User.objects.filter(pk=api_key.user_id).update(is_active=False)
        if revoked:
            record(AuditAction.API_KEY_REVOKED, actor=actor, obj=api_key.user, detail={"prefix": api_key.prefix})
            # update() sends no post_save, so the key's sockets are closed here.
            close_user_sockets(connection.schema_name, api_key.user_id, "API key revoked.")
    if revoked:
        logger.info("Schema %s: API key %s revoked by user %s", connection.schema_name, api_key.prefix, actor.pk)
    return bool(revoked)


def human_admins():
    """Return the active users with the Admin role, without the machine users of API keys."""
    return User.objects.filter(role=Role.ADMIN, is_active=True, api_key__isnull=True)


def is_last_admin(user):
    """Return whether the user is the only active (human) Admin of the tenant."""
    if user.pk is None or not human_admins().filter(pk=user.pk).exists():
        return False
    return not human_admins().exclude(pk=user.pk).exists()


def check_admin_remains(user, *, role, is_active=True):
    """Raise ValidationError when giving ``user`` this role or state would leave the tenant without an active Admin."""
    if role == Role.ADMIN and is_active:
        return
    if is_last_admin(user):
        raise ValidationError(
            f"{user.get_username()} is the last active Admin of this tenant; give another user the Admin role first."
        )
