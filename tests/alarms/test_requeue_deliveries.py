"""Re-queueing of notification deliveries whose Celery task was lost, e.g. because the broker was down at commit."""

import logging
import socket
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.alarms.choices import DeliveryStatus
from apps.alarms.models import NotificationDelivery
from apps.alarms.notifications import MAX_REQUEUES, REQUEUE_GRACE_SECONDS, requeue_pending_deliveries
from apps.alarms.tasks import requeue_pending_deliveries_task
from thermacore.celery import app

from .conftest import at
from .test_notifications import receiver, webhook  # noqa: F401 (fixtures)

# A port of this test's range that is bound but never listens, so a connection to it is refused.
DEAD_BROKER_PORT = 21101


def _use_broker(url):
    app.conf.broker_url = url
    # Celery caches its connection pools; drop them so the next publish connects to ``url``.
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def broker_down():
    """Point Celery at a loopback port where no broker listens, as when Redis is down at commit."""
    previous = app.conf.broker_url
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", DEAD_BROKER_PORT))
        _use_broker(f"redis://127.0.0.1:{DEAD_BROKER_PORT}/0")
        try:
            yield
        finally:
            _use_broker(previous)


@contextmanager
def eager():
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = previous


def test_requeue_task_is_scheduled():
    entries = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == "alarms.requeue_pending_deliveries"]

    assert len(entries) == 1
    assert "tenant_schemas" not in entries[0]
    assert entries[0]["schedule"] <= REQUEUE_GRACE_SECONDS


def test_delivery_left_pending_is_sent(sensor, make_rule, feed, webhook, receiver, caplog):
    make_rule(condition="hi", limit=100.0, priority="high")
    caplog.set_level(logging.INFO, logger="apps.alarms.notifications")

    with broker_down():
        feed(sensor, (at(0), 105.0))

    delivery = NotificationDelivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.attempts == 0
    assert receiver.requests == []
    assert f"Queueing notification delivery {delivery.pk} of schema alpha failed" in caplog.text

    # Within the grace period the first task may only be late.
    assert requeue_pending_deliveries()["requeued"] == 0
    NotificationDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - timedelta(seconds=REQUEUE_GRACE_SECONDS + 1)
    )
    with eager(), schema_context("alpha"):
        counts = requeue_pending_deliveries_task.apply().get()

    delivery.refresh_from_db()
    assert counts == {"requeued": 1, "failed": 0, "waiting": 0}
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 1
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["valid"] is True
    assert receiver.requests[0]["body"]["delivery"] == delivery.pk
    assert f"Notification delivery {delivery.pk} of alarm {delivery.alarm_id} was pending" in caplog.text


def test_requeue_waits_while_broker_down(sensor, make_rule, feed, webhook, receiver):
    make_rule(condition="hi", limit=100.0, priority="high")
    with broker_down():
        feed(sensor, (at(0), 105.0))
        delivery = NotificationDelivery.objects.get()
        counts = requeue_pending_deliveries(now=delivery.created_at + timedelta(seconds=REQUEUE_GRACE_SECONDS + 1))

    delivery.refresh_from_db()
    assert counts == {"requeued": 0, "failed": 0, "waiting": 0}
    assert delivery.status == DeliveryStatus.PENDING
    assert receiver.requests == []


def test_requeue_backs_off_then_gives_up(sensor, make_rule, feed, webhook, receiver):
    make_rule(condition="hi", limit=100.0, priority="high")
    # The broker takes every task, but no worker runs them, so the delivery never gets an attempt.
    feed(sensor, (at(0), 105.0))
    delivery = NotificationDelivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING

    now = delivery.created_at + timedelta(seconds=REQUEUE_GRACE_SECONDS + 1)
    for requeue in range(1, MAX_REQUEUES + 1):
        assert requeue_pending_deliveries(now=now) == {"requeued": 1, "failed": 0, "waiting": 0}
        wait = REQUEUE_GRACE_SECONDS * 2 ** (requeue - 1)
        assert requeue_pending_deliveries(now=now + timedelta(seconds=wait - 1)) == {
            "requeued": 0, "failed": 0, "waiting": 1,
        }
        now += timedelta(seconds=wait)

    counts = requeue_pending_deliveries(now=now)

    delivery.refresh_from_db()
    assert counts == {"requeued": 0, "failed": 1, "waiting": 0}
    assert delivery.status == DeliveryStatus.FAILED
    assert f"queued {MAX_REQUEUES + 1} times" in delivery.last_error
    assert receiver.requests == []
    assert requeue_pending_deliveries(now=now + timedelta(days=1)) == {"requeued": 0, "failed": 0, "waiting": 0}
