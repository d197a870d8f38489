import logging

from celery import shared_task
from django.db import connection

from .notifications import (
    DELIVERY_SOFT_TIME_LIMIT_SECONDS,
    DELIVERY_TIME_LIMIT_SECONDS,
    MAX_RETRIES,
    DeliveryError,
    attempt_delivery,
    requeue_pending_deliveries,
)
from .timers import run_alarm_timers

logger = logging.getLogger(__name__)


@shared_task(name="alarms.run_timers", soft_time_limit=30, time_limit=45)
def run_alarm_timers_task():
    """Apply the clock-driven alarm changes (stale data, re-alarm, suppression, shelving, security) in the task's schema."""
    counts = run_alarm_timers()
    if any(counts.values()):
        logger.info("Schema %s: alarm timers %s", connection.schema_name, counts)
    return counts


@shared_task(
    bind=True,
    name="alarms.deliver_notification",
    max_retries=MAX_RETRIES,
    acks_late=True,
    soft_time_limit=DELIVERY_SOFT_TIME_LIMIT_SECONDS,
    time_limit=DELIVERY_TIME_LIMIT_SECONDS,
)
def deliver_notification_task(self, delivery_id):
    """Send one notification delivery, retrying with exponential back-off while it fails.

    A task whose delivery another task holds or has finished sends nothing and returns the delivery's status.
    The delivery's stored attempt count also ends the retries, so a task that the sweep queued stops too.
    """
    try:
        return attempt_delivery(delivery_id, last_attempt=self.request.retries >= self.max_retries)
    except DeliveryError as exc:
        # attempt_delivery stored this back-off as next_attempt_at, and the sweep re-queues the delivery
        # when the retry has not run by then.
        raise self.retry(exc=exc, countdown=exc.retry_countdown) from exc


@shared_task(name="alarms.requeue_pending_deliveries", soft_time_limit=60, time_limit=90)
def requeue_pending_deliveries_task():
    """Queue again the notification deliveries of the task's schema whose task was lost."""
    counts = requeue_pending_deliveries()
    if counts["requeued"] or counts["failed"]:
        logger.info("Schema %s: pending notification deliveries %s", connection.schema_name, counts)
    return counts
