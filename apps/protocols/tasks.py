import logging

from celery import shared_task
from django.db import connection

from .certificates import refresh_crls, warn_expiring_certificates
from .polling import poll_due_devices
from .schedules import poll_group

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


@shared_task(name="protocols.warn_expiring_certificates", soft_time_limit=60, time_limit=90)
def warn_expiring_certificates_task():
    """Log a warning for each certificate of the tenant schema that expires within 30 days."""
    return [certificate.pk for certificate in warn_expiring_certificates()]


# Each URL may take about two fetch timeouts (10 s each), so the limit leaves room for about 30 URLs.
@shared_task(name="protocols.refresh_crls", soft_time_limit=600, time_limit=660)
def refresh_crls_task():
    """Fetch the due CRLs of the tenant schema from the distribution points of its stored certificates."""
    counts = {}
    for outcome in refresh_crls():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


@shared_task(name="protocols.poll_group", soft_time_limit=30, time_limit=45)
def poll_group_task(poll_group_id):
    """Poll the due devices of one poll group; its beat entry sends this task (apps.protocols.schedules)."""
    summary = poll_group(poll_group_id)
    return {"polled": summary.polled, "failed": summary.failed, "samples": summary.samples}
