"""Exports written to files by a Celery task, with progress, for the audit page's large exports.

The file and its manifest land in AUDIT_EXPORT_DIR/<schema>/; the manifest
is the same as the one of the streamed export with the same filters and
`through`, so the file verifies offline in the same way.

A job is visible only to the user who requested it (`jobs_of`). The hourly
task `audit.delete_old_exports` deletes files older than
AUDIT_EXPORT_RETENTION_DAYS and records each deletion in the audit chain.
"""

import hashlib
import json
import logging
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.http import QueryDict
from django.utils import timezone
from django_tenants.utils import schema_context

from .choices import AuditAction, ExportStatus
from .exports import BATCH_SIZE, ExportFormat, encoder_for, export_record, manifest_for_file, tenant_restores
from .filters import AuditEntryFilter
from .models import AuditEntry, ExportJob
from .services import Actor, record

logger = logging.getLogger(__name__)

CLEANUP_JOB = "audit.delete_old_exports"


def export_folder(schema):
    return Path(django_settings.AUDIT_EXPORT_DIR) / schema


def export_file_name(schema, job):
    return f"audit-{schema}-export-{job.pk}-through-{job.through}.{job.format}"


def jobs_of(user):
    """Return the export jobs `user` may see and download: the ones they requested.

    Admins and auditors both read the whole trail, so sharing files would
    grant nothing new, but it would show other users which entries an
    auditor is looking into.
    """
    if user is None or not user.is_authenticated:
        return ExportJob.objects.none()
    return ExportJob.objects.filter(requested_by=user)


def start_export_job(*, actor, export_format, filters, request=None):
    """Create an export job for the entries matching `filters` up to the current head, audit it, and queue it."""
    if export_format not in ExportFormat.ALL:
        raise ValueError(f"Export format {export_format!r} is invalid; use one of {', '.join(ExportFormat.ALL)}.")
    schema = connection.schema_name
    with transaction.atomic():
        through = AuditEntry.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
        queryset = filtered_queryset(filters).filter(sequence__lte=through)
        job = ExportJob.objects.create(
            requested_by=actor, format=export_format, filters=filters, through=through,
            entries_total=queryset.count(),
        )
        record(
            AuditAction.AUDIT_EXPORTED, actor=actor, request=request,
            detail={"format": export_format, "filters": filters, "through": through, "job": job.pk},
        )
        transaction.on_commit(partial(_enqueue, schema, job.pk))
    logger.info("Schema %s: audit export job %s (%s, %d entries) requested by user %s",
                schema, job.pk, export_format, job.entries_total, actor.pk)
    return job


def _enqueue(schema, job_id):
    from .tasks import write_export_task

    with schema_context(schema):
        write_export_task.delay(job_id)


def filtered_queryset(filters):
    query = QueryDict(mutable=True)
    for name, values in filters.items():
        query.setlist(name, values)
    filterset = AuditEntryFilter(query, queryset=AuditEntry.objects.all())
    if not filterset.is_valid():
        raise ValueError(f"Export filters {filters!r} are invalid: {filterset.errors.as_text()}")
    return filterset.qs


