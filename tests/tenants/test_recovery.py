"""Recovery of stuck provisioning jobs and tenant exports: lost tasks are sent again, dead workers' jobs fail."""

import base64
import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_exists
from kombu import pools

from apps.tenants.backup_models import ExportStatus, TenantExport
from apps.tenants.backup_tasks import export_tenant_task
from apps.tenants.choices import ProvisioningStatus, TenantStatus
from apps.tenants.jobs import enqueue_provisioning_job
from apps.tenants.models import ProvisioningJob, Tenant
from apps.tenants.recovery import MAX_QUEUE_ATTEMPTS, REQUEUE_GRACE, recover_stuck_jobs
from apps.tenants.services import create_tenant_schema
from apps.tenants.tasks import provision_tenant_task, recover_stuck_jobs_task
from thermacore.celery import app

EXPORT_HARD_LIMIT = timedelta(seconds=export_tenant_task.time_limit)
PROVISION_HARD_LIMIT = timedelta(seconds=provision_tenant_task.time_limit)


@pytest.fixture
def broker():
    """The Redis database of the Celery broker, emptied before and after the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def sent_tasks(broker, queue="default"):
    """Return (task name, args, schema header) of every message waiting in a queue of the broker."""
    sent = []
    for raw in broker.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        headers = message["headers"]
        sent.append((headers["task"], tuple(body[0]), headers.get("_schema_name")))
    return sent


def reset_producer_pool():
    # Celery 5 caches its connection and producer pools, and kombu its producer pools per connection, with no
    # public call that rebuilds them all for a new broker URL.
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


def make_job(schema="delta", **fields):
    connection.set_schema_to_public()
    return ProvisioningJob.objects.create(
        schema_name=schema, name=schema.title(), domain=f"{schema}.localhost", admin_username="admin",
        admin_password_hash="md5$x$y", requested_by="platform-staff", **fields,
    )


def make_export(tenant_schema="alpha", **fields):
    connection.set_schema_to_public()
    tenant = Tenant.objects.get(schema_name=tenant_schema)
    return TenantExport.objects.create(
        tenant=tenant, schema_name=tenant.schema_name, tenant_name=tenant.name, requested_by="platform:staff", **fields
    )


def ago(delta):
    return timezone.now() - delta


# Pending provisioning jobs ----------------------------------------------------------------------------------------


def test_lost_pending_job_is_sent_again(db, broker):
    job = make_job(queue_attempts=1, queued_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    report = recover_stuck_jobs()

    job.refresh_from_db()
    assert report.requeued_jobs == [job.pk]
    assert job.status == ProvisioningStatus.PENDING
    assert job.queue_attempts == 2
    assert job.queued_at > ago(timedelta(minutes=1))
    assert sent_tasks(broker) == [("tenants.provision", (str(job.pk),), "public")]


def test_never_sent_job_counts_from_request(db, broker):
    job = make_job()
    ProvisioningJob.objects.filter(pk=job.pk).update(requested_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    report = recover_stuck_jobs()

    assert report.requeued_jobs == [job.pk]
    assert sent_tasks(broker) == [("tenants.provision", (str(job.pk),), "public")]


def test_recent_pending_job_is_left_alone(db, broker):
    job = make_job(queue_attempts=1, queued_at=ago(REQUEUE_GRACE - timedelta(minutes=2)))

    report = recover_stuck_jobs()

    job.refresh_from_db()
    assert report.requeued_jobs == []
    assert job.queue_attempts == 1
    assert sent_tasks(broker) == []


def test_job_fails_after_max_attempts(db, broker):
    job = make_job(queue_attempts=MAX_QUEUE_ATTEMPTS, queued_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    report = recover_stuck_jobs()

    job.refresh_from_db()
    assert report.failed_jobs == [job.pk]
    assert job.status == ProvisioningStatus.FAILED
    assert f"after {MAX_QUEUE_ATTEMPTS} sends" in job.error
    assert "request the tenant again" in job.error
    assert job.finished_at is not None
    assert sent_tasks(broker) == []


def test_enqueue_counts_attempts(db, broker):
    job = make_job()

    enqueue_provisioning_job(job.pk)

    job.refresh_from_db()
    assert job.queue_attempts == 1
    assert job.queued_at is not None
    assert sent_tasks(broker) == [("tenants.provision", (str(job.pk),), "public")]


def test_failed_enqueue_leaves_job_pending_for_recovery(db, broker):
    job = make_job()
    previous = app.conf.broker_url
    # A closed loopback port: the send fails as it does while the broker is down.
    app.conf.broker_url = "redis://127.0.0.1:22199/0"
    reset_producer_pool()
    try:
        enqueue_provisioning_job(job.pk)
    finally:
        app.conf.broker_url = previous
        reset_producer_pool()

    job.refresh_from_db()
    assert job.status == ProvisioningStatus.PENDING
    assert job.queue_attempts == 1
    assert sent_tasks(broker) == []

    report = recover_stuck_jobs(now=timezone.now() + REQUEUE_GRACE + timedelta(seconds=1))

    assert report.requeued_jobs == [job.pk]
    assert sent_tasks(broker) == [("tenants.provision", (str(job.pk),), "public")]


# Running provisioning jobs ----------------------------------------------------------------------------------------


def test_running_job_past_limit_fails(db, broker):
    job = make_job(status=ProvisioningStatus.RUNNING, started_at=ago(PROVISION_HARD_LIMIT + timedelta(minutes=2)))
    leftover = Tenant(schema_name="delta", name="Delta", status=TenantStatus.PROVISIONING)
    leftover.auto_create_schema = False
    leftover.save()
    create_tenant_schema(leftover)

    report = recover_stuck_jobs()

    job.refresh_from_db()
    assert report.failed_jobs == [job.pk]
    assert job.status == ProvisioningStatus.FAILED
    assert not Tenant.objects.filter(schema_name="delta").exists()
    assert not schema_exists("delta")


def test_running_job_within_time_limit_is_left_alone(db, broker):
    job = make_job(status=ProvisioningStatus.RUNNING, started_at=ago(PROVISION_HARD_LIMIT - timedelta(minutes=5)))

    report = recover_stuck_jobs()

    job.refresh_from_db()
    assert report.failed_jobs == []
    assert job.status == ProvisioningStatus.RUNNING


# Exports ------------------------------------------------------------------------------------------------------------


def test_lost_pending_export_is_sent_again(db, broker):
    export = make_export(queue_attempts=1, queued_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    report = recover_stuck_jobs()

    export.refresh_from_db()
    assert report.requeued_exports == [export.pk]
    assert export.queue_attempts == 2
    assert sent_tasks(broker) == [("tenants.export", (export.pk,), "public")]


def test_export_fails_after_max_attempts(db, broker):
    export = make_export(queue_attempts=MAX_QUEUE_ATTEMPTS, queued_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    report = recover_stuck_jobs()

    export.refresh_from_db()
    assert report.failed_exports == [export.pk]
    assert export.status == ExportStatus.FAILED
    assert "request the export again" in export.error
    assert sent_tasks(broker) == []


def test_killed_export_is_failed_and_partial_deleted(db, broker, tmp_path):
    archive = tmp_path / "alpha-20261204T2301Z-7.zip"
    partial = tmp_path / ".alpha-20261204T2301Z-7.zip.partial"
    partial.write_bytes(b"PK\x03\x04 half an archive")
    export = make_export(status=ExportStatus.RUNNING, file_path=str(archive),
                         started_at=ago(EXPORT_HARD_LIMIT + timedelta(minutes=2)))

    report = recover_stuck_jobs()

    export.refresh_from_db()
    assert report.failed_exports == [export.pk]
    assert export.status == ExportStatus.FAILED
    assert f"time limit of {export_tenant_task.time_limit} s" in export.error
    assert export.finished_at is not None
    assert not partial.exists()


def test_running_export_within_time_limit_keeps_partial(db, broker, tmp_path):
    archive = tmp_path / "alpha-20261204T2301Z-8.zip"
    partial = tmp_path / ".alpha-20261204T2301Z-8.zip.partial"
    partial.write_bytes(b"PK\x03\x04 still being written")
    export = make_export(status=ExportStatus.RUNNING, file_path=str(archive),
                         started_at=ago(EXPORT_HARD_LIMIT - timedelta(minutes=5)))

    report = recover_stuck_jobs()

    export.refresh_from_db()
    assert report.failed_exports == []
    assert export.status == ExportStatus.RUNNING
    assert partial.exists()


def test_killed_export_without_partial_file_is_failed(db, broker, tmp_path):
    export = make_export(status=ExportStatus.RUNNING, file_path=str(tmp_path / "gone.zip"),
                         started_at=ago(EXPORT_HARD_LIMIT + timedelta(minutes=2)))

    report = recover_stuck_jobs()

    export.refresh_from_db()
    assert report.failed_exports == [export.pk]
    assert export.status == ExportStatus.FAILED


# The periodic task ----------------------------------------------------------------------------------------------------


def test_task_recovers_in_public_schema(db, broker):
    job = make_job(queue_attempts=MAX_QUEUE_ATTEMPTS, queued_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    result = recover_stuck_jobs_task.apply(headers={"_schema_name": "public"})

    assert result.successful(), result.traceback
    assert result.result["failed_jobs"] == [str(job.pk)]
    job.refresh_from_db()
    assert job.status == ProvisioningStatus.FAILED


def test_task_sent_to_tenant_does_nothing(db, broker):
    job = make_job(queue_attempts=MAX_QUEUE_ATTEMPTS, queued_at=ago(REQUEUE_GRACE + timedelta(minutes=1)))

    result = recover_stuck_jobs_task.apply(headers={"_schema_name": "alpha"})

    assert result.successful(), result.traceback
    assert result.result is None
    connection.set_schema_to_public()
    job.refresh_from_db()
    assert job.status == ProvisioningStatus.PENDING


def test_beat_sends_task_to_public_schema_only():
    entry = settings.CELERY_BEAT_SCHEDULE["recover-stuck-tenant-jobs"]

    assert entry["task"] == "tenants.recover_stuck_jobs"
    assert entry["tenant_schemas"] == ["public"]
    assert entry["task"] in app.tasks
