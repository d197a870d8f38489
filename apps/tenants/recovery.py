"""Recovery of provisioning jobs and tenant exports whose Celery task was lost or whose worker died.

The periodic task ``tenants.recover_stuck_jobs`` (public schema) calls
recover_stuck_jobs(). A job or export still pending REQUEUE_GRACE after its
last send was most likely never delivered, e.g. because the broker was away,
so its task is sent again, at most MAX_QUEUE_ATTEMPTS times in all; after
that it is marked failed. One still running after its task's hard time limit
belongs to a worker that was killed, because Celery would have stopped the
task by then. It is marked failed, and an export's partial archive file is
deleted.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from .archive import ArchiveWriter
from .backup_models import ExportStatus, TenantExport
from .backup_tasks import export_tenant_task
from .choices import ProvisioningStatus
from .jobs import enqueue_export, enqueue_provisioning_job, fail_interrupted_job
from .models import ProvisioningJob
from .tasks import provision_tenant_task

logger = logging.getLogger(__name__)

# A pending job younger than this may simply wait for a busy worker, so it is left alone.
REQUEUE_GRACE = timedelta(minutes=10)
# Sends of one task in all, the first one included; a job still pending after the last is marked failed.
# NOTE: a job only queued behind a long-busy worker is also failed, after about MAX_QUEUE_ATTEMPTS * REQUEUE_GRACE.
MAX_QUEUE_ATTEMPTS = 3
# Slack for clock differences between the worker that started a task and the one that checks it.
TIME_LIMIT_MARGIN = timedelta(minutes=1)


@dataclass
class RecoveryReport:
    """Ids of the jobs and exports that one recovery run queued again or marked failed."""

    requeued_jobs: list = field(default_factory=list)
    failed_jobs: list = field(default_factory=list)
    requeued_exports: list = field(default_factory=list)
    failed_exports: list = field(default_factory=list)


def recover_stuck_jobs(now=None):
    """Queue lost pending jobs and exports again and fail those of dead workers; return a RecoveryReport."""
    now = now or timezone.now()
    report = RecoveryReport()
    _recover_pending_jobs(now, report)
    _recover_running_jobs(now, report)
    _recover_pending_exports(now, report)
    _recover_running_exports(now, report)
    return report


def _last_sent_before(created_field, cutoff):
    # A row that was never sent (queued_at empty) counts from its creation.
    return Q(queued_at__lt=cutoff) | Q(queued_at__isnull=True, **{f"{created_field}__lt": cutoff})


def _recover_pending(now, *, kind, pending, failed_status, created_field, enqueue, requeued, failed_ids, request_again):
    """Send ``pending`` rows (a queryset of one model) again, or mark them failed after the last send."""
    stuck = pending.filter(_last_sent_before(created_field, now - REQUEUE_GRACE))
    for row in stuck:
        if row.queue_attempts < MAX_QUEUE_ATTEMPTS:
            logger.warning("%s %s of schema=%s still pending after %d sends; sending it again",
                           kind, row.pk, row.schema_name, row.queue_attempts)
            enqueue(row.pk)
            requeued.append(row.pk)
            continue
        failed = pending.filter(pk=row.pk).update(
            status=failed_status, finished_at=now,
            error=(
                f"No worker took the request after {row.queue_attempts} sends to the Celery broker; "
                f"check that the broker and a worker run, then {request_again}."
            ),
        )
        if failed:
            logger.error("%s %s of schema=%s marked failed: still pending after %d sends",
                         kind, row.pk, row.schema_name, row.queue_attempts)
            failed_ids.append(row.pk)


def _recover_pending_jobs(now, report):
    _recover_pending(
        now, kind="Provisioning job", pending=ProvisioningJob.objects.filter(status=ProvisioningStatus.PENDING),
        failed_status=ProvisioningStatus.FAILED,
        created_field="requested_at", enqueue=enqueue_provisioning_job,
        requeued=report.requeued_jobs, failed_ids=report.failed_jobs, request_again="request the tenant again",
    )


def _recover_running_jobs(now, report):
    cutoff = now - timedelta(seconds=provision_tenant_task.time_limit) - TIME_LIMIT_MARGIN
    for job in ProvisioningJob.objects.filter(status=ProvisioningStatus.RUNNING, started_at__lt=cutoff):
        fail_interrupted_job(job)
        report.failed_jobs.append(job.pk)


def _recover_pending_exports(now, report):
    _recover_pending(
        now, kind="Tenant export", pending=TenantExport.objects.filter(status=ExportStatus.PENDING),
        failed_status=ExportStatus.FAILED,
        created_field="created_at", enqueue=enqueue_export,
        requeued=report.requeued_exports, failed_ids=report.failed_exports, request_again="request the export again",
    )


def _recover_running_exports(now, report):
    limit = timedelta(seconds=export_tenant_task.time_limit)
    cutoff = now - limit - TIME_LIMIT_MARGIN
    for export in TenantExport.objects.filter(status=ExportStatus.RUNNING, started_at__lt=cutoff):
        failed = TenantExport.objects.filter(pk=export.pk, status=ExportStatus.RUNNING).update(
            status=ExportStatus.FAILED, finished_at=now,
            error=(
                f"The worker stopped while exporting: the export was still running after the task's time limit "
                f"of {int(limit.total_seconds())} s. Request the export again."
            ),
        )
        if not failed:
            continue
        report.failed_exports.append(export.pk)
        partial_path = ArchiveWriter(export.file_path).temporary_path if export.file_path else None
        removed = False
        if partial_path is not None:
            try:
                partial_path.unlink()
                removed = True
            except FileNotFoundError:
                pass
            except OSError:
                logger.exception("Deleting the partial file %s of tenant export %s failed", partial_path, export.pk)
        logger.error("Tenant export %s of schema=%s marked failed: still running after the time limit of %d s; "
                     "partial file %s %s", export.pk, export.schema_name, int(limit.total_seconds()),
                     partial_path, "deleted" if removed else "not found")