def write_export_job(job_id):
    """Write the job's file batch by batch, committing progress after each batch, then its manifest.

    Returns the job. A job that is not pending (already taken by another worker) is left alone.
    """
    schema = connection.schema_name
    if not ExportJob.objects.filter(pk=job_id, status=ExportStatus.PENDING).update(status=ExportStatus.RUNNING):
        logger.warning("Schema %s: audit export job %s is not pending; not writing it again", schema, job_id)
        return ExportJob.objects.filter(pk=job_id).first()
    job = ExportJob.objects.get(pk=job_id)
    folder = export_folder(schema)
    folder.mkdir(parents=True, exist_ok=True)
    file_name = export_file_name(schema, job)
    path = folder / file_name
    try:
        queryset = filtered_queryset(job.filters).filter(sequence__lte=job.through)
        sha256, size = _write_file(job, schema, queryset, path)
        manifest = manifest_for_file(
            schema, queryset, job.format, filters=job.filters, through=job.through,
            chain_head=AuditEntry.objects.filter(sequence=job.through).first(), file_sha256=sha256, file_size=size,
        )
        (folder / f"{file_name}.manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except Exception as exc:
        logger.exception("Schema %s: audit export job %s failed", schema, job.pk)
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        raise
    ExportJob.objects.filter(pk=job.pk).update(
        status=ExportStatus.DONE, file_name=file_name, file_sha256=sha256, entries_written=job.entries_total,
        finished_at=timezone.now(),
    )
    logger.info("Schema %s: audit export job %s wrote %s (%d bytes)", schema, job.pk, path, size)
    job.refresh_from_db()
    return job


def _write_file(job, schema, queryset, path):
    digest = hashlib.sha256()
    size = 0
    written = 0
    encoder = encoder_for(job.format)
    restores = tenant_restores(schema)
    partial_path = path.with_name(path.name + ".partial")
    with open(partial_path, "wb") as export:

        def write(chunk):
            nonlocal size
            digest.update(chunk)
            export.write(chunk)
            size += len(chunk)

        write(encoder.start())
        after = 0
        while batch := list(queryset.filter(sequence__gt=after).order_by("sequence")[:BATCH_SIZE]):
            write(encoder.encode([export_record(entry, schema, restores) for entry in batch]))
            after = batch[-1].sequence
            written += len(batch)
            # Progress is its own autocommitted update, so the audit page shows it while the file grows.
            ExportJob.objects.filter(pk=job.pk).update(entries_written=min(written, job.entries_total))
        write(encoder.end())
    partial_path.replace(path)
    return digest.hexdigest(), size


def delete_old_exports(now=None, *, retention_days=None):
    """Delete the files of finished and failed export jobs older than the retention; return the jobs deleted.

    Each deletion is an `audit.export_deleted` entry, written in the
    transaction that marks the job expired. The files go before that
    transaction commits: when deleting fails, the job stays as it was and
    the next run tries again.
    """
    now = now or timezone.now()
    days = django_settings.AUDIT_EXPORT_RETENTION_DAYS if retention_days is None else retention_days
    if not isinstance(days, int) or days < 1:
        raise ImproperlyConfigured(
            f"Audit export retention of {days!r} days is invalid; set THERMACORE_AUDIT_EXPORT_RETENTION_DAYS "
            "to a whole number of 1 or more."
        )
    cutoff = now - timedelta(days=days)
    schema = connection.schema_name
    due = ExportJob.objects.filter(
        status__in=[ExportStatus.DONE, ExportStatus.FAILED], finished_at__lte=cutoff
    ).order_by("pk")
    deleted = []
    for job_id in list(due.values_list("pk", flat=True)):
        try:
            with transaction.atomic():
                job = ExportJob.objects.select_for_update().filter(
                    pk=job_id, status__in=[ExportStatus.DONE, ExportStatus.FAILED]
                ).first()
                if job is None:
                    continue
                paths = _job_files(schema, job)
                ExportJob.objects.filter(pk=job.pk).update(status=ExportStatus.EXPIRED, file_deleted_at=now)
                record(
                    AuditAction.AUDIT_EXPORT_DELETED,
                    actor=Actor.system_job(CLEANUP_JOB),
                    obj=job,
                    detail={
                        "job": job.pk,
                        "status": job.status,
                        "files": [path.name for path in paths if path.exists()],
                        "file_sha256": job.file_sha256,
                        "finished_at": job.finished_at.isoformat(),
                        "retention_days": days,
                        "requested_by": job.requested_by_id,
                    },
                )
                for path in paths:
                    path.unlink(missing_ok=True)
        except OSError:
            logger.exception("Schema %s: deleting the files of audit export job %s failed; retrying on the next run",
                             schema, job_id)
            continue
        deleted.append(job_id)
        logger.info("Schema %s: deleted the files of audit export job %s (older than %d days)", schema, job_id, days)
    return deleted


def _job_files(schema, job):
    folder = export_folder(schema)
    name = job.file_name or export_file_name(schema, job)
    return [folder / name, folder / f"{name}.manifest.json", folder / f"{name}.partial"]
