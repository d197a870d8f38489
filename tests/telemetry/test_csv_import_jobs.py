"""CSV imports as background jobs: a Celery task imports the stored upload, and the API shows its progress."""

import io
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import psycopg
import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test import Client
from django_tenants.utils import schema_context
from kombu.exceptions import OperationalError
from rest_framework.exceptions import APIException
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.api.csv_import import _buffered_within
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.sensors.quality import Quality
from apps.telemetry import csv_import_jobs
from apps.telemetry.csv_import_jobs import _lock_key, fail_interrupted_jobs, start_import_job
from apps.telemetry.ingest import ingest as real_ingest
from apps.telemetry.models import CsvImportJob, CsvImportStatus, Reading
from apps.telemetry.tasks import fail_interrupted_csv_imports_task, run_csv_import_job_task
from tests.conftest import TENANT_DOMAINS, access_token_for, admin_of
from tests.factories import SensorFactory, SiteFactory, UnitFactory

JOBS_URL = "/api/v1/ingest/csv/jobs/"
SYNC_URL = "/api/v1/ingest/csv/"
START = datetime(2026, 1, 5, tzinfo=UTC)


@pytest.fixture
def upload_dir(settings, tmp_path):
    settings.TELEMETRY_CSV_IMPORT_DIR = tmp_path / "uploads"
    return tmp_path / "uploads"


@pytest.fixture
def berlin_sensor(alpha):
    unit = UnitFactory(site=SiteFactory(time_zone="Europe/Berlin"))
    return SensorFactory(unit=unit, minimum=0, maximum=200)


@pytest.fixture
def utc_sensor(alpha):
    return SensorFactory(minimum=0, maximum=200)


def api_client(schema, user):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS[schema])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(schema, user)}")
    return client


def queue_job(client, body, django_capture_on_commit_callbacks, *, query="", multipart_name=None, **form):
    """Post ``body`` to the jobs endpoint with the task's delay captured; return the response and the job."""
    with mock.patch("apps.telemetry.tasks.run_csv_import_job_task.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            if multipart_name is None:
                response = client.post(JOBS_URL + query, body, content_type="text/csv")
            else:
                upload = SimpleUploadedFile(multipart_name, body.encode())
                response = client.post(JOBS_URL + query, {"file": upload, **form}, format="multipart")
    assert response.status_code == 202, response.content
    job = CsvImportJob.objects.get(pk=response.data["id"])
    delay.assert_called_once_with(job.pk)
    return response, job


def run_job(job):
    with schema_context("alpha"):
        status = run_csv_import_job_task.apply(args=[job.pk]).get()
    job.refresh_from_db()
    return status


def stored(sensor):
    return list(Reading.objects.filter(sensor=sensor).order_by("time").values_list("time", "value", "quality"))


def long_file(sensor, count, *, start=START):
    lines = [f"{(start + timedelta(seconds=second)).isoformat()},{sensor.id},{second % 100}" for second in range(count)]
    return "time,sensor,value\n" + "\n".join(lines) + "\n"


def test_job_counts_equal_synchronous_import(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    body = (
        "time,sensor,value\n"
        f"2026-01-05T10:00:00Z,{utc_sensor.id},1\n"
        f"2026-01-05T10:00:00Z,{utc_sensor.id},2\n"
        f"2026-01-05T10:00:10Z,{utc_sensor.id},warm\n"
        "2026-01-05T10:00:20Z,999999,3\n"
        f"2026-01-05T10:00:30Z,{utc_sensor.id},4\n"
    )
    savepoint = transaction.savepoint()
    synchronous = alpha_api.post(SYNC_URL, body, content_type="text/csv").data
    transaction.savepoint_rollback(savepoint)
    assert stored(utc_sensor) == []

    response, job = queue_job(alpha_api, body, django_capture_on_commit_callbacks)
    assert response.data["status"] == CsvImportStatus.PENDING
    assert response["Location"] == f"http://alpha.localhost{JOBS_URL}{job.pk}/"
    assert run_job(job) == CsvImportStatus.SUCCEEDED

    polled = alpha_api.get(response["Location"])
    assert polled.status_code == 200
    assert polled.data["status"] == CsvImportStatus.SUCCEEDED
    assert polled.data["report"] == synchronous
    assert (synchronous["accepted"], synchronous["duplicates"], synchronous["rejected"]) == (2, 1, 2)
    assert polled.data["lines_read"] == 5
    assert polled.data["requested_by"] == "admin"
    assert polled.data["source"] == "request body"
    assert job.started_at is not None
    assert job.finished_at >= job.started_at
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).latest("sequence")
    assert entry.actor_name == "admin"
    assert entry.detail["job"] == job.pk
    assert entry.detail["accepted"] == 2


def test_job_converts_dst_local_times(alpha_api, berlin_sensor, upload_dir, django_capture_on_commit_callbacks):
    body = (
        "time,sensor,value,fold\n"
        f"2026-10-25T02:30:00,{berlin_sensor.id},1,0\n"
        f"2026-10-25T02:30:00,{berlin_sensor.id},2,1\n"
        f"2026-10-25T02:40:00,{berlin_sensor.id},3,\n"
        f"2026-03-29T02:30:00,{berlin_sensor.id},4,\n"
    )
    _response, job = queue_job(alpha_api, body, django_capture_on_commit_callbacks, multipart_name="berlin.csv")

    run_job(job)

    assert job.status == CsvImportStatus.SUCCEEDED
    assert job.source == "berlin.csv"
    assert job.accepted == 2
    assert job.rejected == 2
    assert stored(berlin_sensor) == [
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), 1.0, Quality.GOOD),
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), 2.0, Quality.GOOD),
    ]
    reasons = {rejection["line"]: rejection["reason"] for rejection in job.rejections}
    assert "ambiguous in Europe/Berlin" in reasons[4]
    assert "does not exist in Europe/Berlin" in reasons[5]


