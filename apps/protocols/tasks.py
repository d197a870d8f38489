import logging

from celery import shared_task
from django.db import connection

from .polling import poll_due_devices

logger = logging.getLogger(__name__)


@shared_task(name="protocols.poll_due_devices", soft_time_limit=30, time_limit=45)
def poll_due_devices_task():
    """Poll every due device of the tenant schema the task runs in."""
    summary = poll_due_devices()
    if summary.polled:
        logger.debug(
            "Schema %s: polled %d devices (%d failed), stored %d samples",
            connection.schema_name, summary.polled, summary.failed, summary.samples,
        )
    return {"polled": summary.polled, "failed": summary.failed, "samples": summary.samples}
