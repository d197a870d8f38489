import logging

from celery import shared_task
from django.db import connection
from django_tenants.utils import get_public_schema_name

from .jobs import run_provisioning_job

logger = logging.getLogger(__name__)


@shared_task(name="tenants.provision", soft_time_limit=1800, time_limit=2400)
def provision_tenant_task(job_id):
    """Provision the tenant of a pending ProvisioningJob; sent from and run in the public schema."""
    job = run_provisioning_job(job_id)
    return job.status if job else None


@shared_task(name="tenants.recover_stuck_jobs", soft_time_limit=240, time_limit=300)
def recover_stuck_jobs_task():
    """Queue lost provisioning jobs and exports again and fail those of dead workers; runs in the public schema."""
    from .recovery import recover_stuck_jobs

    if connection.schema_name != get_public_schema_name():
        # Jobs and exports are stored in the public schema, so a copy sent to a tenant has nothing to do.
        logger.warning("Task tenants.recover_stuck_jobs sent to schema %s skipped; it runs in the public schema only",
                       connection.schema_name)
        return None
    report = recover_stuck_jobs()
    return {
        "requeued_jobs": [str(pk) for pk in report.requeued_jobs],
        "failed_jobs": [str(pk) for pk in report.failed_jobs],
        "requeued_exports": report.requeued_exports,
        "failed_exports": report.failed_exports,
    }