def test_job_lists_rejections_with_lines(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    body = (
        "time,sensor,value\n"
        f"2026-01-05T10:00:00Z,{utc_sensor.id},1\n"
        "\n"
        f"2026-01-05T10:00:10Z,{utc_sensor.id},x\n"
        "2026-01-05T10:00:20Z,abc,3\n"
        f"yesterday,{utc_sensor.id},4\n"
    )
    _response, job = queue_job(alpha_api, body, django_capture_on_commit_callbacks)

    run_job(job)

    assert job.status == CsvImportStatus.SUCCEEDED
    assert [(rejection["line"], rejection["sensor"]) for rejection in job.rejections] == [
        (4, str(utc_sensor.id)), (5, "abc"), (6, str(utc_sensor.id))
    ]
    assert "Value 'x' is not a number" in job.rejections[0]["reason"]
    assert job.unlisted_rejections == 0


def test_dry_run_job_stores_nothing(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    body = long_file(utc_sensor, 3)
    _response, job = queue_job(alpha_api, body, django_capture_on_commit_callbacks, query="?dry_run=true")

    run_job(job)

    assert job.dry_run is True
    assert job.status == CsvImportStatus.SUCCEEDED
    assert job.accepted == 3
    assert stored(utc_sensor) == []
    assert not AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).exists()


def test_dry_run_as_form_field(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    _response, job = queue_job(
        alpha_api, long_file(utc_sensor, 1), django_capture_on_commit_callbacks, multipart_name="a.csv", dry_run="1"
    )

    assert job.dry_run is True


def test_invalid_dry_run_is_400(alpha_api, upload_dir):
    response = alpha_api.post(JOBS_URL + "?dry_run=perhaps", "time,sensor,value\n", content_type="text/csv")

    assert response.status_code == 400
    assert "'perhaps' is not a boolean" in str(response.data["dry_run"])
    assert not CsvImportJob.objects.exists()


def test_invalid_header_fails_job(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    _response, job = queue_job(alpha_api, "when,what\n1,2\n", django_capture_on_commit_callbacks)

    assert run_job(job) == CsvImportStatus.FAILED

    polled = alpha_api.get(f"{JOBS_URL}{job.pk}/").data
    assert polled["status"] == CsvImportStatus.FAILED
    assert "no time column" in polled["report"]["error"]
    assert job.finished_at is not None
    assert not Path(job.upload_path).exists()


def test_unreadable_line_fails_job(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    # Beyond the first 8 KiB, where a text decoder working in blocks would lose the lines before the bad bytes.
    body = long_file(utc_sensor, 1000).encode() + b"\xff\xfe,1,2\n"
    with mock.patch("apps.telemetry.tasks.run_csv_import_job_task.delay"):
        with django_capture_on_commit_callbacks(execute=True):
            response = alpha_api.post(JOBS_URL, body, content_type="text/csv")
    job = CsvImportJob.objects.get(pk=response.data["id"])

    run_job(job)

    assert job.status == CsvImportStatus.FAILED
    assert job.error.startswith("Line 1002 cannot be read (")
    assert job.accepted == 1000
    assert len(stored(utc_sensor)) == 1000


def test_crash_fails_job_and_keeps_stored(utc_sensor, upload_dir, caplog):
    job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(utc_sensor, 12_000).encode()], source="big.csv")
    calls = []

    def failing_ingest(schema, samples, **options):
        calls.append(len(samples))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_ingest(schema, samples, **options)

    with mock.patch("apps.telemetry.csv_import.ingest", failing_ingest), pytest.raises(RuntimeError):
        run_job(job)

    job.refresh_from_db()
    assert job.status == CsvImportStatus.FAILED
    assert "failed (RuntimeError: disk full) after 5000 data lines" in job.error
    assert job.accepted == 5000
    assert len(stored(utc_sensor)) == 5000
    assert not Path(job.upload_path).exists()
    assert f"CSV import job {job.pk} failed" in caplog.text
    assert "Schema alpha" in caplog.text


def test_progress_saved_per_chunk(utc_sensor, upload_dir):
    job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(utc_sensor, 12_000).encode()], source="big.csv")
    seen = []
    real_save = csv_import_jobs._save_progress

    def spying_save(job_id, report):
        real_save(job_id, report)
        seen.append(CsvImportJob.objects.values_list("status", "lines", "accepted").get(pk=job_id))

    with mock.patch.object(csv_import_jobs, "_save_progress", spying_save):
        run_job(job)

    running = CsvImportStatus.RUNNING
    assert seen == [(running, 5000, 5000), (running, 10_000, 10_000), (running, 12_000, 12_000)]
    assert (job.status, job.lines, job.chunks, job.accepted) == (CsvImportStatus.SUCCEEDED, 12_000, 3, 12_000)


