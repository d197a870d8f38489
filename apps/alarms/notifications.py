"""Email and webhook notifications of alarm events, queued in the transaction of the event and sent after commit.

A ``NotificationDelivery`` row per target is written in the same transaction
as the alarm transition, so a rolled-back activation sends no notification. After
commit one Celery task per delivery sends it and retries with exponential
back-off. A task sends only while it holds the delivery's claim, a lease
in the row, so a late, re-queued or redelivered task does not send a
delivery that another task has sent or is sending within its lease. The
number of attempts is stored in the row and bounds the retries, whichever
task makes them.
Webhooks are signed with HMAC-SHA256 over ``"<timestamp>.<body>"`` so that
a receiver can reject forged and replayed requests.
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
import uuid
from datetime import timedelta
from functools import partial

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.cache import cache
from django.core.mail import get_connection, send_mail
from django.db import connection, transaction
from django.db.models import F, Q
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
# SMTP socket timeout of notification emails. A lower EMAIL_TIMEOUT setting takes precedence.
EMAIL_TIMEOUT_SECONDS = 10
# Time limits of deliver_notification_task. The prefork pool kills a task at the hard limit, so no send runs longer.
# NOTE: the solo and threads pools of Celery do not enforce time limits.
DELIVERY_SOFT_TIME_LIMIT_SECONDS = 30
DELIVERY_TIME_LIMIT_SECONDS = 45
# How long a task's claim of a delivery lasts (60 s). It is longer than the hard time limit, so one send ends
# within it. After it, a delivery whose worker was killed mid-send can be claimed again.
# NOTE: claims compare the clocks of the workers, so these must agree to well within the lease.
CLAIM_LEASE_SECONDS = 6 * max(WEBHOOK_TIMEOUT_SECONDS, EMAIL_TIMEOUT_SECONDS)
# Back-off between attempts: 30 s, 60 s, 120 s ... capped at one hour, six retries in all.
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 3600
MAX_RETRIES = 6
# The first attempt and its retries. The stored count bounds them, so retries queued by the sweep end too.
MAX_ATTEMPTS = MAX_RETRIES + 1
# A pending delivery that no task attempted this long after it was written has lost its task, and a retrying
# delivery that no task attempted this long after its retry was due has lost its retry.
REQUEUE_GRACE_SECONDS = 120
# Re-queues of one delivery before it is marked failed; with the doubling wait they span about an hour.
MAX_REQUEUES = 5
REQUEUE_BATCH_SIZE = 500
# How long the cache keeps a delivery's re-queue count, well past the last re-queue.
REQUEUE_MEMORY_SECONDS = 86400


class DeliveryError(Exception):
    """Failure of one delivery attempt, which the task retries after ``retry_countdown`` seconds.

    ``attempt_delivery`` sets ``retry_countdown`` to the back-off it stored as
    the delivery's ``next_attempt_at``, so the Celery retry and the sweep agree.
    """

    def __init__(self, message, *, response_status=None):
        super().__init__(message)
        self.response_status = response_status
        self.retry_countdown = None


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
    """Queue again each delivery whose task or retry was lost or stopped mid-send; return the counts.

    Three kinds of delivery are due. A pending delivery that no task has
    claimed within ``REQUEUE_GRACE_SECONDS`` lost its task, because the
    broker was down at commit or lost the message. A retrying delivery that
    no task has claimed within ``REQUEUE_GRACE_SECONDS`` after its
    ``next_attempt_at`` lost its Celery retry. Either the broker was down
    when the retry was published, and Celery dropped the task, or it lost the
    scheduled message in a restart without persistence. A pending or
    retrying delivery whose claim expired without a result lost its worker
    mid-send. A delivery under a live claim is never re-queued, and neither
    is a retry that is not yet due. The n-th re-queue of a
    delivery waits ``REQUEUE_GRACE_SECONDS`` × 2^(n-1) after the one before,
    and after ``MAX_REQUEUES`` the delivery is marked failed. The re-queue
    count lives in the cache, so a cache flush restarts it.

    A re-queued task whose first task was only late does not send twice,
    because only the task that holds the claim sends. A receiver can still
    get a delivery twice: when a send outlived its claim lease
    (``CLAIM_LEASE_SECONDS``), when a worker died after the receiver got the
    request but before the result was stored, and when a failed attempt
    (timeout, HTTP 5xx) had reached the receiver and is retried. Receivers
    can drop such repeats by the ``X-ThermaCore-Delivery`` header. When a
    Celery retry was only late, it and the re-queued task both run, and each
    of them that fails schedules its own retry. The delivery can then get
    attempts sooner than the back-off, but no more than ``MAX_ATTEMPTS``.
    """
    from .tasks import deliver_notification_task

    now = now or timezone.now()
    due_condition = _lost_condition(now) | _abandoned_condition(now) | _retry_lost_condition(now)
    due = (
        NotificationDelivery.objects.filter(due_condition)
        .order_by("created_at", "pk")
        .values_list("pk", "alarm_id", "created_at", "claimed_until", "next_attempt_at")[:REQUEUE_BATCH_SIZE]
    )
    counts = {"requeued": 0, "failed": 0, "waiting": 0}
    for delivery_id, alarm_id, created_at, claimed_until, next_attempt_at in due:
        key = f"alarms:delivery-requeues:{delivery_id}"
        requeues, last_requeued = cache.get(key) or (0, None)
        if last_requeued is not None and now.timestamp() < last_requeued + REQUEUE_GRACE_SECONDS * 2 ** (requeues - 1):
            counts["waiting"] += 1
            continue
        if requeues >= MAX_REQUEUES:
            counts["failed"] += _fail_unfinished(
                delivery_id, alarm_id, claimed_until, next_attempt_at, requeues, due_condition
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
        if claimed_until is None and next_attempt_at is not None:
            logger.warning(
                "The retry of notification delivery %s of alarm %s was due at %s but did not run, "
                "so its Celery retry was lost; re-queued (%d of %d)",
                delivery_id, alarm_id, next_attempt_at.isoformat(), requeues + 1, MAX_REQUEUES,
            )
        elif claimed_until is None:
            logger.warning(
                "Notification delivery %s of alarm %s was pending without an attempt since %s; re-queued (%d of %d)",
                delivery_id, alarm_id, created_at.isoformat(), requeues + 1, MAX_REQUEUES,
            )
        else:
            logger.warning(
                "The claim of notification delivery %s of alarm %s expired at %s without a result, "
                "so its worker stopped mid-send; re-queued (%d of %d)",
                delivery_id, alarm_id, claimed_until.isoformat(), requeues + 1, MAX_REQUEUES,
            )
    return counts


def _lost_condition(now):
    # A claim counts an attempt, so an unclaimed delivery without attempts was never taken by a task.
    return Q(
        status=DeliveryStatus.PENDING,
        attempts=0,
        claimed_until__isnull=True,
        created_at__lte=now - timedelta(seconds=REQUEUE_GRACE_SECONDS),
    )


def _abandoned_condition(now):
    # Success and failure release the claim, so an expired one means that the task never stored its result.
    return Q(status__in=(DeliveryStatus.PENDING, DeliveryStatus.RETRYING), claimed_until__lte=now)


def _retry_lost_condition(now):
    # A claim clears next_attempt_at and a failure sets it again, so an unclaimed retrying delivery whose
    # retry was due more than the grace period ago was not attempted by that retry.
    return Q(
        status=DeliveryStatus.RETRYING,
        claimed_until__isnull=True,
        next_attempt_at__lte=now - timedelta(seconds=REQUEUE_GRACE_SECONDS),
    )


def _fail_unfinished(delivery_id, alarm_id, claimed_until, next_attempt_at, requeues, due_condition):
    if claimed_until is None and next_attempt_at is not None:
        error = (
            f"No retry of this delivery ran after it was queued {requeues + 1} times, so its Celery retries "
            "were lost. Check that the Celery workers run and that the broker (Redis) is up and persists "
            "its data across restarts."
        )
    elif claimed_until is None:
        error = f"No task ran this delivery after it was queued {requeues + 1} times; check the Celery workers."
    else:
        error = (
            f"No task finished this delivery after it was queued {requeues + 1} times, because its workers "
            "stopped mid-send; check the Celery worker logs."
        )
    # The condition is checked again in the UPDATE, so a task that claimed the delivery meanwhile keeps it.
    failed = NotificationDelivery.objects.filter(due_condition, pk=delivery_id).update(
        status=DeliveryStatus.FAILED, last_error=error, claim_token=None, claimed_until=None, next_attempt_at=None
    )
    if failed:
        logger.error(
            "Notification delivery %s of alarm %s was not finished after %d re-queues; marked failed",
            delivery_id, alarm_id, requeues,
        )
    return failed


# Sending -------------------------------------------------------------------------


def retry_countdown(retries):
    """Return the seconds to wait before retry number ``retries`` + 1 (exponential, capped)."""
    return min(RETRY_BASE_SECONDS * 2**retries, RETRY_MAX_SECONDS)


def claim_delivery(delivery_id, now=None):
    """Claim a pending or retrying delivery for one attempt and count the attempt; return the claim token.

    The claim clears ``next_attempt_at``, because the attempt that was due
    is now running.

    Return None when the delivery is delivered, failed or under a live claim
    of another task. The check and the claim are one conditional UPDATE, so
    of two tasks that claim at the same time only one gets the token.
    """
    token = uuid.uuid4()
    now = now or timezone.now()
    claimed = NotificationDelivery.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lte=now),
        pk=delivery_id,
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.RETRYING),
    ).update(
        claim_token=token,
        claimed_until=now + timedelta(seconds=CLAIM_LEASE_SECONDS),
        attempts=F("attempts") + 1,
        next_attempt_at=None,
    )
    return token if claimed else None


def _record_result(delivery_id, token, **fields):
    """Store the result of the attempt that holds claim ``token`` and release the claim; return whether it matched."""
    return bool(
        NotificationDelivery.objects.filter(pk=delivery_id, claim_token=token).update(
            **fields, claim_token=None, claimed_until=None
        )
    )


def attempt_delivery(delivery_id, *, last_attempt):
    """Claim one delivery, send it once and record the result; return its status.

    A task that cannot claim the delivery sends nothing and returns its
    current status. A failure records the delivery as failed when
    ``last_attempt`` is true or the delivery has had ``MAX_ATTEMPTS``
    attempts. Otherwise it records the delivery as retrying, with
    ``next_attempt_at`` after the back-off of its stored attempt count, and
    raises ``DeliveryError`` with that back-off as ``retry_countdown``. Both
    release the claim, so the Celery retry can claim it again.
    """
    token = claim_delivery(delivery_id)
    if token is None:
        return _status_unclaimed(delivery_id)
    delivery = NotificationDelivery.objects.select_related("target", "alarm__rule").get(pk=delivery_id)

    try:
        response_status = _send(delivery)
    except DeliveryError as exc:
        # A task that the sweep queued starts with no Celery retries, so the stored count decides the end.
        last_attempt = last_attempt or delivery.attempts >= MAX_ATTEMPTS
        status = DeliveryStatus.FAILED if last_attempt else DeliveryStatus.RETRYING
        exc.retry_countdown = None if last_attempt else retry_countdown(delivery.attempts - 1)
        next_attempt_at = None if last_attempt else timezone.now() + timedelta(seconds=exc.retry_countdown)
        recorded = _record_result(
            delivery_id, token, status=status, last_error=str(exc)[:2000], response_status=exc.response_status,
            next_attempt_at=next_attempt_at,
        )
        logger.warning(
            "Notification delivery %s of alarm %s to target %s failed on attempt %d of %d (%s): %s",
            delivery_id, delivery.alarm_id, delivery.target_id, delivery.attempts, MAX_ATTEMPTS, status, exc,
        )
        if not recorded:
            # Another task claimed the delivery after this claim expired, or the sweep marked it failed,
            # so a Celery retry of this task would only add a task that cannot claim it.
            _log_claim_lost(delivery_id, status)
            return _status_and_claim(delivery_id)[0]
        if last_attempt:
            return status
        raise

    recorded = _record_result(
        delivery_id, token,
        status=DeliveryStatus.DELIVERED, delivered_at=timezone.now(), response_status=response_status, last_error="",
    )
    if not recorded:
        _log_claim_lost(delivery_id, DeliveryStatus.DELIVERED)
    logger.info("Notification delivery %s of alarm %s sent to target %s", delivery_id, delivery.alarm_id, delivery.target_id)
    return DeliveryStatus.DELIVERED


def _status_and_claim(delivery_id):
    row = NotificationDelivery.objects.filter(pk=delivery_id).values_list("status", "claimed_until").first()
    if row is None:
        raise NotificationDelivery.DoesNotExist(
            f"Notification delivery {delivery_id} not found; its target or alarm was deleted, "
            "so there is nothing to send."
        )
    return row


def _status_unclaimed(delivery_id):
    status, claimed_until = _status_and_claim(delivery_id)
    if status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
        logger.info("Notification delivery %s is already %s; this task sends nothing", delivery_id, status)
    else:
        logger.info(
            "Notification delivery %s is claimed by another task until %s; this task sends nothing",
            delivery_id, claimed_until.isoformat() if claimed_until else "-",
        )
    return status


def _log_claim_lost(delivery_id, status):
    logger.warning(
        "The claim of notification delivery %s expired during its send, and the delivery was claimed again or "
        "marked failed meanwhile, so this task's result (%s) was not stored and the receiver may get it twice",
        delivery_id, status,
    )


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
    timeout = min(getattr(settings, "EMAIL_TIMEOUT", None) or EMAIL_TIMEOUT_SECONDS, EMAIL_TIMEOUT_SECONDS)
    try:
        send_mail(
            subject, body, None, [delivery.target.email],
            fail_silently=False, connection=get_connection(fail_silently=False, timeout=timeout),
        )
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
