import logging

from celery import shared_task
from django.db import connection

from . import spool
from .partitions import ensure_partitions_ahead
from .retention import RETENTION_JOB, apply_retention

logger = logging.getLogger(__name__)


@shared_task(name="telemetry.ensure_partitions", soft_time_limit=120, time_limit=180)
def ensure_partitions_task():
    """Create the coming days' reading partitions in the schema the task runs in."""
    ensure_partitions_ahead()
    logger.info("Reading partitions ensured for schema %s", connection.schema_name)


@shared_task(name="telemetry.replay_spool", soft_time_limit=300, time_limit=360)
def replay_spool_task():
    """Store the readings spooled to Redis while PostgreSQL was away, oldest first."""
    spool.replay(connection.schema_name)


@shared_task(name=RETENTION_JOB, soft_time_limit=1800, time_limit=2400)
def apply_retention_task():
    """Drop the reading partitions older than the retention of the tenant the task runs for."""
    result = apply_retention()
    return {"dropped": result.dropped, "kept": result.skipped}