def test_upload_private_then_deleted(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    _response, job = queue_job(alpha_api, long_file(utc_sensor, 2), django_capture_on_commit_callbacks)
    path = Path(job.upload_path)

    assert path.parent == upload_dir / "alpha"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert job.upload_size == path.stat().st_size == len(long_file(utc_sensor, 2).encode())

    run_job(job)

    assert job.status == CsvImportStatus.SUCCEEDED
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_queue_failure_fails_job(alpha_api, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    refused = OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    with mock.patch("apps.telemetry.tasks.run_csv_import_job_task.delay", side_effect=refused):
        with django_capture_on_commit_callbacks(execute=True):
            response = alpha_api.post(JOBS_URL, long_file(utc_sensor, 1), content_type="text/csv")

    assert response.status_code == 202
    job = CsvImportJob.objects.get(pk=response.data["id"])
    assert job.status == CsvImportStatus.FAILED
    assert "Queueing the import failed (OperationalError: Error 111" in job.error
    assert "Check that the Celery broker runs" in job.error
    assert not Path(job.upload_path).exists()


def test_job_runs_once(utc_sensor, upload_dir):
    job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(utc_sensor, 2).encode()], source="a.csv")
    run_job(job)

    with mock.patch.object(csv_import_jobs, "import_readings") as import_readings:
        again = run_job(job)

    import_readings.assert_not_called()
    assert again == CsvImportStatus.SUCCEEDED


