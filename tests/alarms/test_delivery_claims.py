"""Claims of notification deliveries: one send per delivery despite late, re-queued, concurrent and killed tasks.

Retrying deliveries whose Celery retry was lost are re-queued once their
retry is overdue, and they still end after the allowed number of attempts.

Late and re-queued tasks run at the same time on a real Celery worker
(threads pool) with the Redis broker of the test run. Concurrent attempts
run in two threads against one committed delivery. Every webhook goes to a
real HTTP receiver on loopback that counts the requests.
"""

import logging
import queue
import secrets
import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.alarms.choices import AlarmState, DeliveryStatus, NotificationEvent, TargetKind, TransitionAction
from apps.alarms.models import AlarmTransition, NotificationDelivery, NotificationTarget
from apps.alarms.notifications import (
    CLAIM_LEASE_SECONDS,
    MAX_ATTEMPTS,
    MAX_REQUEUES,
    REQUEUE_GRACE_SECONDS,
    WEBHOOK_TIMEOUT_SECONDS,
    DeliveryError,
    _record_result,
    attempt_delivery,
    claim_delivery,
    encrypt_secret,
    requeue_pending_deliveries,
    retry_countdown,
)
from apps.alarms.tasks import deliver_notification_task
from thermacore.celery import app

from .conftest import at
from .test_notifications import receiver, webhook  # noqa: F401 (fixtures)
from .test_requeue_deliveries import eager

# Seconds a test waits for a thread, a request or a worker task.
WAIT_SECONDS = 15


@pytest.fixture
def committed_delivery(committed_alarm, receiver, django_db_blocker):
    """A pending webhook delivery of a committed alarm in alpha, so that worker and test threads see it."""
    alarm, _users = committed_alarm
    secret = secrets.token_urlsafe(32)
    receiver.secret = secret
    with django_db_blocker.unblock(), schema_context("alpha"):
        target = NotificationTarget.objects.create(
            name="Pager", kind=TargetKind.WEBHOOK, url=receiver.url, secret_encrypted=encrypt_secret(secret)
        )
        transition = AlarmTransition.objects.create(
            alarm=alarm, time=timezone.now(), action=TransitionAction.ACTIVATE,
            to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
        )
        delivery = NotificationDelivery.objects.create(
            target=target, alarm=alarm, transition=transition, event=NotificationEvent.ANNUNCIATED
        )
    yield delivery
    with django_db_blocker.unblock(), schema_context("alpha"):
        # Deleting the target deletes its deliveries, and committed_alarm deletes the alarm and its transitions.
        target.delete()
    connection.set_schema_to_public()


@contextmanager
def celery_worker():
    """Run a Celery worker of the project app that runs two tasks at a time from the default queue of the test broker."""
    app.loader.import_default_modules()
    connection.set_schema_to_public()
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING",
                      queues=["default"], shutdown_timeout=30):
        yield
    connection.set_schema_to_public()


@contextmanager
def finished_deliveries():
    """Yield a queue that receives the return value of each deliver_notification_task that a worker finishes."""
    results = queue.Queue()

    def record(task=None, retval=None, **kwargs):
        if task.name == deliver_notification_task.name:
            results.put(retval)

    task_postrun.connect(record, weak=False, dispatch_uid="test.delivery_claims.finished")
    try:
        yield results
    finally:
        task_postrun.disconnect(dispatch_uid="test.delivery_claims.finished")


def next_or_none(results, timeout=WAIT_SECONDS):
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        return None


def test_claim_lease_outlasts_one_send():
    assert CLAIM_LEASE_SECONDS > deliver_notification_task.time_limit
    assert CLAIM_LEASE_SECONDS > deliver_notification_task.soft_time_limit
    # A webhook send waits up to the timeout to connect and again for the response.
    assert CLAIM_LEASE_SECONDS > 2 * WEBHOOK_TIMEOUT_SECONDS


