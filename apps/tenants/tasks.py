from celery import shared_task

from .jobs import run_provisioning_job


@shared_task(name="tenants.provision", soft_time_limit=1800, time_limit=2400)
def provision_tenant_task(job_id):
    """Provision the tenant of a pending ProvisioningJob; sent from and run in the public schema."""
    job = run_provisioning_job(job_id)
    return job.status if job else None
