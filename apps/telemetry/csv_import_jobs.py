"""CSV imports of historical readings run by a Celery task, for files too large to import inside a request.

start_import_job() streams the upload to a private file in
TELEMETRY_CSV_IMPORT_DIR/<schema>/ (mode 0600) and queues the task
``telemetry.run_csv_import_job`` when the job's row commits. The task calls
``import_readings`` and saves the report after every chunk, and deletes the
upload when the job ends, whether it succeeded or failed.

While a worker runs a job it holds a PostgreSQL session advisory lock of that
job. PostgreSQL releases the lock when the worker's connection ends, so a
RUNNING job whose lock is free belongs to a worker that died.
fail_interrupted_jobs() marks such jobs failed. It runs when the job's task
is delivered again (Celery sends a task back when its worker is lost),
whenever the API lists or shows a job, and in the task
``telemetry.fail_interrupted_csv_imports``.

A job is visible only to the user who requested it (`jobs_of`), like the
audit export jobs.
"""

import hashlib
import logging
import os
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psycopg
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.audit.choices import AuditAction
from apps.audit.services import Actor, record

from .csv_import import CsvImportError, decoded_lines, import_readings
from .models import REPORT_FIELDS, CsvImportJob, CsvImportStatus

logger = logging.getLogger(__name__)