@pytest.mark.slow
def test_late_and_requeued_task_send_once(committed_delivery, receiver, django_db_blocker):
    with django_db_blocker.unblock(), schema_context("alpha"):
        NotificationDelivery.objects.filter(pk=committed_delivery.pk).update(
            created_at=timezone.now() - timedelta(seconds=REQUEUE_GRACE_SECONDS + 1)
        )
        # The first task waits in the broker with no worker running, as when the workers are busy.
        deliver_notification_task.delay(committed_delivery.pk)
        counts = requeue_pending_deliveries()

    # The receiver holds the first request, so the worker runs both tasks at the same time.
    receiver.hold = threading.Event()
    with django_db_blocker.unblock(), finished_deliveries() as results:
        with celery_worker():
            try:
                first = next_or_none(results)
                arrived = receiver.arrived.wait(timeout=WAIT_SECONDS)
                requests_while_held = len(receiver.requests)
            finally:
                receiver.hold.set()
            second = next_or_none(results)
        with schema_context("alpha"):
            delivery = NotificationDelivery.objects.get(pk=committed_delivery.pk)

    assert counts == {"requeued": 1, "failed": 0, "waiting": 0}
    assert first == DeliveryStatus.PENDING
    assert arrived is True
    assert requests_while_held == 1
    assert second == DeliveryStatus.DELIVERED
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["valid"] is True
    assert receiver.requests[0]["body"]["delivery"] == committed_delivery.pk
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 1
    assert delivery.claim_token is None
    assert delivery.claimed_until is None


def test_concurrent_attempts_send_once(committed_delivery, receiver, django_db_blocker):
    # The receiver holds the first request, so a second send would overlap it.
    receiver.hold = threading.Event()
    start = threading.Barrier(2)
    results = queue.Queue()

    def attempt():
        try:
            start.wait(timeout=WAIT_SECONDS)
            with schema_context("alpha"):
                results.put(attempt_delivery(committed_delivery.pk, last_attempt=False))
        except Exception as exc:
            results.put(exc)
        finally:
            connection.close()

    with django_db_blocker.unblock():
        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            # The task that lost the claim returns while the other one's request is still held.
            first = next_or_none(results)
            arrived = receiver.arrived.wait(timeout=WAIT_SECONDS)
            requests_while_held = len(receiver.requests)
        finally:
            receiver.hold.set()
        second = next_or_none(results)
        for thread in threads:
            thread.join(timeout=WAIT_SECONDS)
        with schema_context("alpha"):
            delivery = NotificationDelivery.objects.get(pk=committed_delivery.pk)

    assert first == DeliveryStatus.PENDING
    assert arrived is True
    assert requests_while_held == 1
    assert second == DeliveryStatus.DELIVERED
    assert len(receiver.requests) == 1
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 1
    assert delivery.claim_token is None


def test_task_under_live_claim_sends_nothing(sensor, make_rule, feed, webhook, receiver, caplog):
    make_rule(condition="hi", limit=100.0, priority="high")
    # The broker takes the first task, but no worker runs it.
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    claim_delivery(delivery.pk)
    caplog.set_level(logging.INFO, logger="apps.alarms.notifications")

    with eager(), schema_context("alpha"):
        result = deliver_notification_task.apply(args=(delivery.pk,))

    delivery.refresh_from_db()
    assert result.state == "SUCCESS"
    assert result.result == DeliveryStatus.PENDING
    assert receiver.requests == []
    assert delivery.attempts == 1
    assert f"Notification delivery {delivery.pk} is claimed by another task until" in caplog.text


