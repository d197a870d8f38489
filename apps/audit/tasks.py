import logging

from celery import shared_task
from django.db import connection

from .export_jobs import delete_old_exports, write_export_job
from .retention import apply_retention

logger = logging.getLogger(__name__)


@shared_task(name="audit.apply_retention", soft_time_limit=3000, time_limit=3600)
def apply_retention_task():
    """Archive and drop the entries of the task's tenant that are older than its retention_days."""
    entry = apply_retention()
    if entry is None:
        logger.debug("Schema %s: no audit entries due for retention", connection.schema_name)
        return None
    return entry.sequence


@shared_task(name="audit.write_export", soft_time_limit=3000, time_limit=3600)
def write_export_task(job_id):
    """Write the file and manifest of one audit export job of the task's tenant."""
    job = write_export_job(job_id)
    return job.status if job else None


@shared_task(name="audit.delete_old_exports", soft_time_limit=600, time_limit=900)
def delete_old_exports_task():
    """Delete the audit export files of the task's tenant that are older than AUDIT_EXPORT_RETENTION_DAYS."""
    deleted = delete_old_exports()
    if deleted:
        logger.info("Schema %s: deleted %d old audit export files", connection.schema_name, len(deleted))
    return len(deleted)
