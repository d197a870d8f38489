"""Security monitoring: patterns in a tenant's audit entries that raise a security alarm.

`inspect_entry` runs inside `record`, in the transaction of the entry it
inspects, so an alarm exists exactly when its triggering entry does. Each
alarm is itself an audit entry (action `security.alarm`, the trigger in
detail["trigger"]) and is sent as the `security_alarm_raised` signal, which
the alarm system turns into an alarm of source "security" and notifies
through its notification targets. When no receiver notified anyone, the
tenant's active admins get a mail after commit instead.
The thresholds and working hours are the tenant's AuditSettings.
"""

import ipaddress
import logging
from datetime import timedelta
from functools import partial
from zoneinfo import ZoneInfo

from django.core.mail import send_mail
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.dispatch import Signal
from django_tenants.utils import get_public_schema_name
from rest_framework_api_key.models import AbstractAPIKey
from rest_framework_simplejwt.tokens import Token

from .choices import AuditAction, CredentialType, SecurityTrigger
from .models import AuditEntry, AuditSettings, CredentialNetwork

logger = logging.getLogger(__name__)

MONITOR_JOB = "audit.security_monitor"
IPV4_PREFIX = 24
IPV6_PREFIX = 64

# Sent inside the transaction of the triggering entry, with these keyword arguments:
#   trigger      the SecurityTrigger of the pattern.
#   key          "<trigger>:<subject>", the same for every repeat by the same actor or address.
#   message      the text for the alarm list.
#   time         the time of the triggering entry.
#   window       the timedelta the pattern stays active after `time` unless it repeats, zero for single events.
#   audit_entry  the security.alarm entry, or None when a burst goes on past its limit without a new entry.
# A receiver returns True when it notified someone. The audit app never imports
# its receivers, because apps.alarms connects in its AppConfig.ready().
security_alarm_raised = Signal()


def inspect_entry(entry):
    """Raise the security alarms that a newly written entry completes; return the alarm entries."""
    if entry.action == AuditAction.LOGIN_FAILED:
        return _check_failed_logins(entry)
    if entry.action == AuditAction.PERMISSION_DENIED:
        return _check_denials(entry)
    if entry.action == AuditAction.SETPOINT_WRITTEN:
        return _check_working_hours(entry)
    return []


def raise_security_alarm(trigger, *, subject, message, detail, cause=None, window=timedelta(0)):
    """Record a security alarm entry and send it to the alarm system; mail the admins when no target received it.

    `subject` names who or what the pattern is about, e.g. "username=admin",
    and forms the alarm's key with the trigger.
    """
    from .services import Actor, record

    trigger = SecurityTrigger(trigger)
    full_detail = {"trigger": trigger.value, "message": message, **detail}
    if cause is not None:
        full_detail["cause_sequence"] = cause.sequence
    alarm = record(AuditAction.SECURITY_ALARM, actor=Actor.system_job(MONITOR_JOB), detail=full_detail)
    logger.warning("Security alarm %s on schema %s (entry %s): %s", trigger.value, connection.schema_name,
                   alarm.sequence, message)
    notified = send_security_alarm(
        trigger, subject=subject, message=message, time=alarm.time, window=window, audit_entry=alarm
    )
    if not notified:
        transaction.on_commit(partial(notify_admins, connection.schema_name, alarm.sequence, trigger.label, message))
    return alarm


def send_security_alarm(trigger, *, subject, message, time, window, audit_entry=None):
    """Send `security_alarm_raised` and return whether a receiver notified someone.

    A receiver that raises is logged and neither removes the audit entry nor
    fails the request. A receiver that writes to the database needs a
    savepoint of its own, as apps.alarms.security has, or its database
    error breaks the surrounding transaction.
    """
    key = f"{trigger.value}:{subject}"
    responses = security_alarm_raised.send_robust(
        sender=SecurityTrigger, trigger=trigger, key=key, message=message, time=time, window=window,
        audit_entry=audit_entry,
    )
    notified = False
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error("Security alarm receiver %s failed for %s on schema %s", receiver, key,
                         connection.schema_name, exc_info=response)
        elif response:
            notified = True
    return notified


def notify_admins(schema, sequence, title, message):
    """Mail a security alarm to the active admins of the tenant who have an e-mail address.

    Used only when no notification target received the alarm.
    """
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
    window = timedelta(minutes=settings.failed_login_window_minutes)
    recent = _recent(AuditAction.LOGIN_FAILED, settings.failed_login_window_minutes, entry.time)
    subjects = {}
    if entry.detail.get("username", ""):
        subjects["username"] = (entry.detail["username"], recent.filter(detail__username=entry.detail["username"]))
    if entry.source_ip:
        subjects["source_ip"] = (entry.source_ip, recent.filter(source_ip=entry.source_ip))
    alarms = []
    for name, (value, failures) in subjects.items():
        count = failures.count()
        message = (
            f"{settings.failed_login_limit} failed logins in {settings.failed_login_window_minutes} minutes "
            f"for {name} {value}."
        )
        alarms.extend(_burst(SecurityTrigger.FAILED_LOGIN_BURST, count, settings.failed_login_limit, entry,
                             subject=f"{name}={value}", message=message, detail={name: value}, window=window))
    return alarms


def _check_denials(entry):
    settings = AuditSettings.current()
    count = _recent(AuditAction.PERMISSION_DENIED, settings.denial_window_minutes, entry.time).filter(
        actor_type=entry.actor_type, actor_id=entry.actor_id
    ).count()
    message = (
        f"{entry.actor_name or entry.actor_id} was denied {settings.denial_limit} times "
        f"in {settings.denial_window_minutes} minutes."
    )
    detail = {"actor_type": entry.actor_type, "actor_id": entry.actor_id, "actor_name": entry.actor_name}
    return _burst(SecurityTrigger.DENIAL_BURST, count, settings.denial_limit, entry,
                  subject=f"{entry.actor_type}={entry.actor_id}", message=message, detail=detail,
                  window=timedelta(minutes=settings.denial_window_minutes))


def _burst(trigger, count, limit, entry, *, subject, message, detail, window):
    """Raise the alarm of a burst when `count` reaches `limit`, and keep it active while the burst goes on.

    Only reaching the limit writes a security.alarm entry, so one burst
    leaves one entry. Every further event of the burst is sent to the alarm
    system, which keeps the alarm active until `window` after the last one.
    """
    if count == limit:
        return [raise_security_alarm(trigger, subject=subject, message=message, detail=detail, cause=entry,
                                     window=window)]
    if count > limit:
        send_security_alarm(trigger, subject=subject, message=message, time=entry.time, window=window)
    return []


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
    return [raise_security_alarm(SecurityTrigger.OFF_HOURS_SETPOINT, subject=f"{entry.actor_type}={entry.actor_id}",
                                 message=message, detail=detail, cause=entry)]


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
            return raise_security_alarm(SecurityTrigger.NEW_NETWORK, subject=f"{credential_type}={credential_id}",
                                        message=message, detail=detail)
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