def test_other_users_job_is_404(alpha_api, alpha, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    _response, job = queue_job(alpha_api, long_file(utc_sensor, 1), django_capture_on_commit_callbacks)
    other_admin = get_user_model().objects.create_user("csv-admin-2", password="Other-admin-4711", role=Role.ADMIN)
    other = api_client("alpha", other_admin)

    assert other.get(f"{JOBS_URL}{job.pk}/").status_code == 404
    assert other.get(JOBS_URL).data["results"] == []
    assert [item["id"] for item in alpha_api.get(JOBS_URL).data["results"]] == [job.pk]


def test_other_tenants_job_is_404(alpha_api, beta, utc_sensor, upload_dir, django_capture_on_commit_callbacks):
    _response, job = queue_job(alpha_api, long_file(utc_sensor, 1), django_capture_on_commit_callbacks)
    beta_api = api_client("beta", admin_of("beta"))

    assert beta_api.get(f"{JOBS_URL}{job.pk}/").status_code == 404
    assert beta_api.get(JOBS_URL).data["results"] == []


def test_viewer_may_not_queue(alpha, utc_sensor, upload_dir):
    viewer = get_user_model().objects.create_user("csv-job-viewer", password="Viewer-pass-4711", role=Role.VIEWER)
    client = api_client("alpha", viewer)

    assert client.post(JOBS_URL, long_file(utc_sensor, 1), content_type="text/csv").status_code == 403
    assert client.get(JOBS_URL).status_code == 403
    assert not CsvImportJob.objects.exists()


def test_missing_file_is_400(alpha_api, upload_dir):
    response = alpha_api.post(JOBS_URL, {"other": "x"}, format="multipart")

    assert response.status_code == 400
    assert "multipart field 'file'" in str(response.data)
    assert not CsvImportJob.objects.exists()


def test_sync_over_limit_is_413(alpha_api, utc_sensor, settings):
    settings.TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES = 100
    body = long_file(utc_sensor, 5)
    size = len(body.encode())

    response = alpha_api.post(SYNC_URL, body, content_type="text/csv")

    assert response.status_code == 413
    message = response.data["detail"]
    assert f"The CSV upload is {size:,} bytes" in message
    assert "over the 100-byte limit" in message
    assert "THERMACORE_CSV_IMPORT_MAX_SYNC_BYTES" in message
    assert "POST /api/v1/ingest/csv/jobs/" in message
    assert stored(utc_sensor) == []


def test_sync_multipart_over_limit_is_413(alpha_api, utc_sensor, settings):
    settings.TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES = 100
    upload = SimpleUploadedFile("big.csv", long_file(utc_sensor, 5).encode())

    response = alpha_api.post(SYNC_URL, {"file": upload}, format="multipart")

    assert response.status_code == 413
    assert "POST /api/v1/ingest/csv/jobs/" in response.data["detail"]
    assert stored(utc_sensor) == []


def test_sync_under_limit_imports(alpha_api, utc_sensor, settings):
    body = long_file(utc_sensor, 5)
    settings.TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES = len(body.encode())

    response = alpha_api.post(SYNC_URL, body, content_type="text/csv")

    assert response.status_code == 200
    assert response.data["accepted"] == 5


def test_body_without_length_counted_while_read():
    with pytest.raises(APIException) as raised:
        _buffered_within(io.BytesIO(b"x" * 3_000_000), 2_500_000)
    assert raised.value.status_code == 413
    assert "more than 2,500,000 bytes" in str(raised.value.detail)

    buffer = _buffered_within(io.BytesIO(b"time,sensor,value\n"), 100)
    assert buffer.read() == b"time,sensor,value\n"


def test_redelivered_running_job_fails(utc_sensor, upload_dir):
    # A worker that died left the job RUNNING and released its lock with its connection.
    job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(utc_sensor, 2).encode()], source="a.csv")
    CsvImportJob.objects.filter(pk=job.pk).update(status=CsvImportStatus.RUNNING, lines=7)

    assert run_job(job) == CsvImportStatus.FAILED

    assert "because its worker stopped" in job.error
    assert "after 7 data lines" in job.error
    assert job.finished_at is not None
    assert not Path(job.upload_path).exists()
    assert stored(utc_sensor) == []


