"""Security monitoring: patterns in a tenant's audit entries that raise a security alarm.

`inspect_entry` runs inside `record`, in the transaction of the entry it
inspects, so an alarm exists exactly when its triggering entry does. Each
alarm is itself an audit entry (action `security.alarm`, the trigger in
detail["trigger"]) and is mailed to the tenant's active admins after commit.
The thresholds and working hours are the tenant's AuditSettings.
"""

import ipaddress
import logging
from datetime import timedelta
from functools import partial
from zoneinfo import ZoneInfo

from django.core.mail import send_mail
from django.db import DatabaseError, IntegrityError, connection, transaction
from django_tenants.utils import get_public_schema_name
from rest_framework_api_key.models import AbstractAPIKey
from rest_framework_simplejwt.tokens import Token

from .choices import AuditAction, CredentialType, SecurityTrigger
from .models import AuditEntry, AuditSettings, CredentialNetwork

logger = logging.getLogger(__name__)

MONITOR_JOB = "audit.security_monitor"
IPV4_PREFIX = 24
IPV6_PREFIX = 64


def inspect_entry(entry):
    """Raise the security alarms that a newly written entry completes; return the alarm entries."""
    if entry.action == AuditAction.LOGIN_FAILED:
        return _check_failed_logins(entry)
    if entry.action == AuditAction.PERMISSION_DENIED:
        return _check_denials(entry)
    if entry.action == AuditAction.SETPOINT_WRITTEN:
        return _check_working_hours(entry)
    return []


def raise_security_alarm(trigger, *, message, detail, cause=None):
    """Record a security alarm entry and mail it to the tenant's admins once the transaction commits."""
    from .services import Actor, record

    # TODO: raise these through apps.alarms once an alarm can exist without a rule and a unit.
    # Until then they reach admins as audit entries and e-mail, not in the alarm list.
    trigger = SecurityTrigger(trigger)
    full_detail = {"trigger": trigger.value, "message": message, **detail}
    if cause is not None:
        full_detail["cause_sequence"] = cause.sequence
    alarm = record(AuditAction.SECURITY_ALARM, actor=Actor.system_job(MONITOR_JOB), detail=full_detail)
    logger.warning("Security alarm %s on schema %s (entry %s): %s", trigger.value, connection.schema_name,
                   alarm.sequence, message)
    transaction.on_commit(partial(notify_admins, connection.schema_name, alarm.sequence, trigger.label, message))
    return alarm


def notify_admins(schema, sequence, title, message):
    """Mail a security alarm to the active admins of the tenant who have an e-mail address."""
    from django_tenants.utils import schema_context

    from apps.accounts.services import human_admins

    with schema_context(schema):
        recipients = sorted(set(human_admins().exclude(email="").values_list("email", flat=True)))
    if not recipients:
        logger.warning("Security alarm %s on schema %s: no admin with an e-mail address to notify", sequence, schema)
        return
    try:
        send_mail(
            f"[ThermaCore {schema}] Security alarm: {title}",
            f"{message}\n\nAudit entry {sequence}; open the audit page and filter by action security.alarm.",
            None,
            recipients,
        )
    except OSError:
        # The alarm stays in the audit trail; only the mail is lost.
        logger.exception("Mailing security alarm %s of schema %s to %d admins failed", sequence, schema, len(recipients))


def _recent(action, minutes, now):
    return AuditEntry.objects.filter(action=action, time__gt=now - timedelta(minutes=minutes), time__lte=now)


def _check_failed_logins(entry):
    settings = AuditSettings.current()
    recent = _recent(AuditAction.LOGIN_FAILED, settings.failed_login_window_minutes, entry.time)
    subjects = {}
    username = entry.detail.get("username", "")
    # The alarm fires when the count reaches the limit, so one burst raises one alarm, not one per failure.
    if username and recent.filter(detail__username=username).count() == settings.failed_login_limit:
        subjects["username"] = username
    if entry.source_ip and recent.filter(source_ip=entry.source_ip).count() == settings.failed_login_limit:
        subjects["source_ip"] = entry.source_ip
    if not subjects:
        return []
    named = " and ".join(f"{key} {value}" for key, value in subjects.items())
    message = (
        f"{settings.failed_login_limit} failed logins in {settings.failed_login_window_minutes} minutes "
        f"for {named}."
    )
    return [raise_security_alarm(SecurityTrigger.FAILED_LOGIN_BURST, message=message, detail=subjects, cause=entry)]