RUN_JOB = "telemetry.run_csv_import_job"
# Bytes read from the upload and written to the stored file at a time.
COPY_CHUNK_BYTES = 1024 * 1024
class JobInterrupted(Exception):
    """The job's row is no longer RUNNING while its import goes on, because it was marked failed meanwhile."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def upload_folder(schema):
    """Return the folder of the stored uploads of tenant ``schema``."""
    return Path(django_settings.TELEMETRY_CSV_IMPORT_DIR) / schema


def jobs_of(user):
    """Return the import jobs that ``user`` requested, the only ones they may see."""
    if user is None or not user.is_authenticated:
        return CsvImportJob.objects.none()
    return CsvImportJob.objects.filter(requested_by=user)


def start_import_job(*, actor, chunks, source, dry_run=False, request=None):
    """Store the upload given as an iterable of byte strings, create and audit its job, and queue its task on commit.

    Returns the PENDING job. When storing the upload fails (a full disk, a
    client that disconnects), the partial file is deleted, no job is
    created and the error is raised. The import itself is audited by
    ``import_readings`` when the job runs.
    """
    schema = connection.schema_name
    folder = upload_folder(schema)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"upload-{uuid.uuid4().hex}.csv"
    try:
        size = _store_upload(path, chunks)
        with transaction.atomic():
            job = CsvImportJob.objects.create(
                requested_by=actor, source=source[:255], upload_path=str(path), upload_size=size, dry_run=dry_run,
            )
            record(
                AuditAction.OBJECT_CREATED, actor=actor, obj=job, request=request,
                detail={"source": job.source, "upload_size": size, "dry_run": dry_run},
            )
            transaction.on_commit(partial(_enqueue, schema, job.pk))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    logger.info("Schema %s: CSV import job %s of %r (%d bytes%s) requested by user %s",
                schema, job.pk, source, size, ", dry run" if dry_run else "", actor.pk)
    return job


def _store_upload(path, chunks):
    # O_EXCL and mode 0600: the file is new and readable by the portal's user alone.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    with os.fdopen(descriptor, "wb") as stored:
        for chunk in chunks:
            stored.write(chunk)
            size += len(chunk)
    return size


def _enqueue(schema, job_id):
    from .tasks import run_csv_import_job_task

    with schema_context(schema):
        try:
            run_csv_import_job_task.delay(job_id)
        except Exception as exc:
            # The job's row is committed by now, so without this it would stay pending with no task to run it.
            logger.exception("Schema %s: queueing CSV import job %s failed", schema, job_id)
            job = CsvImportJob.objects.get(pk=job_id)
            CsvImportJob.objects.filter(pk=job_id, status=CsvImportStatus.PENDING).update(
                status=CsvImportStatus.FAILED, finished_at=timezone.now(),
                error=f"Queueing the import failed ({type(exc).__name__}: {exc}"[:1500]
                + "). Check that the Celery broker runs, then send the file again.",
            )
            _delete_upload(schema, job)


def run_import_job(job_id):
    """Import the job's upload, saving the report after each chunk, then delete the upload; return the job.

    A job that another worker runs is left alone. A RUNNING job whose
    worker died is marked failed. A CsvImportError (an invalid header) only
    marks the job failed. Other errors mark it failed and are raised again,
    so Celery records them too.
    """
    schema = connection.schema_name
    with job_lock(schema, job_id) as locked:
        if not locked:
            logger.warning("Schema %s: CSV import job %s is being run by another worker; leaving it", schema, job_id)
            return CsvImportJob.objects.filter(pk=job_id).first()
        job = CsvImportJob.objects.filter(pk=job_id).first()
        if job is None:
            logger.warning("Schema %s: CSV import job %s not found; it was deleted before it ran", schema, job_id)
            return None
        if job.status == CsvImportStatus.RUNNING:
            # This worker holds the job's lock, so the worker that set RUNNING is gone.
            _fail_interrupted(schema, job)
            return _reloaded(job)
        if job.status != CsvImportStatus.PENDING:
            logger.warning("Schema %s: CSV import job %s is %s; not running it again", schema, job_id, job.status)
            return job
        CsvImportJob.objects.filter(pk=job_id).update(status=CsvImportStatus.RUNNING, started_at=timezone.now())
        logger.info("Schema %s: CSV import job %s of %r started", schema, job_id, job.source)
        try:
            _import(schema, job)
        finally:
            _delete_upload(schema, job)
    return _reloaded(job)


def _import(schema, job):
    actor = job.requested_by or Actor.system_job(RUN_JOB)
    try:
        with open(job.upload_path, "rb") as upload:
            report = import_readings(
                schema, decoded_lines(upload), actor=actor, source=job.source, dry_run=job.dry_run,
                progress=partial(_save_progress, job.pk), audit_detail={"job": job.pk},
            )
    except CsvImportError as exc:
        _finish(schema, job, CsvImportStatus.FAILED, error=str(exc))
        return
    except SoftTimeLimitExceeded:
        logger.exception("Schema %s: CSV import job %s stopped at its time limit", schema, job.pk)
        error = _stopped_message(job.pk, "did not finish within the task's time limit")
        _finish(schema, job, CsvImportStatus.FAILED, error=error)
        raise
    except JobInterrupted as exc:
        # The chunk before the interruption is stored, so its counts belong in the failed job's report.
        CsvImportJob.objects.filter(pk=job.pk).update(**_report_fields(exc.report))
        logger.error("Schema %s: CSV import job %s was marked failed while it ran; stopped it", schema, job.pk)
        return
    except Exception as exc:
        logger.exception("Schema %s: CSV import job %s failed", schema, job.pk)
        error = _stopped_message(job.pk, f"failed ({type(exc).__name__}: {exc})")
        _finish(schema, job, CsvImportStatus.FAILED, error=error)
        raise
    # An unreadable line stops the import early, so the job did not import the whole file.
    status = CsvImportStatus.FAILED if report.error else CsvImportStatus.SUCCEEDED
    _finish(schema, job, status, error=report.error, fields=_report_fields(report))


def _report_fields(report):
    values = report.as_dict()
    return {name: values[name] for name in REPORT_FIELDS}


def _save_progress(job_id, report):
    # Each update is autocommitted, so the API shows the progress while the import runs.
    if not CsvImportJob.objects.filter(pk=job_id, status=CsvImportStatus.RUNNING).update(**_report_fields(report)):
        raise JobInterrupted(f"CSV import job {job_id} is no longer running", report)


def _stopped_message(job_id, reason):
    job = CsvImportJob.objects.get(pk=job_id)
    return (
        f"The import {reason[:1500]} after {job.lines} data lines. The readings of the chunks counted here are "
        "stored; send the file again to import the rest, because readings already stored count as duplicates."
    )


def _finish(schema, job, status, *, error="", fields=None):
    updated = CsvImportJob.objects.filter(pk=job.pk, status=CsvImportStatus.RUNNING).update(
        status=status, error=error[:2000], finished_at=timezone.now(), **(fields or {})
    )
    if not updated:
        logger.error("Schema %s: CSV import job %s was no longer running when it ended as %s", schema, job.pk, status)
        return
    logger.info("Schema %s: CSV import job %s %s", schema, job.pk, status)


def _delete_upload(schema, job):
    try:
        Path(job.upload_path).unlink(missing_ok=True)
    except OSError:
        logger.exception("Schema %s: deleting the upload %s of CSV import job %s failed; delete it by hand",
                         schema, job.upload_path, job.pk)


def _reloaded(job):
    job.refresh_from_db()
    return job


def fail_interrupted_jobs(queryset=None):
    """Mark failed the RUNNING jobs of ``queryset`` (default: all) whose worker died; return their ids."""
    schema = connection.schema_name
    queryset = CsvImportJob.objects.all() if queryset is None else queryset
    failed = []
    for job in queryset.filter(status=CsvImportStatus.RUNNING):
        with job_lock(schema, job.pk) as locked:
            if not locked:
                continue
            # Read again under the lock, because the worker may have finished since the query.
            job = CsvImportJob.objects.filter(pk=job.pk, status=CsvImportStatus.RUNNING).first()
            if job is not None and _fail_interrupted(schema, job):
                failed.append(job.pk)
    return failed


def _fail_interrupted(schema, job):
    updated = CsvImportJob.objects.filter(pk=job.pk, status=CsvImportStatus.RUNNING).update(
        status=CsvImportStatus.FAILED, finished_at=timezone.now(),
        error=_stopped_message(job.pk, "stopped because its worker stopped (killed, or lost its lock connection to the database)"),
    )
    _delete_upload(schema, job)
    if updated:
        logger.error("Schema %s: CSV import job %s marked failed: its worker stopped after %d data lines",
                     schema, job.pk, job.lines)
    return bool(updated)


@contextmanager
def job_lock(schema, job_id):
    """Try to take the session advisory lock of one job; yield whether it was taken, and release it on exit.

    The lock is taken on a PostgreSQL connection of its own, held until exit. Ingest closes Django's
    connection when it outlives CONN_MAX_AGE or fails, which would free a lock taken there while the
    job still runs. A worker that dies closes this connection too, which frees the lock.
    """
    key = _lock_key(schema, job_id)
    parameters = {
        name: value for name, value in connection.get_connection_params().items()
        if name not in ("cursor_factory", "context", "prepare_threshold")
    }
    with psycopg.connect(**parameters, autocommit=True) as lock_connection:
        locked = lock_connection.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
        # Closing the connection at the end of the block releases the lock.
        yield locked


def _lock_key(schema, job_id):
    # A 64-bit key of schema and job. PostgreSQL keeps one-key and two-key locks (the audit chain's) apart.
    digest = hashlib.sha256(f"telemetry.csv_import_job:{schema}:{job_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