def test_running_job_with_live_worker_kept(utc_sensor, upload_dir):
    job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(utc_sensor, 2).encode()], source="a.csv")
    CsvImportJob.objects.filter(pk=job.pk).update(status=CsvImportStatus.RUNNING)
    database = connection.settings_dict
    # Another session holds the job's lock, as the worker running it does.
    with psycopg.connect(host="127.0.0.1", port=database["PORT"] or 5432, user=database["USER"],
                         dbname=database["NAME"], autocommit=True) as worker:
        worker.execute("SELECT pg_advisory_lock(%s)", [_lock_key("alpha", job.pk)])

        assert fail_interrupted_jobs() == []
        assert run_job(job) == CsvImportStatus.RUNNING

    assert Path(job.upload_path).exists()
    with schema_context("alpha"):
        assert fail_interrupted_csv_imports_task.apply().get() == 1
    job.refresh_from_db()
    assert job.status == CsvImportStatus.FAILED


@pytest.fixture
def committed_job_cleanup(django_db_blocker):
    yield
    with django_db_blocker.unblock(), schema_context("alpha"):
        CsvImportJob.objects.all().delete()


@pytest.mark.slow
def test_killed_worker_job_fails(committed_sensors, committed_job_cleanup, django_db_blocker, settings, tmp_path):
    settings.TELEMETRY_CSV_IMPORT_DIR = tmp_path / "uploads"
    sensor = committed_sensors[0]
    with django_db_blocker.unblock(), schema_context("alpha"):
        with mock.patch("apps.telemetry.tasks.run_csv_import_job_task.delay"):
            job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(sensor, 300_000).encode()],
                                   source="killed.csv")
    database = connection.settings_dict
    database_url = f"postgres://{database['USER']}@127.0.0.1:{database['PORT'] or 5432}/{database['NAME']}"
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "thermacore.settings",
        "PYTHONPATH": str(django_settings.BASE_DIR),
        "THERMACORE_DATABASE_URL": database_url,
    }
    script = (
        "import django; django.setup()\n"
        "from django_tenants.utils import schema_context\n"
        "from apps.telemetry.csv_import_jobs import run_import_job\n"
        f"with schema_context('alpha'): run_import_job({job.pk})\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], env=environment, cwd=django_settings.BASE_DIR,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with django_db_blocker.unblock(), schema_context("alpha"):
            deadline = time.monotonic() + 60
            while CsvImportJob.objects.get(pk=job.pk).lines < 10_000:
                assert worker.poll() is None, "the worker ended before it was killed"
                assert time.monotonic() < deadline, "the worker saved no progress within 60 s"
                time.sleep(0.05)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)

            # PostgreSQL notices the closed connection and frees the lock shortly after the kill.
            deadline = time.monotonic() + 10
            while not fail_interrupted_jobs():
                assert time.monotonic() < deadline, "the killed worker's lock was not released within 10 s"
                time.sleep(0.1)
            job.refresh_from_db()
            stored_count = Reading.objects.filter(sensor=sensor).count()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)

    assert job.status == CsvImportStatus.FAILED
    assert "because its worker stopped" in job.error
    assert 10_000 <= job.lines < 300_000
    # The chunk stored just before the kill may not have had its progress saved yet.
    assert job.accepted <= stored_count <= job.accepted + 5000
    assert not Path(job.upload_path).exists()


