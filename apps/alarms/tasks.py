import logging

from celery import shared_task
from django.db import connection

from .timers import run_alarm_timers

logger = logging.getLogger(__name__)


@shared_task(name="alarms.run_timers", soft_time_limit=30, time_limit=45)
def run_alarm_timers_task():
    """Apply the clock-driven alarm changes (stale data, re-alarm, suppression, shelving) in the task's schema."""
    counts = run_alarm_timers()
    if any(counts.values()):
        logger.info("Schema %s: alarm timers %s", connection.schema_name, counts)
    return counts
