"""Email and webhook notifications of alarm events, queued in the transaction of the event and sent after commit.

A ``NotificationDelivery`` row per target is written in the same transaction
as the alarm transition, so a rolled-back activation sends no notification. After
commit one Celery task per delivery sends it and retries with exponential
back-off. Webhooks are signed with HMAC-SHA256 over ``"<timestamp>.<body>"``
so that a receiver can reject forged and replayed requests.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from datetime import timedelta
from functools import partial

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django_tenants.utils import schema_context
from kombu.exceptions import OperationalError as KombuOperationalError

from apps.audit import services as audit
from apps.audit.choices import AuditAction

from .choices import PRIORITY_RANK, DeliveryStatus, NotificationEvent, TargetKind, TargetPurpose
from .models import NotificationDelivery, NotificationTarget
from .push import alarm_payload

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-ThermaCore-Signature"
TIMESTAMP_HEADER = "X-ThermaCore-Timestamp"
DELIVERY_HEADER = "X-ThermaCore-Delivery"
# A receiver should reject a request whose timestamp is further than this from its clock.
SIGNATURE_TOLERANCE_SECONDS = 300
WEBHOOK_TIMEOUT_SECONDS = 10
# Back-off between attempts: 30 s, 60 s, 120 s ... capped at one hour, six retries in all.
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 3600
MAX_RETRIES = 6
# A pending delivery that no task attempted this long after it was written has lost its task.
REQUEUE_GRACE_SECONDS = 120
# Re-queues of one delivery before it is marked failed; with the doubling wait they span about an hour.
MAX_REQUEUES = 5
REQUEUE_BATCH_SIZE = 500
# How long the cache keeps a delivery's re-queue count, well past the last re-queue.
REQUEUE_MEMORY_SECONDS = 86400


class DeliveryError(Exception):
    """One delivery attempt failed; the task retries it later."""

    def __init__(self, message, *, response_status=None):
        super().__init__(message)
        self.response_status = response_status


# Webhook secrets ---------------------------------------------------------------


def _fernet():
    # NOTE: the key is derived from SECRET_KEY, so rotating SECRET_KEY makes stored webhook secrets unreadable.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"thermacore alarm webhook secrets").derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret):
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(token):
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise DeliveryError("The webhook secret cannot be decrypted; SECRET_KEY changed. Rotate the secret.") from exc


def create_notification_target(*, actor, **fields):
    """Create a target and return ``(target, secret)``; ``secret`` is the webhook signing secret, shown only now."""
    target = NotificationTarget(**fields)
    secret = None
    if target.kind == TargetKind.WEBHOOK:
        secret = secrets.token_urlsafe(32)
        target.secret_encrypted = encrypt_secret(secret)
    target.full_clean()
    with transaction.atomic():
        target.save()
        audit.record(AuditAction.OBJECT_CREATED, actor=actor, obj=target, detail={"kind": target.kind})
    logger.info("Notification target %s (%s) created by user %s", target.pk, target.kind, getattr(actor, "pk", None))
    return target, secret


def rotate_webhook_secret(target, *, actor):
    """Give a webhook target a new signing secret and return it; the old one stops working at once."""
    if target.kind != TargetKind.WEBHOOK:
        raise ValueError(f"Notification target {target.pk} is an {target.kind} target; only webhooks have a secret.")
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        NotificationTarget.objects.filter(pk=target.pk).update(secret_encrypted=encrypt_secret(secret))
        audit.record(AuditAction.OBJECT_UPDATED, actor=actor, obj=target, detail={"event": "secret_rotated"})
    logger.info("Webhook secret of notification target %s rotated by user %s", target.pk, getattr(actor, "pk", None))
    return secret


def sign(secret, timestamp, body):
    """Return the signature header value of a webhook ``body`` (bytes) sent at ``timestamp`` (Unix seconds)."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(secret, *, timestamp, body, signature, now=None):
    """Return whether a received webhook is authentic and recent; receivers in Python may use it as is."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - sent_at) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(sign(secret, sent_at, body), signature or "")


# Queueing ------------------------------------------------------------------------


def notify_annunciation(alarm, transition):
    """Queue the notification of an alarm that has just become active and unacknowledged."""
    targets = list(NotificationTarget.objects.receiving(TargetPurpose.ANNUNCIATION, alarm.priority))
    return queue_deliveries(alarm, transition, NotificationEvent.ANNUNCIATED, targets)


def notify_annunciations(annunciations):
    """Queue the notifications of several ``(alarm, transition)`` annunciations with one query for the targets."""
    if not annunciations:
        return []
    targets = list(NotificationTarget.objects.filter(enabled=True, purpose=TargetPurpose.ANNUNCIATION))
    deliveries = [
        NotificationDelivery(target=target, alarm=alarm, transition=transition, event=NotificationEvent.ANNUNCIATED)
        for alarm, transition in annunciations
        for target in targets
        if PRIORITY_RANK[target.min_priority] <= PRIORITY_RANK[alarm.priority]
    ]
    if not deliveries:
        return []
    deliveries = NotificationDelivery.objects.bulk_create(deliveries)
    transaction.on_commit(partial(_enqueue_all, connection.schema_name, [delivery.pk for delivery in deliveries]))
    return deliveries


def queue_deliveries(alarm, transition, event, targets):
    """Store one pending delivery per target in the current transaction and send them after commit."""
    if not targets:
        return []
    deliveries = NotificationDelivery.objects.bulk_create(
        [NotificationDelivery(target=target, alarm=alarm, transition=transition, event=event) for target in targets]
    )
    schema = connection.schema_name
    for delivery in deliveries:
        transaction.on_commit(partial(_enqueue, schema, delivery.pk))
    return deliveries


def _enqueue_all(schema, delivery_ids):
    for delivery_id in delivery_ids:
        _enqueue(schema, delivery_id)


def _enqueue(schema, delivery_id):
    from .tasks import deliver_notification_task

    try:
        with schema_context(schema):
            deliver_notification_task.delay(delivery_id)
    except Exception:
        # The delivery stays pending, and requeue_pending_deliveries queues it again after the grace period.
        logger.exception("Queueing notification delivery %s of schema %s failed", delivery_id, schema)


def requeue_pending_deliveries(now=None):
    """Queue again each pending delivery that no task has attempted within the grace period; return the counts.

    Such a delivery lost its task, because the broker was down at commit or
    lost the message. The n-th re-queue of a delivery waits
    ``REQUEUE_GRACE_SECONDS`` × 2^(n-1) after the one before, and after
    ``MAX_REQUEUES`` the delivery is marked failed. A delivery whose first
    task was only late is sent twice, and receivers drop the repeat by its
    delivery id. The re-queue count lives in the cache, so a cache flush
    restarts it.
    """
    from .tasks import deliver_notification_task

    now = now or timezone.now()
    due = (
        NotificationDelivery.objects.filter(
            status=DeliveryStatus.PENDING,
            attempts=0,
            created_at__lte=now - timedelta(seconds=REQUEUE_GRACE_SECONDS),
        )
        .order_by("created_at", "pk")
        .values_list("pk", "alarm_id", "created_at")[:REQUEUE_BATCH_SIZE]
    )
    counts = {"requeued": 0, "failed": 0, "waiting": 0}
    for delivery_id, alarm_id, created_at in due:
        key = f"alarms:delivery-requeues:{delivery_id}"
        requeues, last_requeued = cache.get(key) or (0, None)
        if last_requeued is not None and now.timestamp() < last_requeued + REQUEUE_GRACE_SECONDS * 2 ** (requeues - 1):
            counts["waiting"] += 1
            continue
        if requeues >= MAX_REQUEUES:
            counts["failed"] += NotificationDelivery.objects.filter(
                pk=delivery_id, status=DeliveryStatus.PENDING, attempts=0
            ).update(
                status=DeliveryStatus.FAILED,
                last_error=f"No task ran this delivery after it was queued {requeues + 1} times; check the Celery workers.",
            )
            logger.error(
                "Notification delivery %s of alarm %s was never attempted after %d re-queues; marked failed",
                delivery_id, alarm_id, requeues,
            )
            continue
        try:
            deliver_notification_task.delay(delivery_id)
        except KombuOperationalError:
            # The broker is still down, so the remaining deliveries would fail too; the next sweep tries again.
            logger.exception("Re-queueing notification delivery %s of alarm %s failed", delivery_id, alarm_id)
            break
        cache.set(key, (requeues + 1, now.timestamp()), timeout=REQUEUE_MEMORY_SECONDS)
        counts["requeued"] += 1
        logger.warning(
            "Notification delivery %s of alarm %s was pending without an attempt since %s; re-queued (%d of %d)",
            delivery_id, alarm_id, created_at.isoformat(), requeues + 1, MAX_REQUEUES,
        )
    return counts


# Sending -------------------------------------------------------------------------


def retry_countdown(retries):
    """Return the seconds to wait before retry number ``retries`` + 1 (exponential, capped)."""
    return min(RETRY_BASE_SECONDS * 2**retries, RETRY_MAX_SECONDS)


def attempt_delivery(delivery_id, *, last_attempt):
    """Send one delivery once; return its status.

    A failure raises ``DeliveryError`` after recording it as retrying, or
    records the delivery as failed when ``last_attempt`` is true.
    """
    delivery = NotificationDelivery.objects.select_related("target", "alarm__rule").get(pk=delivery_id)
    if delivery.status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
        return delivery.status
    NotificationDelivery.objects.filter(pk=delivery_id).update(attempts=F("attempts") + 1)

    try:
        response_status = _send(delivery)
    except DeliveryError as exc:
        status = DeliveryStatus.FAILED if last_attempt else DeliveryStatus.RETRYING
        NotificationDelivery.objects.filter(pk=delivery_id).update(
            status=status, last_error=str(exc)[:2000], response_status=exc.response_status
        )
        logger.warning(
            "Notification delivery %s of alarm %s to target %s failed (%s): %s",
            delivery_id, delivery.alarm_id, delivery.target_id, status, exc,
        )
        if last_attempt:
            return status
        raise

    NotificationDelivery.objects.filter(pk=delivery_id).update(
        status=DeliveryStatus.DELIVERED, delivered_at=timezone.now(), response_status=response_status, last_error=""
    )
    logger.info("Notification delivery %s of alarm %s sent to target %s", delivery_id, delivery.alarm_id, delivery.target_id)
    return DeliveryStatus.DELIVERED


def notification_payload(delivery):
    return {
        "delivery": delivery.pk,
        "event": delivery.event,
        "tenant": connection.schema_name,
        "alarm": alarm_payload(delivery.alarm),
    }


def _send(delivery):
    """Send ``delivery`` once and return the HTTP status of a webhook response (None for email)."""
    target = delivery.target
    if target.kind == TargetKind.EMAIL:
        return _send_email(delivery)
    if target.kind == TargetKind.WEBHOOK:
        return _send_webhook(delivery)
    raise DeliveryError(f"Notification target {target.pk} has unknown kind {target.kind!r}.")


def _send_email(delivery):
    alarm = delivery.alarm
    verb = "escalated" if delivery.event == NotificationEvent.ESCALATED else "active"
    kind = "Security alarm" if alarm.is_security else "Alarm"
    subject = f"[{alarm.get_priority_display()}] {kind} {verb}: {alarm.message}"
    body = (
        f"{alarm.message}\n"
        f"Priority: {alarm.get_priority_display()}\n"
        f"State: {alarm.get_state_display()}\n"
        f"Active since: {alarm.activated_at.isoformat()}\n"
        f"Value: {alarm.activation_value if alarm.activation_value is not None else '-'}\n"
    )
    try:
        send_mail(subject, body, None, [delivery.target.email], fail_silently=False)
    except OSError as exc:
        # SMTP errors are OSError subclasses (smtplib.SMTPException).
        raise DeliveryError(f"Sending email to {delivery.target.email} failed: {exc}") from exc


def _send_webhook(delivery):
    target = delivery.target
    secret = decrypt_secret(target.secret_encrypted)
    body = json.dumps(notification_payload(delivery), separators=(",", ":")).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(
        target.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            DELIVERY_HEADER: str(delivery.pk),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"Webhook {target.url} returned HTTP {exc.code}.", response_status=exc.code) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"Webhook {target.url} could not be reached: {exc}") from exc