def test_admin_lists_jobs_read_only(alpha_client, utc_sensor, upload_dir):
    job = start_import_job(actor=admin_of("alpha"), chunks=[long_file(utc_sensor, 1).encode()], source="plant.csv")

    listing = alpha_client.get("/admin/telemetry/csvimportjob/")
    detail = alpha_client.get(f"/admin/telemetry/csvimportjob/{job.pk}/change/")

    assert listing.status_code == 200
    assert "plant.csv" in listing.text
    assert "/admin/telemetry/csvimportjob/add/" not in listing.text
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.text
    assert alpha_client.post(f"/admin/telemetry/csvimportjob/{job.pk}/delete/", {"post": "yes"}).status_code == 403


def test_admin_hides_jobs_from_operator(alpha, upload_dir):
    operator = get_user_model().objects.create_user("csv-operator", password="Operator-pass-4711", role=Role.OPERATOR)
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(operator)

    assert client.get("/admin/telemetry/csvimportjob/").status_code == 403


def test_beat_runs_interrupted_job_check():
    entry = django_settings.CELERY_BEAT_SCHEDULE["fail-interrupted-csv-imports"]

    assert entry["task"] == "telemetry.fail_interrupted_csv_imports"
    assert entry["schedule"] == 300.0


def test_job_lock_outlives_django_connection(django_db_setup, django_db_blocker):
    # Ingest closes Django's connection after CONN_MAX_AGE or an error, while the job's import goes on.
    with django_db_blocker.unblock():
        with csv_import_jobs.job_lock("alpha", 424242) as locked:
            connection.close()
            with csv_import_jobs.job_lock("alpha", 424242) as taken_again:
                pass
        with csv_import_jobs.job_lock("alpha", 424242) as after_release:
            pass

    assert locked
    assert not taken_again
    assert after_release


def test_job_names_undecodable_line(utc_sensor, upload_dir):
    # Line 502 of the file holds a Latin-1 byte; a text file decoding 8 KiB blocks stopped some 200 lines early.
    lines = long_file(utc_sensor, 1_000).encode().split(b"\n")
    lines[501] = lines[501] + b",caf\xe9"
    with mock.patch("apps.telemetry.tasks.run_csv_import_job_task.delay"):
        job = start_import_job(actor=admin_of("alpha"), chunks=[b"\n".join(lines)], source="latin1.csv")

    run_job(job)

    assert job.status == CsvImportStatus.FAILED
    assert job.error.startswith("Line 502 cannot be read (")
    assert job.lines == 500
    assert len(stored(utc_sensor)) == 500


def test_sync_multipart_at_limit_imports(alpha_api, utc_sensor, settings):
    body = long_file(utc_sensor, 5)
    settings.TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES = len(body.encode())
    upload = SimpleUploadedFile("exact.csv", body.encode())

    response = alpha_api.post(SYNC_URL, {"file": upload}, format="multipart")

    assert response.status_code == 200, response.data
    assert response.data["accepted"] == 5


def test_sync_multipart_over_limit_names_file_size(alpha_api, utc_sensor, settings):
    body = long_file(utc_sensor, 5)
    settings.TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES = len(body.encode()) - 1
    upload = SimpleUploadedFile("big.csv", body.encode())

    response = alpha_api.post(SYNC_URL, {"file": upload}, format="multipart")

    assert response.status_code == 413
    assert f"The CSV upload is {len(body.encode()):,} bytes" in response.data["detail"]


@pytest.mark.parametrize("url", [SYNC_URL, JOBS_URL])
def test_multipart_without_length_is_411(alpha, url):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    boundary = "thermacore-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\ntime,sensor,value\r\n--{boundary}--\r\n").encode()
    token = access_token_for("alpha", admin_of("alpha"))
    request = {
        "REQUEST_METHOD": "POST", "PATH_INFO": url, "CONTENT_TYPE": f"multipart/form-data; boundary={boundary}",
        "wsgi.input": io.BytesIO(body), "HTTP_AUTHORIZATION": f"Bearer {token}",
    }

    response = client.request(**request)

    assert response.status_code == 411
    assert "needs a Content-Length header" in response.json()["detail"]