def test_expired_claim_requeued_and_sent_once(sensor, make_rule, feed, webhook, receiver, caplog):
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    claimed_at = timezone.now()
    killed_token = claim_delivery(delivery.pk, now=claimed_at)
    delivery.refresh_from_db()
    lease_end = delivery.claimed_until
    caplog.set_level(logging.INFO, logger="apps.alarms.notifications")

    # The task that holds the claim may still be sending until the lease ends.
    while_live = requeue_pending_deliveries(now=lease_end - timedelta(seconds=1))
    # Its worker is killed mid-send, and the claim expires without a result.
    NotificationDelivery.objects.filter(pk=delivery.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    with eager():
        after_expiry = requeue_pending_deliveries()
    late_result_stored = _record_result(delivery.pk, killed_token, status=DeliveryStatus.FAILED)
    afterwards = requeue_pending_deliveries(now=timezone.now() + timedelta(days=1))

    delivery.refresh_from_db()
    assert lease_end == claimed_at + timedelta(seconds=CLAIM_LEASE_SECONDS)
    assert while_live == {"requeued": 0, "failed": 0, "waiting": 0}
    assert after_expiry == {"requeued": 1, "failed": 0, "waiting": 0}
    assert late_result_stored is False
    assert afterwards == {"requeued": 0, "failed": 0, "waiting": 0}
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["body"]["delivery"] == delivery.pk
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 2
    assert delivery.claim_token is None
    assert delivery.claimed_until is None
    assert f"The claim of notification delivery {delivery.pk} of alarm {delivery.alarm_id} expired" in caplog.text


def test_expired_claim_requeues_then_fails(sensor, make_rule, feed, webhook, receiver):
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    claim_delivery(delivery.pk)
    delivery.refresh_from_db()

    # Every re-queued task waits in the broker, so the claim stays expired.
    now = delivery.claimed_until + timedelta(seconds=1)
    for _ in range(MAX_REQUEUES):
        assert requeue_pending_deliveries(now=now) == {"requeued": 1, "failed": 0, "waiting": 0}
        now += timedelta(seconds=REQUEUE_GRACE_SECONDS * 2**MAX_REQUEUES)
    counts = requeue_pending_deliveries(now=now)

    delivery.refresh_from_db()
    assert counts == {"requeued": 0, "failed": 1, "waiting": 0}
    assert delivery.status == DeliveryStatus.FAILED
    assert "stopped mid-send" in delivery.last_error
    assert delivery.claim_token is None
    assert delivery.claimed_until is None
    assert receiver.requests == []


def test_failed_attempt_releases_claim_for_retry(sensor, make_rule, feed, webhook, receiver):
    receiver.fail_first = 1
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()

    with pytest.raises(DeliveryError, match="HTTP 503"):
        attempt_delivery(delivery.pk, last_attempt=False)
    delivery.refresh_from_db()
    after_failure = (delivery.status, delivery.attempts, delivery.response_status)
    claim_after_failure = (delivery.claim_token, delivery.claimed_until)
    # Until its retry is overdue, a retrying delivery waits for its Celery retry, so the sweep leaves it alone.
    sweep = requeue_pending_deliveries(now=delivery.next_attempt_at + timedelta(seconds=REQUEUE_GRACE_SECONDS - 1))

    with eager(), schema_context("alpha"):
        retry = deliver_notification_task.apply(args=(delivery.pk,), retries=1)

    delivery.refresh_from_db()
    assert after_failure == (DeliveryStatus.RETRYING, 1, 503)
    assert claim_after_failure == (None, None)
    assert sweep == {"requeued": 0, "failed": 0, "waiting": 0}
    assert retry.result == DeliveryStatus.DELIVERED
    assert len(receiver.requests) == 2
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 2
    assert delivery.response_status == 204
    assert delivery.claim_token is None
    assert delivery.next_attempt_at is None


def test_lost_retry_requeued_and_sent_once(sensor, make_rule, feed, webhook, receiver, caplog):
    receiver.fail_first = 1
    make_rule(condition="hi", limit=100.0, priority="high")
    # The first task waits in the broker, and the test runs it in place of a worker.
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    caplog.set_level(logging.INFO, logger="apps.alarms.notifications")

    failed_at = timezone.now()
    # Called directly, the task raises its error instead of publishing its retry, as when the broker is down then.
    with pytest.raises(DeliveryError, match="HTTP 503"):
        deliver_notification_task(delivery.pk)
    delivery.refresh_from_db()
    after_failure = (delivery.status, delivery.attempts, delivery.claimed_until)
    due = delivery.next_attempt_at
    within_grace = requeue_pending_deliveries(now=due + timedelta(seconds=REQUEUE_GRACE_SECONDS - 1))
    with eager():
        overdue = requeue_pending_deliveries(now=due + timedelta(seconds=REQUEUE_GRACE_SECONDS + 1))
    afterwards = requeue_pending_deliveries(now=due + timedelta(days=1))

    delivery.refresh_from_db()
    assert after_failure == (DeliveryStatus.RETRYING, 1, None)
    assert due >= failed_at + timedelta(seconds=retry_countdown(0))
    assert due <= failed_at + timedelta(seconds=retry_countdown(0) + WAIT_SECONDS)
    assert within_grace == {"requeued": 0, "failed": 0, "waiting": 0}
    assert overdue == {"requeued": 1, "failed": 0, "waiting": 0}
    assert afterwards == {"requeued": 0, "failed": 0, "waiting": 0}
    # The failed attempt and the one successful send of the re-queued task.
    assert len(receiver.requests) == 2
    assert receiver.requests[1]["body"]["delivery"] == delivery.pk
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 2
    assert delivery.next_attempt_at is None
    assert delivery.claimed_until is None
    assert (
        f"The retry of notification delivery {delivery.pk} of alarm {delivery.alarm_id} was due at {due.isoformat()}"
        in caplog.text
    )


def test_future_retry_not_requeued_early(sensor, make_rule, feed, webhook, receiver):
    receiver.fail_first = 1
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    # After five earlier attempts the next back-off is the longest one that MAX_RETRIES allows.
    earlier_attempts = MAX_ATTEMPTS - 2
    countdown = retry_countdown(earlier_attempts)
    NotificationDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.RETRYING, attempts=earlier_attempts)

    failed_at = timezone.now()
    with pytest.raises(DeliveryError, match="HTTP 503"):
        deliver_notification_task(delivery.pk)
    delivery.refresh_from_db()
    early = [
        requeue_pending_deliveries(now=failed_at + timedelta(seconds=seconds))
        for seconds in (0, REQUEUE_GRACE_SECONDS + 1, countdown, countdown + REQUEUE_GRACE_SECONDS - 1)
    ]
    overdue = requeue_pending_deliveries(
        now=delivery.next_attempt_at + timedelta(seconds=REQUEUE_GRACE_SECONDS + 1)
    )

    assert countdown == 960
    assert delivery.status == DeliveryStatus.RETRYING
    assert delivery.attempts == earlier_attempts + 1
    assert delivery.next_attempt_at >= failed_at + timedelta(seconds=countdown)
    assert early == [{"requeued": 0, "failed": 0, "waiting": 0}] * 4
    assert overdue == {"requeued": 1, "failed": 0, "waiting": 0}
    assert len(receiver.requests) == 1


