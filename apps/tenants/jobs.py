"""Provisioning requests of the platform API, carried out by a Celery worker with progress the client polls."""

import logging
from functools import partial

from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.audit.choices import ActorType
from apps.audit.services import Actor, record_tenant_lifecycle

from .choices import ProvisioningStatus, ProvisioningStep, TenantStatus
from .models import ProvisioningJob, Tenant
from .services import check_provisioning_request, discard_tenant, provision_tenant

logger = logging.getLogger(__name__)


class ProvisioningConflict(ValueError):
    """The schema name or domain is taken by a tenant or by an unfinished provisioning request."""


def request_provisioning(
    *, actor, schema_name, name, domain, admin_username, admin_password, admin_email="", time_zone="UTC",
    tenant_settings=None,
):
    """Validate a provisioning request, store it as a pending job and queue the task; return the job.

    Everything that can be checked before the schema exists is checked here,
    so an invalid request fails at once (ValidationError, or
    ProvisioningConflict for a taken name) and no job is created.
    """
    try:
        check_provisioning_request(
            schema_name=schema_name, name=name, domain=domain, admin_username=admin_username,
            admin_password=admin_password, admin_email=admin_email, time_zone=time_zone,
            tenant_settings=tenant_settings,
        )
    except ValueError as exc:
        raise ProvisioningConflict(str(exc)) from None
    try:
        with transaction.atomic():
            job = ProvisioningJob.objects.create(
                schema_name=schema_name, name=name, domain=domain, time_zone=time_zone,
                admin_username=admin_username, admin_email=admin_email,
                admin_password_hash=make_password(admin_password),
                tenant_settings=tenant_settings or {}, requested_by=actor.get_username(),
            )
            transaction.on_commit(partial(enqueue_provisioning_job, job.pk))
    except IntegrityError:
        raise ProvisioningConflict(
            f"Tenant schema {schema_name!r} or domain {domain!r} is already being provisioned; "
            "wait for that request to finish or choose another name."
        ) from None
    logger.info("Provisioning job %s for schema=%s domain=%s requested by platform user %s",
                job.pk, schema_name, domain, actor.get_username())
    return job


def enqueue_provisioning_job(job_id):
    """Send the task of a pending provisioning job to the broker, counting the attempt; a failed send is logged."""
    from .tasks import provision_tenant_task

    ProvisioningJob.objects.filter(pk=job_id).update(queue_attempts=F("queue_attempts") + 1, queued_at=timezone.now())
    try:
        provision_tenant_task.delay(str(job_id))
    except Exception:
        # The job stays pending, and the task tenants.recover_stuck_jobs queues it again after a grace period.
        logger.exception("Queueing provisioning job %s failed; it stays pending", job_id)


def run_provisioning_job(job_id):
    """Provision the tenant of a pending job, recording each step on the job; return the job.

    A job that is not pending was taken by another worker or has finished,
    and is left alone. A job found running belongs to a worker that died
    mid-way (the task is delivered again only then), so its half-provisioned
    tenant is dropped and the job marked failed, and the client may request
    the tenant again.
    """
    started = ProvisioningJob.objects.filter(pk=job_id, status=ProvisioningStatus.PENDING).update(
        status=ProvisioningStatus.RUNNING, started_at=timezone.now()
    )
    job = ProvisioningJob.objects.filter(pk=job_id).first()
    if job is None:
        logger.warning("Provisioning job %s does not exist; nothing to do", job_id)
        return None
    if not started:
        if job.status == ProvisioningStatus.RUNNING:
            fail_interrupted_job(job)
        else:
            logger.info("Provisioning job %s is already %s; not running it again", job_id, job.status)
        return job

    logger.info("Provisioning job %s started for schema=%s", job.pk, job.schema_name)
    try:
        tenant = provision_tenant(
            schema_name=job.schema_name, name=job.name, domain=job.domain,
            admin_username=job.admin_username, admin_password_hash=job.admin_password_hash,
            admin_email=job.admin_email, time_zone=job.time_zone, tenant_settings=job.tenant_settings,
            actor=_platform_actor(job), on_step=partial(_save_step, job),
        )
    except Exception as exc:
        # provision_tenant has already dropped the schema; the job keeps the step it failed in.
        job.status = ProvisioningStatus.FAILED
        job.error = f"{type(exc).__name__}: {exc}"[:2000]
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error", "finished_at"])
        logger.exception("Provisioning job %s for schema=%s failed", job.pk, job.schema_name)
        return job

    job.tenant = tenant
    job.status = ProvisioningStatus.SUCCEEDED
    job.step = ProvisioningStep.DONE
    job.finished_at = timezone.now()
    job.save(update_fields=["tenant", "status", "step", "finished_at"])
    logger.info("Provisioning job %s finished: tenant schema=%s is active", job.pk, tenant.schema_name)
    return job


def _save_step(job, step):
    # Saved outside any transaction, so a polling client sees each step as it begins.
    job.step = step
    job.save(update_fields=["step"])


def _platform_actor(job):
    return Actor(ActorType.USER, "", f"platform:{job.requested_by}")


def fail_interrupted_job(job):
    leftover = Tenant.objects.filter(schema_name=job.schema_name, status=TenantStatus.PROVISIONING).first()
    if leftover is not None:
        logger.warning("Provisioning job %s was interrupted; dropping the half-provisioned schema %s",
                       job.pk, job.schema_name)
        discard_tenant(leftover)
    job.status = ProvisioningStatus.FAILED
    job.error = "The worker stopped while provisioning; nothing was kept. Request the tenant again."
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "finished_at"])
    logger.warning("Provisioning job %s for schema=%s marked failed after an interrupted run", job.pk, job.schema_name)


def request_export(tenant, *, actor):
    """Create a pending export of the tenant, record the request in its audit trail and queue the export task.

    Returns the TenantExport, whose progress the client polls. The export
    itself (apps.tenants.backup.export_tenant) runs in a Celery worker.
    """
    from .backup_models import TenantExport

    if tenant.status == TenantStatus.PROVISIONING:
        raise ProvisioningConflict(f"Tenant {tenant.schema_name!r} is still being provisioned; export it afterwards.")
    requested_by = f"platform:{actor.get_username()}"
    with transaction.atomic():
        export = TenantExport.objects.create(
            tenant=tenant, schema_name=tenant.schema_name, tenant_name=tenant.name, requested_by=requested_by
        )
        record_tenant_lifecycle(tenant, "export_requested", actor=actor, detail={"export_id": export.pk})
        transaction.on_commit(partial(enqueue_export, export.pk))
    logger.info("Export %s of tenant schema=%s requested by %s", export.pk, tenant.schema_name, requested_by)
    return export


def enqueue_export(export_id):
    """Send the task of a pending export to the broker, counting the attempt; a failed send is logged."""
    from .backup_models import TenantExport
    from .backup_tasks import export_tenant_task

    TenantExport.objects.filter(pk=export_id).update(queue_attempts=F("queue_attempts") + 1, queued_at=timezone.now())
    try:
        export_tenant_task.delay(export_id)
    except Exception:
        # The export stays pending, and the task tenants.recover_stuck_jobs queues it again after a grace period.
        logger.exception("Queueing tenant export %s failed; it stays pending", export_id)