def _check_denials(entry):
    settings = AuditSettings.current()
    count = _recent(AuditAction.PERMISSION_DENIED, settings.denial_window_minutes, entry.time).filter(
        actor_type=entry.actor_type, actor_id=entry.actor_id
    ).count()
    if count != settings.denial_limit:
        return []
    message = (
        f"{entry.actor_name or entry.actor_id} was denied {count} times in {settings.denial_window_minutes} minutes."
    )
    detail = {"actor_type": entry.actor_type, "actor_id": entry.actor_id, "actor_name": entry.actor_name}
    return [raise_security_alarm(SecurityTrigger.DENIAL_BURST, message=message, detail=detail, cause=entry)]


def is_working_time(settings, moment):
    """Return whether `moment` (aware) falls into the tenant's working days and hours, in its time zone."""
    local = moment.astimezone(ZoneInfo(settings.time_zone))
    start, end = settings.working_hours_start, settings.working_hours_end
    return local.weekday() in settings.working_days and start <= local.time().replace(tzinfo=None) < end


def _check_working_hours(entry):
    settings = AuditSettings.current()
    if settings.working_hours_start is None or is_working_time(settings, entry.time):
        return []
    local = entry.time.astimezone(ZoneInfo(settings.time_zone))
    message = (
        f"{entry.actor_name or entry.actor_id} wrote setpoint {entry.object_repr or entry.object_id} at "
        f"{local:%a %Y-%m-%d %H:%M} {settings.time_zone}, outside the working hours."
    )
    detail = {"actor_type": entry.actor_type, "actor_id": entry.actor_id, "local_time": local.isoformat()}
    return [raise_security_alarm(SecurityTrigger.OFF_HOURS_SETPOINT, message=message, detail=detail, cause=entry)]


def network_of(address):
    """Return the /24 (IPv4) or /64 (IPv6) network of an address, e.g. "192.0.2.0/24"."""
    ip = ipaddress.ip_address(address)
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def credential_of(request):
    """Return (type, id, name) of the JWT or API key that authenticated a request, or None."""
    credential = getattr(request, "auth", None)
    if isinstance(credential, AbstractAPIKey):
        return CredentialType.API_KEY, credential.prefix, credential.name
    user = getattr(request, "user", None)
    # Access tokens live for minutes, so a JWT is tracked by its user rather than one by one.
    if isinstance(credential, Token) and user is not None and user.is_authenticated:
        return CredentialType.JWT, str(user.pk), user.get_username()
    return None


def check_credential_network(request, source_ip):
    """Note the network a token or API key came from and raise an alarm when it is new for a known credential.

    The first network of a credential only sets its baseline. Returns the alarm entry or None.
    """
    credential = credential_of(request)
    if credential is None or not source_ip:
        return None
    credential_type, credential_id, name = credential
    network = network_of(source_ip)
    known = CredentialNetwork.objects.filter(credential_type=credential_type, credential_id=credential_id)
    # NOTE: one indexed query per token request; cache known pairs if it shows up in profiles.
    if known.filter(network=network).exists():
        return None
    try:
        with transaction.atomic():
            had_baseline = known.exists()
            CredentialNetwork.objects.create(credential_type=credential_type, credential_id=credential_id,
                                             network=network)
            if not had_baseline:
                return None
            message = f"{CredentialType(credential_type).label} {name} was used from the new network {network}."
            detail = {"credential_type": credential_type, "credential_id": credential_id, "network": network}
            return raise_security_alarm(SecurityTrigger.NEW_NETWORK, message=message, detail=detail)
    except IntegrityError:
        # A concurrent request of the same credential noted this network first and raised any alarm.
        return None


def check_request_credential(request, source_ip):
    """Run check_credential_network for a served request and log instead of failing the response."""
    if connection.schema_name == get_public_schema_name():
        return None
    try:
        return check_credential_network(request, source_ip)
    except DatabaseError:
        logger.exception("Checking the network of the credential of %s %s on schema %s failed",
                         request.method, request.path, connection.schema_name)
        return None