def test_requeued_retries_end_failed(sensor, make_rule, feed, webhook, receiver):
    receiver.fail_first = MAX_ATTEMPTS * 2
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()

    # The first attempt's retry is lost. The re-queued task starts with no Celery retries and retries eagerly.
    with pytest.raises(DeliveryError, match="HTTP 503"):
        deliver_notification_task(delivery.pk)
    delivery.refresh_from_db()
    with eager():
        sweep = requeue_pending_deliveries(now=delivery.next_attempt_at + timedelta(seconds=REQUEUE_GRACE_SECONDS + 1))
    afterwards = requeue_pending_deliveries(now=timezone.now() + timedelta(days=1))

    delivery.refresh_from_db()
    assert sweep == {"requeued": 1, "failed": 0, "waiting": 0}
    assert afterwards == {"requeued": 0, "failed": 0, "waiting": 0}
    assert len(receiver.requests) == MAX_ATTEMPTS
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == MAX_ATTEMPTS
    assert "HTTP 503" in delivery.last_error
    assert delivery.next_attempt_at is None
    assert delivery.claimed_until is None


def test_every_retry_lost_ends_failed(sensor, make_rule, feed, webhook, receiver):
    receiver.fail_first = MAX_ATTEMPTS * 2
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()

    # Each task that the sweep queues fails, and its Celery retry is lost too. The test runs the tasks
    # that the sweep publishes in place of a worker.
    with pytest.raises(DeliveryError, match="HTTP 503"):
        deliver_notification_task(delivery.pk)
    sweeps = []
    now = timezone.now() + timedelta(days=1)
    for _ in range(MAX_REQUEUES):
        sweeps.append(requeue_pending_deliveries(now=now))
        now += timedelta(seconds=REQUEUE_GRACE_SECONDS * 2**MAX_REQUEUES)
        with pytest.raises(DeliveryError, match="HTTP 503"):
            deliver_notification_task(delivery.pk)
    final = requeue_pending_deliveries(now=now)

    delivery.refresh_from_db()
    assert sweeps == [{"requeued": 1, "failed": 0, "waiting": 0}] * MAX_REQUEUES
    assert final == {"requeued": 0, "failed": 1, "waiting": 0}
    assert len(receiver.requests) == MAX_REQUEUES + 1
    assert delivery.attempts == MAX_REQUEUES + 1
    assert delivery.status == DeliveryStatus.FAILED
    assert f"queued {MAX_REQUEUES + 1} times, so its Celery retries were lost" in delivery.last_error
    assert delivery.next_attempt_at is None


