"""Retention archives old entries with a manifest, drops them through the one allowed path and stays verifiable."""

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from apps.audit.chain import BreakKind, ExportInvalid, verify_export
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry, AuditSettings
from apps.audit.retention import RETENTION_JOB, RETENTION_SETTING, apply_retention, archive_and_drop
from apps.audit.services import Actor, record
from apps.audit.tasks import apply_retention_task
from apps.audit.verify import verify_chain
from tests.audit.conftest import chain_head, run_sql_bypassing_trigger

NOW = datetime.now(UTC)


def record_at(moment, step):
    with mock.patch("apps.audit.services.timezone.now", return_value=moment):
        return record(AuditAction.TENANT_LIFECYCLE, actor=Actor.system_job("test"), detail={"step": step})


@pytest.fixture
def aged_chain(alpha):
    """Alpha's chain plus three entries 100 days old and two from today; returns the new entries."""
    # Entries written while alpha was provisioned are older still, so they are dropped as well.
    old = [record_at(NOW - timedelta(days=100), step) for step in range(3)]
    new = [record(AuditAction.TENANT_LIFECYCLE, actor=Actor.system_job("test"), detail={"step": step})
           for step in range(3, 5)]
    return old, new


def run_sql(sql, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_drop_recorded_and_chain_verifies(aged_chain, tmp_path):
    old, _new = aged_chain
    through = old[-1].sequence

    entry = archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    assert (entry.action, entry.actor_id) == (AuditAction.RETENTION_DROPPED, RETENTION_JOB)
    assert entry.detail["first_sequence"] == 1
    assert entry.detail["through_sequence"] == through
    assert entry.detail["dropped_count"] == through
    assert entry.detail["last_dropped_hash"] == old[-1].hash
    assert AuditEntry.objects.order_by("sequence").first().sequence == through + 1
    assert not AuditEntry.objects.filter(sequence__lte=through).exists()
    report = verify_chain("alpha")
    assert report.intact, report.first_break
    assert report.head_sequence == entry.sequence


def test_archive_verifies_offline(aged_chain, tmp_path):
    entry = archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    archive = tmp_path / "alpha" / entry.detail["archive_file"]
    manifest = tmp_path / "alpha" / entry.detail["manifest_file"]
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == entry.detail["archive_sha256"]
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == entry.detail["manifest_sha256"]
    assert verify_export(archive, manifest).startswith(f"OK: {entry.detail['dropped_count']} entries of tenant alpha")
    assert json.loads(manifest.read_text())["chain_head"]["hash"] == entry.detail["last_dropped_hash"]


def test_tampered_archive_fails_offline(aged_chain, tmp_path):
    entry = archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)
    archive = tmp_path / "alpha" / entry.detail["archive_file"]
    archive.write_bytes(archive.read_bytes().replace(b'"step":1', b'"step":7'))

    with pytest.raises(ExportInvalid, match="SHA-256"):
        verify_export(archive, tmp_path / "alpha" / entry.detail["manifest_file"])


def test_second_run_continues_chain(aged_chain, tmp_path):
    old, _new = aged_chain
    first_run = archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    second_run = archive_and_drop(cutoff=datetime.now(UTC) + timedelta(seconds=1), directory=tmp_path)

    assert second_run.detail["first_sequence"] == old[-1].sequence + 1
    assert second_run.detail["through_sequence"] == first_run.sequence
    assert list(AuditEntry.objects.values_list("sequence", flat=True)) == [second_run.sequence]
    assert verify_chain("alpha").intact
    folder = tmp_path / "alpha"
    manifest = json.loads((folder / second_run.detail["manifest_file"]).read_text())
    assert manifest["chain_start"] == {"sequence": old[-1].sequence, "hash": old[-1].hash}
    assert verify_export(folder / second_run.detail["archive_file"], folder / second_run.detail["manifest_file"])


def test_export_after_drop_verifies_offline(aged_chain, alpha_api, tmp_path):
    entry = archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    response = alpha_api.get("/api/v1/audit/export/?format=csv")
    export_path = tmp_path / "after-drop.csv"
    export_path.write_bytes(b"".join(response.streaming_content))
    manifest_response = alpha_api.get(response["Link"].split(">")[0].lstrip("<"))
    manifest_path = tmp_path / "after-drop.manifest.json"
    manifest_path.write_bytes(manifest_response.content)

    assert manifest_response.json()["chain_start"] == {
        "sequence": entry.detail["through_sequence"], "hash": entry.detail["last_dropped_hash"],
    }
    assert verify_export(export_path, manifest_path).startswith("OK: ")


def test_export_after_drop_with_forged_start_fails(aged_chain, alpha_api, tmp_path):
    archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)
    response = alpha_api.get("/api/v1/audit/export/?format=json")
    export_path = tmp_path / "after-drop.json"
    export_path.write_bytes(b"".join(response.streaming_content))
    manifest = alpha_api.get(response["Link"].split(">")[0].lstrip("<")).json()
    manifest["chain_start"]["hash"] = "f" * 64
    manifest_path = tmp_path / "after-drop.manifest.json"
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ExportInvalid, match="does not start the chain"):
        verify_export(export_path, manifest_path)


