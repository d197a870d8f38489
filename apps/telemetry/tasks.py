import logging

from celery import shared_task
from django.db import connection

from . import spool
from .csv_import_jobs import RUN_JOB, fail_interrupted_jobs, run_import_job
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


# The hard limit stays below the broker's visibility timeout (7200 s), or the task would be delivered twice.
@shared_task(name=RUN_JOB, soft_time_limit=3300, time_limit=3600)
def run_csv_import_job_task(job_id):
    """Run one CSV import job of the task's tenant and return its final status."""
    job = run_import_job(job_id)
    return job.status if job else None


@shared_task(name="telemetry.fail_interrupted_csv_imports", soft_time_limit=120, time_limit=180)
def fail_interrupted_csv_imports_task():
    """Mark failed the running CSV import jobs of the task's tenant whose worker died."""
    failed = fail_interrupted_jobs()
    if failed:
        logger.warning("Schema %s: marked %d interrupted CSV import jobs failed", connection.schema_name, len(failed))
    return len(failed)