@pytest.mark.slow
def test_late_retry_and_requeued_task_send_once(committed_delivery, receiver, django_db_blocker):
    receiver.fail_first = 1
    with django_db_blocker.unblock(), schema_context("alpha"):
        with pytest.raises(DeliveryError, match="HTTP 503"):
            attempt_delivery(committed_delivery.pk, last_attempt=False)
        due = NotificationDelivery.objects.get(pk=committed_delivery.pk).next_attempt_at
        # The Celery retry is only late, so it waits in the broker with no worker running, past its due time.
        deliver_notification_task.apply_async(args=(committed_delivery.pk,), retries=1)
        counts = requeue_pending_deliveries(now=due + timedelta(seconds=REQUEUE_GRACE_SECONDS + 1))

    # The receiver keeps the next request waiting, so the worker runs the retry and the re-queued task at once.
    receiver.arrived.clear()
    receiver.hold = threading.Event()
    with django_db_blocker.unblock(), finished_deliveries() as results:
        with celery_worker():
            try:
                first = next_or_none(results)
                arrived = receiver.arrived.wait(timeout=WAIT_SECONDS)
                requests_while_held = len(receiver.requests)
            finally:
                receiver.hold.set()
            second = next_or_none(results)
        with schema_context("alpha"):
            delivery = NotificationDelivery.objects.get(pk=committed_delivery.pk)

    assert counts == {"requeued": 1, "failed": 0, "waiting": 0}
    assert first == DeliveryStatus.RETRYING
    assert arrived is True
    # The failed first attempt and the one held send.
    assert requests_while_held == 2
    assert second == DeliveryStatus.DELIVERED
    assert len(receiver.requests) == 2
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 2
    assert delivery.claim_token is None
    assert delivery.next_attempt_at is None


def test_delivered_delivery_not_sent_again(sensor, make_rule, feed, webhook, receiver, eager_tasks, caplog):
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    caplog.set_level(logging.INFO, logger="apps.alarms.notifications")

    again = attempt_delivery(delivery.pk, last_attempt=False)
    with schema_context("alpha"):
        task = deliver_notification_task.apply(args=(delivery.pk,))
    sweep = requeue_pending_deliveries(now=timezone.now() + timedelta(days=1))

    delivery.refresh_from_db()
    assert again == DeliveryStatus.DELIVERED
    assert task.result == DeliveryStatus.DELIVERED
    assert sweep == {"requeued": 0, "failed": 0, "waiting": 0}
    assert len(receiver.requests) == 1
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 1
    assert f"Notification delivery {delivery.pk} is already delivered" in caplog.text