def test_nothing_old_drops_nothing(alpha, tmp_path):
    head = chain_head()

    assert archive_and_drop(cutoff=NOW - timedelta(days=3650), directory=tmp_path) is None
    assert chain_head() == head
    assert list(tmp_path.iterdir()) == [tmp_path / "alpha"]
    assert list((tmp_path / "alpha").iterdir()) == []


def test_apply_retention_uses_tenant_days(aged_chain, tmp_path):
    old, new = aged_chain
    assert apply_retention(directory=tmp_path) is None, "Without retention_days entries are kept."

    AuditSettings.objects.create(retention_days=90)
    entry = apply_retention(directory=tmp_path)

    assert entry.detail["through_sequence"] == old[-1].sequence
    assert AuditEntry.objects.filter(sequence__in=[e.sequence for e in new]).count() == 2


def test_invalid_format_rejected(alpha, tmp_path):
    with pytest.raises(ValueError, match="'xml' is invalid"):
        archive_and_drop(cutoff=NOW, directory=tmp_path, export_format="xml")


def test_plain_delete_rejected(aged_chain):
    with pytest.raises(DatabaseError, match="append-only"):
        run_sql("DELETE FROM audit_auditentry WHERE sequence = 1")

    assert AuditEntry.objects.filter(sequence=1).exists()


def test_delete_with_setting_but_no_drop_entry_rejected(aged_chain):
    old, _new = aged_chain

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [RETENTION_SETTING, str(old[-1].sequence)])
        cursor.execute("DELETE FROM audit_auditentry WHERE sequence <= %s", [old[-1].sequence])

    assert AuditEntry.objects.filter(sequence=1).exists()


def test_delete_beyond_recorded_drop_rejected(aged_chain, tmp_path):
    old, new = aged_chain
    archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [RETENTION_SETTING, str(old[-1].sequence)])
        cursor.execute("DELETE FROM audit_auditentry WHERE sequence = %s", [new[0].sequence])

    assert AuditEntry.objects.filter(sequence=new[0].sequence).exists()


def test_update_rejected_during_retention(aged_chain):
    _old, new = aged_chain

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [RETENTION_SETTING, str(new[-1].sequence)])
        cursor.execute("UPDATE audit_auditentry SET actor_name = 'mallory' WHERE sequence = 1")


def test_retention_setting_cleared_after_drop(aged_chain, tmp_path):
    archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [RETENTION_SETTING])
        assert cursor.fetchone()[0] == ""


def test_deletion_after_drop_still_detected(aged_chain, tmp_path):
    _old, new = aged_chain
    archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    run_sql_bypassing_trigger("DELETE FROM audit_auditentry WHERE sequence = %s", [new[0].sequence])

    report = verify_chain("alpha")
    assert (report.first_break.sequence, report.first_break.kind) == (new[1].sequence, BreakKind.DELETED)


def test_drop_without_record_detected(aged_chain):
    old, _new = aged_chain

    run_sql_bypassing_trigger("DELETE FROM audit_auditentry WHERE sequence <= %s", [old[-1].sequence])

    report = verify_chain("alpha")
    assert (report.first_break.sequence, report.first_break.kind) == (old[-1].sequence + 1, BreakKind.DELETED)


def test_failed_drop_leaves_no_files(aged_chain, tmp_path):
    with mock.patch("apps.audit.retention.record", side_effect=DatabaseError("audit write failed")):
        with pytest.raises(DatabaseError):
            archive_and_drop(cutoff=NOW - timedelta(days=90), directory=tmp_path)

    assert list((tmp_path / "alpha").iterdir()) == []
    assert AuditEntry.objects.filter(sequence=1).exists()


def test_retention_task_drops_in_its_schema(aged_chain, settings, tmp_path):
    settings.AUDIT_ARCHIVE_DIR = tmp_path
    AuditSettings.objects.create(retention_days=90)

    sequence = apply_retention_task()

    entry = AuditEntry.objects.get(sequence=sequence)
    assert entry.action == AuditAction.RETENTION_DROPPED
    assert (tmp_path / "alpha" / entry.detail["archive_file"]).exists()


def test_command_reports_drop(aged_chain, tmp_path):
    old, _new = aged_chain
    AuditSettings.objects.create(retention_days=90)
    output = io.StringIO()

    call_command("apply_audit_retention", "--schema", "alpha", "--directory", str(tmp_path), stdout=output)

    assert output.getvalue().startswith(f"alpha: dropped entries 1 to {old[-1].sequence}, archive ")


def test_command_rejects_unknown_schema(alpha):
    with pytest.raises(CommandError, match="No tenant has schema 'gamma'"):
        call_command("apply_audit_retention", "--schema", "gamma")
