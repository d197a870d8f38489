"""Large exports from the audit page: a Celery task writes the file and manifest, and HTMX polls its progress."""

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.accounts.choices import Role
from apps.audit import export_jobs
from apps.audit.chain import verify_export
from apps.audit.choices import AuditAction, ExportStatus
from apps.audit.export_jobs import delete_old_exports, start_export_job, write_export_job
from apps.audit.models import AuditEntry, ExportJob
from apps.audit.services import Actor, record
from apps.audit.tasks import delete_old_exports_task
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import TENANT_DOMAINS, admin_of


@pytest.fixture
def export_dir(settings, tmp_path):
    settings.AUDIT_EXPORT_DIR = tmp_path
    return tmp_path


@pytest.fixture
def logins(alpha):
    """Seven login entries on alpha's chain, besides whatever it held before."""
    return [record(AuditAction.LOGIN, actor=Actor.system_job(f"job-{number}")) for number in range(7)]


def test_start_queues_job_and_audits(alpha_client, logins, django_capture_on_commit_callbacks):
    head = chain_head()

    with mock.patch("apps.audit.tasks.write_export_task.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            response = alpha_client.post("/audit/exports/", {"format": "csv", "action": "auth.login"},
                                         HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    job = ExportJob.objects.get()
    assert (job.format, job.through, job.status) == ("csv", head, ExportStatus.PENDING)
    assert job.filters == {"action": ["auth.login"]}
    assert job.entries_total == AuditEntry.objects.filter(action=AuditAction.LOGIN, sequence__lte=head).count()
    delay.assert_called_once_with(job.pk)
    [entry] = entries_after(head)
    assert entry.action == AuditAction.AUDIT_EXPORTED
    assert entry.detail == {"format": "csv", "filters": {"action": ["auth.login"]}, "through": head, "job": job.pk}
    assert f'hx-get="/audit/exports/{job.pk}/"' in response.text
    assert 'hx-trigger="every 1s"' in response.text


def test_job_writes_file_that_verifies(logins, export_dir):
    job = start_export_job(actor=admin_of("alpha"), export_format="json", filters={})

    finished = write_export_job(job.pk)

    assert finished.status == ExportStatus.DONE
    assert finished.entries_written == finished.entries_total == job.through
    folder = export_dir / "alpha"
    summary = verify_export(folder / finished.file_name, folder / finished.manifest_name)
    assert summary.startswith(f"OK: {job.through} entries of tenant alpha through entry {job.through}")
    assert finished.file_sha256 in summary


def test_progress_committed_per_batch(logins, export_dir):
    job = start_export_job(actor=admin_of("alpha"), export_format="csv", filters={"action": ["auth.login"]})
    seen = []
    real_encoder_for = export_jobs.encoder_for

    def spying_encoder_for(export_format):
        encoder = real_encoder_for(export_format)
        real_encode = encoder.encode

        def encode(records):
            seen.append(ExportJob.objects.get(pk=job.pk).entries_written)
            return real_encode(records)

        encoder.encode = encode
        return encoder

    with mock.patch.object(export_jobs, "BATCH_SIZE", 3), mock.patch.object(export_jobs, "encoder_for",
                                                                           spying_encoder_for):
        write_export_job(job.pk)

    assert job.entries_total == 7
    assert seen == [0, 3, 6]


def test_status_panel_shows_progress(alpha_client, alpha):
    job = ExportJob.objects.create(requested_by=admin_of("alpha"), format="csv", through=10, entries_total=10,
                                   entries_written=3, status=ExportStatus.RUNNING)

    response = alpha_client.get(f"/audit/exports/{job.pk}/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    assert '<progress max="100" value="30">' in response.text
    assert "3 of 10" in response.text
    assert 'hx-trigger="every 1s"' in response.text


def test_finished_job_stops_polling_and_downloads(alpha_client, logins, export_dir):
    job = write_export_job(start_export_job(actor=admin_of("alpha"), export_format="csv", filters={}).pk)

    panel = alpha_client.get(f"/audit/exports/{job.pk}/")
    file_response = alpha_client.get(f"/audit/exports/{job.pk}/file/")
    manifest_response = alpha_client.get(f"/audit/exports/{job.pk}/manifest/")

    assert "hx-trigger" not in panel.text
    assert job.file_sha256 in panel.text
    assert b"".join(file_response.streaming_content) == (export_dir / "alpha" / job.file_name).read_bytes()
    assert b'"file_sha256": "' + job.file_sha256.encode() + b'"' in b"".join(manifest_response.streaming_content)


def test_unfinished_job_not_downloadable(alpha_client, alpha):
    job = ExportJob.objects.create(requested_by=admin_of("alpha"), format="csv", through=1, entries_total=1)

    assert alpha_client.get(f"/audit/exports/{job.pk}/file/").status_code == 404


def test_job_written_once(logins, export_dir):
    job = start_export_job(actor=admin_of("alpha"), export_format="csv", filters={})
    first = write_export_job(job.pk)

    with mock.patch.object(export_jobs, "_write_file") as write_file:
        again = write_export_job(job.pk)

    write_file.assert_not_called()
    assert (again.status, again.file_sha256) == (ExportStatus.DONE, first.file_sha256)


def test_failed_job_records_error(logins, export_dir):
    job = start_export_job(actor=admin_of("alpha"), export_format="csv", filters={})

    with mock.patch.object(export_jobs, "_write_file", side_effect=OSError("disk full")), pytest.raises(OSError):
        write_export_job(job.pk)

    job.refresh_from_db()
    assert job.status == ExportStatus.FAILED
    assert job.error == "OSError: disk full"


def test_invalid_format_rejected(alpha_client):
    response = alpha_client.post("/audit/exports/", {"format": "xlsx"})

    assert response.status_code == 400
    assert "'xlsx' is invalid" in response.text
    assert not ExportJob.objects.exists()


def test_viewer_cannot_start_export(alpha):
    viewer = get_user_model().objects.create_user(username="vera", password="Vera-pass-4711", role=Role.VIEWER)
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(viewer)

    response = client.post("/audit/exports/", {"format": "csv"})

    assert response.status_code == 403
    assert not ExportJob.objects.exists()


def test_page_offers_background_export(alpha_client):
    response = alpha_client.get("/audit/", {"action": "auth.login"})

    assert 'hx-post="/audit/exports/"' in response.text
    assert '<input type="hidden" name="action" value="auth.login">' in response.text


def browser_of(role, username):
    user = get_user_model().objects.create_user(username=username, password="Export-pass-4711", role=role)
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(user)
    return user, client


def job_urls(job):
    return [f"/audit/exports/{job.pk}/", f"/audit/exports/{job.pk}/file/", f"/audit/exports/{job.pk}/manifest/"]


def test_job_visible_to_requester_only(logins, export_dir):
    owner, owner_client = browser_of(Role.AUDITOR, "aud-one")
    _other, other_client = browser_of(Role.AUDITOR, "aud-two")
    admin_client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    admin_client.force_login(admin_of("alpha"))
    job = write_export_job(start_export_job(actor=owner, export_format="csv", filters={}).pk)

    for url in job_urls(job):
        assert owner_client.get(url).status_code == 200, url
        assert other_client.get(url).status_code == 404, url
        assert admin_client.get(url).status_code == 404, url


def age(job, days):
    ExportJob.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(days=days))


def test_cleanup_deletes_old_files(logins, export_dir, alpha_client):
    old = write_export_job(start_export_job(actor=admin_of("alpha"), export_format="csv", filters={}).pk)
    recent = write_export_job(start_export_job(actor=admin_of("alpha"), export_format="json", filters={}).pk)
    age(old, 8)
    age(recent, 6)
    folder = export_dir / "alpha"
    start = chain_head()

    deleted = delete_old_exports(retention_days=7)

    assert deleted == [old.pk]
    assert not (folder / old.file_name).exists()
    assert not (folder / old.manifest_name).exists()
    assert (folder / recent.file_name).exists()
    assert (folder / recent.manifest_name).exists()
    old.refresh_from_db()
    assert old.status == ExportStatus.EXPIRED
    assert old.file_deleted_at is not None
    [entry] = entries_after(start)
    assert entry.action == AuditAction.AUDIT_EXPORT_DELETED
    assert (entry.object_type, entry.object_id) == ("audit.exportjob", str(old.pk))
    assert entry.detail["files"] == [old.file_name, old.manifest_name]
    assert entry.detail["file_sha256"] == old.file_sha256
    assert entry.detail["retention_days"] == 7
    assert alpha_client.get(f"/audit/exports/{old.pk}/file/").status_code == 404
    assert "deleted on" in alpha_client.get(f"/audit/exports/{old.pk}/").text


def test_cleanup_runs_once_per_job(logins, export_dir):
    job = write_export_job(start_export_job(actor=admin_of("alpha"), export_format="csv", filters={}).pk)
    age(job, 30)

    first = delete_old_exports(retention_days=7)
    start = chain_head()
    second = delete_old_exports(retention_days=7)

    assert first == [job.pk]
    assert second == []
    assert entries_after(start) == []


def test_cleanup_deletes_failed_partial_file(logins, export_dir):
    job = start_export_job(actor=admin_of("alpha"), export_format="csv", filters={})
    partial = export_dir / "alpha" / f"audit-alpha-export-{job.pk}-through-{job.through}.csv.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"sequence,time\n")
    ExportJob.objects.filter(pk=job.pk).update(status=ExportStatus.FAILED, error="OSError: disk full")
    age(job, 10)

    assert delete_old_exports(retention_days=7) == [job.pk]
    assert not partial.exists()


def test_cleanup_task_uses_setting(logins, export_dir, settings):
    settings.AUDIT_EXPORT_RETENTION_DAYS = 2
    job = write_export_job(start_export_job(actor=admin_of("alpha"), export_format="csv", filters={}).pk)
    age(job, 3)

    with schema_context("alpha"):
        deleted = delete_old_exports_task.apply().get()

    assert deleted == 1
    assert not (export_dir / "alpha" / job.file_name).exists()


@pytest.mark.parametrize("days", [0, -1, "7"])
def test_cleanup_rejects_invalid_retention(alpha, days):
    with pytest.raises(ImproperlyConfigured, match="THERMACORE_AUDIT_EXPORT_RETENTION_DAYS"):
        delete_old_exports(retention_days=days)
