"""Tenant export, restore and delete against real schemas.

The export reads through a connection of its own, so the data it exports
is committed: these tests provision their own tenants outside the test
transaction and drop them at the end.
"""

import hashlib
import json
import shutil
import zipfile
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context, schema_exists

from apps.accounts.choices import Role
from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm, AlarmRule
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.audit.services import Actor, record
from apps.audit.verify import verify_chain
from apps.protocols.certificates import generate_certificate
from apps.protocols.models import Certificate
from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest
from apps.tenants import archive
from apps.tenants.backup import (
    ArchiveIncompatible,
    ArchiveInvalid,
    DeletionRejected,
    check_archive,
    delete_tenant,
    deletion_blockers,
    export_tenant,
    restore_tenant,
)
from apps.tenants.backup_models import ExportStatus, TenantExport, TenantLifecycleEvent
from apps.tenants.models import Domain, Tenant
from apps.tenants.services import provision_tenant
from apps.units.models import Site, Unit
from tests.conftest import ADMIN_PASSWORD
from tests.factories import PointFactory

READINGS_PER_SENSOR = 500
OWN_SCHEMAS = ("bk_src", "bk_copy", "bk_copy2", "bk_fail", "bk_del", "bk_skip", "bk_cmd")


def _drop_own_tenants():
    connection.set_schema_to_public()
    for tenant in Tenant.objects.filter(schema_name__in=OWN_SCHEMAS):
        tenant.delete(force_drop=True)
    TenantExport.objects.filter(schema_name__in=OWN_SCHEMAS).delete()
    TenantLifecycleEvent.objects.filter(schema_name__in=OWN_SCHEMAS).delete()


def _provision(schema):
    return provision_tenant(
        schema_name=schema, name=schema.replace("_", " ").title(), domain=f"{schema.replace('_', '-')}.localhost",
        admin_username="admin", admin_password=ADMIN_PASSWORD,
    )


def _fill(tenant):
    """Give the tenant readings, an alarm, a certificate with a private key, a second user and audit entries."""
    with schema_context(tenant.schema_name):
        point = PointFactory()
        sensor = point.sensor
        start = timezone.now().replace(microsecond=0) - timedelta(days=2)
        samples = [
            Sample(sensor.pk, start + timedelta(minutes=5 * index), 40.0 + index % 30, 0)
            for index in range(READINGS_PER_SENSOR)
        ]
        ingest(tenant.schema_name, samples, spool_on_failure=False)
        rule = AlarmRule.objects.create(sensor=sensor, condition="hi", limit=60.0)
        Alarm.objects.create(
            rule=rule, unit_id=sensor.unit_id, priority=rule.priority, message="Supply too hot\nline two",
            state=AlarmState.ACTIVE_UNACKNOWLEDGED, condition_started_at=start, activated_at=start,
        )
        generate_certificate("opcua-client", common_name="ThermaCore test", actor=Actor.system_job("tests"))
        get_user_model().objects.create_user(username="olga", password=ADMIN_PASSWORD, role=Role.OPERATOR)
        for index in range(5):
            record(AuditAction.OBJECT_UPDATED, actor=Actor.system_job("tests"), detail={"step": index, "text": "tab\there"})


def _table_rows(schema, table, order_by):
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{schema}"."{table}" ORDER BY {order_by}')
        return cursor.fetchall()


def _count(schema, table):
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
        return cursor.fetchone()[0]


def _rewrite_archive(source, target, *, manifest_change=None, member_change=None):
    """Copy an archive, changing its manifest (a function of the dict) or one member's bytes (name, function)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for name in original.namelist():
            data = original.read(name)
            if name == archive.MANIFEST_NAME and manifest_change:
                manifest = json.loads(data)
                manifest_change(manifest)
                data = json.dumps(manifest).encode()
            if member_change and name == member_change[0]:
                data = member_change[1](data)
            copy.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def backup_db(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        _drop_own_tenants()
        yield
        _drop_own_tenants()


@pytest.fixture(scope="module")
def exported(backup_db, django_db_blocker, tmp_path_factory):
    """Tenant bk_src with data, exported once; yields (tenant, export, archive path, progress reports)."""
    with django_db_blocker.unblock():
        tenant = _provision("bk_src")
        _fill(tenant)
        path = tmp_path_factory.mktemp("exports") / "bk_src.zip"
        reports = []
        export = export_tenant(tenant, path, progress=reports.append, requested_by="platform:tester")
        yield tenant, export, path, reports


@pytest.fixture
def unblocked(backup_db, django_db_blocker):
    with django_db_blocker.unblock():
        yield
        connection.set_schema_to_public()


def test_export_records_progress_and_checksum(exported, unblocked):
    _tenant, export, path, reports = exported
    export.refresh_from_db()

    assert export.status == ExportStatus.DONE
    assert export.progress_percent == 100
    assert export.checksum == archive.file_sha256(path)
    assert export.file_size == path.stat().st_size
    assert export.requested_by == "platform:tester"
    finished = [report for report in reports if report.table_finished]
    assert len(finished) == finished[-1].tables_total
    assert [report.percent for report in finished] == sorted(report.percent for report in finished)
    assert TenantLifecycleEvent.objects.filter(schema_name="bk_src", event="exported").exists()


def test_export_manifest_lists_every_table(exported, unblocked):
    _tenant, export, path, _reports = exported
    manifest = check_archive(path, expected_sha256=export.checksum)
    tables = {table["table"]: table for table in manifest["tables"]}

    assert manifest["source"]["schema"] == "bk_src"
    assert manifest["source"]["domains"] == ["bk-src.localhost"]
    assert tables["telemetry_reading"]["rows"] == READINGS_PER_SENSOR
    assert tables["telemetry_reading"]["partitions"]
    assert tables["accounts_user"]["rows"] == 2
    assert tables["alarms_alarm"]["rows"] == 1
    assert tables["audit_auditentry"]["rows"] == _count("bk_src", "audit_auditentry")
    assert "django_migrations" not in tables
    assert "0001_initial" in manifest["migrations"]["telemetry"]
    assert manifest["audit_chain"]["head_sequence"] == tables["audit_auditentry"]["rows"]


def test_export_keeps_private_keys_encrypted(exported, unblocked):
    _tenant, _export, path, _reports = exported
    with zipfile.ZipFile(path) as opened:
        certificates = opened.read(archive.member_name("protocols_certificate")).decode()
    with schema_context("bk_src"):
        token = Certificate.objects.get(name="opcua-client").private_key_encrypted

    assert token
    assert token in certificates
    assert "PRIVATE KEY" not in certificates


def test_export_rejects_existing_output(exported, unblocked):
    tenant, _export, path, _reports = exported

    with pytest.raises(FileExistsError, match="already exists"):
        export_tenant(tenant, path)


def test_restore_copies_every_table(exported, unblocked):
    tenant, export, path, _reports = exported
    restored = restore_tenant(path, schema_name="bk_copy", domain="bk-copy.localhost", expected_sha256=export.checksum)
    manifest = archive.read_manifest(path)

    assert restored.status == "active"
    assert restored.time_zone == tenant.time_zone
    assert list(restored.domains.values_list("domain", flat=True)) == ["bk-copy.localhost"]
    for table in manifest["tables"]:
        extra = 1 if table["table"] == "audit_auditentry" else 0
        assert _count("bk_copy", table["table"]) == table["rows"] + extra, table["table"]
    assert _table_rows("bk_copy", "telemetry_reading", "sensor_id, time") == _table_rows(
        "bk_src", "telemetry_reading", "sensor_id, time"
    )
    assert _table_rows("bk_copy", "accounts_user", "id") == _table_rows("bk_src", "accounts_user", "id")
    assert _table_rows("bk_copy", "alarms_alarm", "id") == _table_rows("bk_src", "alarms_alarm", "id")
    assert _table_rows("bk_copy", "protocols_certificate", "id") == _table_rows("bk_src", "protocols_certificate", "id")


def test_restored_tenant_accepts_new_rows(exported, unblocked):
    if not Tenant.objects.filter(schema_name="bk_copy").exists():
        pytest.skip("needs the tenant restored by test_restore_copies_every_table")

    with schema_context("bk_copy"):
        site_id = Unit.objects.first().site_id
        unit = Unit.objects.create(site_id=site_id, name="Boiler after restore", kind="boiler")
        user = get_user_model().objects.get(username="olga")

    assert unit.pk > _count("bk_src", "units_unit")
    assert user.check_password(ADMIN_PASSWORD)


def test_restored_audit_chain_verifies(exported, unblocked):
    if not Tenant.objects.filter(schema_name="bk_copy").exists():
        pytest.skip("needs the tenant restored by test_restore_copies_every_table")
    _tenant, _export, path, _reports = exported
    source_head = archive.read_manifest(path)["audit_chain"]

    report = verify_chain("bk_copy", anchors={source_head["head_sequence"]: source_head["head_hash"]})
    with schema_context("bk_copy"):
        restore_entry = AuditEntry.objects.order_by("-sequence").first()

    assert report.intact, report.first_break
    assert report.head_sequence == source_head["head_sequence"] + 1
    assert restore_entry.action == AuditAction.TENANT_LIFECYCLE
    assert restore_entry.detail["event"] == "restored"
    assert restore_entry.detail["source_schema"] == "bk_src"
    assert restore_entry.previous_hash == source_head["head_hash"]
    assert verify_chain("bk_src").intact


def test_chain_verifies_after_second_restore(exported, unblocked, tmp_path):
    if not Tenant.objects.filter(schema_name="bk_copy").exists():
        pytest.skip("needs the tenant restored by test_restore_copies_every_table")
    first_copy = Tenant.objects.get(schema_name="bk_copy")
    export_tenant(first_copy, tmp_path / "bk_copy.zip")

    restore_tenant(tmp_path / "bk_copy.zip", schema_name="bk_copy2", domain="bk-copy2.localhost")
    report = verify_chain("bk_copy2")
    with schema_context("bk_copy2"):
        sources = list(
            AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE, detail__event="restored")
            .order_by("sequence").values_list("detail__source_schema", flat=True)
        )

    assert report.intact, report.first_break
    assert sources == ["bk_src", "bk_copy"]


def test_restored_chain_detects_edit(exported, unblocked):
    if not Tenant.objects.filter(schema_name="bk_copy").exists():
        pytest.skip("needs the tenant restored by test_restore_copies_every_table")

    with connection.cursor() as cursor:
        cursor.execute('ALTER TABLE "bk_copy".audit_auditentry DISABLE TRIGGER audit_entry_append_only')
        cursor.execute('UPDATE "bk_copy".audit_auditentry SET actor_name = %s WHERE sequence = 2', ["mallory"])
        cursor.execute('ALTER TABLE "bk_copy".audit_auditentry ENABLE TRIGGER audit_entry_append_only')
    report = verify_chain("bk_copy")

    assert not report.intact
    assert report.first_break.sequence == 2


def test_restore_rejects_tampered_member(exported, unblocked, tmp_path):
    _tenant, _export, path, _reports = exported
    tampered = _rewrite_archive(
        path, tmp_path / "tampered.zip",
        member_change=(archive.member_name("telemetry_reading"), lambda data: data.replace(b"\t41\t", b"\t99\t", 1)),
    )

    with pytest.raises(ArchiveInvalid, match=r"table telemetry_reading\) has SHA-256 .* the archive was changed"):
        restore_tenant(tampered, schema_name="bk_fail", domain="bk-fail.localhost")

    assert not schema_exists("bk_fail")
    assert not Tenant.objects.filter(schema_name="bk_fail").exists()


def test_restore_rejects_changed_manifest_with_checksum(exported, unblocked, tmp_path):
    _tenant, export, path, _reports = exported
    changed = _rewrite_archive(
        path, tmp_path / "renamed.zip", manifest_change=lambda manifest: manifest["source"].update(name="Other")
    )

    check_archive(changed)
    with pytest.raises(ArchiveInvalid, match="has SHA-256 .* was expected"):
        check_archive(changed, expected_sha256=export.checksum)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda manifest: manifest["migrations"]["telemetry"].append("9999_from_the_future"),
         r"migration telemetry\.9999_from_the_future, which this deployment does not have"),
        (lambda manifest: manifest["migrations"].update(weather=["0001_initial"]),
         "app 'weather', which is not installed"),
        (lambda manifest: manifest.update(format_version=99), "format version 99"),
    ],
)
def test_restore_rejects_incompatible_manifest(exported, unblocked, tmp_path, change, message):
    _tenant, _export, path, _reports = exported
    incompatible = _rewrite_archive(path, tmp_path / "incompatible.zip", manifest_change=change)

    with pytest.raises(ArchiveIncompatible, match=message):
        restore_tenant(incompatible, schema_name="bk_fail", domain="bk-fail.localhost")

    assert not schema_exists("bk_fail")


def _replace_first_field(data, value):
    return data.replace(data.split(b"\t", 1)[0], value, 1)


@pytest.mark.parametrize(
    ("table", "first_field", "message"),
    [
        ("units_unit", b"not-a-number", "not-a-number"),
        ("telemetry_reading", b"999999", "violates foreign key constraint"),
    ],
)
def test_failed_load_drops_schema(exported, unblocked, tmp_path, table, first_field, message):
    _tenant, _export, path, _reports = exported
    member = archive.member_name(table)
    with zipfile.ZipFile(path) as original:
        # A consistent archive whose data PostgreSQL rejects.
        data = _replace_first_field(original.read(member), first_field)

    def fix_manifest(manifest):
        entry = next(table for table in manifest["tables"] if table["member"] == member)
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))

    broken = _rewrite_archive(
        path, tmp_path / "broken.zip", manifest_change=fix_manifest, member_change=(member, lambda _original: data)
    )

    with pytest.raises(Exception, match=message):
        restore_tenant(broken, schema_name="bk_fail", domain="bk-fail.localhost")

    assert not schema_exists("bk_fail")
    assert not Tenant.objects.filter(schema_name="bk_fail").exists()
    assert not Domain.objects.filter(domain="bk-fail.localhost").exists()


def test_restore_rejects_taken_schema(exported, unblocked):
    _tenant, _export, path, _reports = exported

    with pytest.raises(ValueError, match="'bk_src' already exists"):
        restore_tenant(path, schema_name="bk_src", domain="bk-other.localhost")


def test_delete_rejected_without_export(unblocked):
    tenant = _provision("bk_del")

    with pytest.raises(DeletionRejected, match="has no completed export"):
        delete_tenant(tenant, actor=Actor.system_job("tests"), confirm="bk_del")

    assert schema_exists("bk_del")
    assert Tenant.objects.filter(schema_name="bk_del").exists()


def _insert_audit_entry():
    record(AuditAction.OBJECT_UPDATED, actor=Actor.system_job("tests"), detail={"late": True})


def _rename_site():
    Site.objects.filter(name="Spare").update(name="Spare renamed")


def _delete_site():
    Site.objects.filter(name="Spare").delete()


@pytest.mark.parametrize(
    ("change", "table"),
    [(_insert_audit_entry, "audit_auditentry"), (_rename_site, "units_site"), (_delete_site, "units_site")],
)
def test_delete_rejected_after_data_change(unblocked, tmp_path, change, table):
    tenant = Tenant.objects.filter(schema_name="bk_del").first() or _provision("bk_del")
    with schema_context("bk_del"):
        Site.objects.filter(name="Spare renamed").delete()
        Site.objects.get_or_create(name="Spare")
    export_tenant(tenant, tmp_path / "bk_del.zip")
    assert deletion_blockers(tenant) == []
    with schema_context("bk_del"):
        change()

    with pytest.raises(DeletionRejected, match=f"Data changed since export .* in: {table}\\."):
        delete_tenant(tenant, actor=Actor.system_job("tests"), confirm="bk_del")

    assert schema_exists("bk_del")


def test_export_into_existing_file_fails_record(unblocked, tmp_path):
    tenant = Tenant.objects.filter(schema_name="bk_del").first() or _provision("bk_del")
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"")
    export = TenantExport.objects.create(tenant=tenant, schema_name="bk_del", tenant_name=tenant.name)

    with pytest.raises(FileExistsError, match="taken.zip already exists"):
        export_tenant(tenant, taken, export=export)

    export.refresh_from_db()
    assert export.status == ExportStatus.FAILED
    assert "already exists" in export.error
    assert taken.read_bytes() == b""


def test_delete_rejected_with_wrong_confirmation(unblocked):
    tenant = Tenant.objects.filter(schema_name="bk_del").first() or _provision("bk_del")

    with pytest.raises(DeletionRejected, match="Confirmation 'bk-del' does not match the schema name 'bk_del'"):
        delete_tenant(tenant, actor=Actor.system_job("tests"), confirm="bk-del", skip_export=True)

    assert schema_exists("bk_del")


def test_delete_after_fresh_export(unblocked, tmp_path):
    tenant = Tenant.objects.filter(schema_name="bk_del").first() or _provision("bk_del")
    export = export_tenant(tenant, tmp_path / "bk_del-final.zip")

    event = delete_tenant(tenant, actor=Actor.system_job("tests"), confirm="bk_del")

    assert not schema_exists("bk_del")
    assert not Tenant.objects.filter(schema_name="bk_del").exists()
    assert not Domain.objects.filter(domain="bk-del.localhost").exists()
    assert event.event == "deleted"
    assert event.detail["export_id"] == export.pk
    assert event.detail["domains"] == ["bk-del.localhost"]
    export.refresh_from_db()
    assert export.tenant is None
    assert export.schema_name == "bk_del"


def test_delete_rejected_when_archive_missing(unblocked, tmp_path):
    tenant = _provision("bk_skip")
    export_tenant(tenant, tmp_path / "bk_skip.zip")
    (tmp_path / "bk_skip.zip").unlink()

    with pytest.raises(DeletionRejected, match="no longer exists"):
        delete_tenant(tenant, actor=Actor.system_job("tests"), confirm="bk_skip")

    delete_tenant(tenant, actor=Actor.system_job("tests"), confirm="bk_skip", skip_export=True)

    assert not schema_exists("bk_skip")
    assert TenantLifecycleEvent.objects.get(schema_name="bk_skip", event="deleted").detail["skip_export"] is True


def test_commands_export_restore_delete(unblocked, tmp_path, capsys):
    _provision("bk_cmd")
    superuser = get_user_model().objects.create_superuser(username="bk-operator", password=ADMIN_PASSWORD)
    output = tmp_path / "bk_cmd.zip"
    try:
        call_command("export_tenant", "bk_cmd", "--output", str(output))
        printed = capsys.readouterr().out

        assert "] telemetry_reading: 0 rows" in printed
        assert "Exported tenant 'bk_cmd'" in printed

        with pytest.raises(CommandError, match="Schema 'bk_cmd' already exists"):
            call_command("restore_tenant", str(output), "--schema", "bk_cmd", "--domain", "bk-cmd2.localhost")
        with pytest.raises(CommandError, match="does not exist"):
            call_command("restore_tenant", str(tmp_path / "missing.zip"), "--schema", "bk_fail", "--domain", "x.localhost")
        with pytest.raises(CommandError, match="Confirmation 'nope'"):
            call_command("delete_tenant", "bk_cmd", "--actor", "bk-operator", "--confirm", "nope")

        call_command("delete_tenant", "bk_cmd", "--actor", "bk-operator", "--confirm", "bk_cmd")

        assert not schema_exists("bk_cmd")
        assert TenantLifecycleEvent.objects.get(schema_name="bk_cmd", event="deleted").actor == "platform:bk-operator"
    finally:
        # A model delete would look for the tenant-only TOTP devices of the user in the public schema.
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM accounts_user WHERE id = %s", [superuser.pk])


def test_copied_archive_passes_checks(exported, unblocked, tmp_path):
    _tenant, export, path, _reports = exported
    moved = shutil.copy(path, tmp_path / "moved.zip")

    manifest = check_archive(moved, expected_sha256=export.checksum)

    assert manifest["snapshot"] == export.snapshot


# Manifest values are data, never SQL ----------------------------------------------------------------------------


def _first_partition(manifest):
    table = next(table for table in manifest["tables"] if table["partitions"])
    return table["partitions"][0]


@pytest.mark.parametrize(
    "bound",
    [
        "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ((SELECT '2026-01-02'::timestamptz FROM pg_sleep(4)))",
        "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO (pg_read_file('/etc/hostname')::timestamptz)",
        "FOR VALUES FROM ('2026-01-01 00:00:00+00'||pg_sleep(4)) TO ('2026-01-02 00:00:00+00')",
        "FOR VALUES FROM ('2026-01-02 00:00:00+00') TO ('2026-01-01 00:00:00+00')",
        "FOR VALUES FROM ('2026-01-01 00:00:00') TO ('2026-01-02 00:00:00')",
    ],
)
def test_restore_rejects_partition_bound_with_sql(exported, unblocked, tmp_path, bound):
    _tenant, _export, path, _reports = exported
    changed = _rewrite_archive(
        path, tmp_path / "bound.zip", manifest_change=lambda manifest: _first_partition(manifest).update(bound=bound)
    )
    steps = []

    with pytest.raises(ArchiveInvalid, match="the manifest was changed"):
        restore_tenant(changed, schema_name="bk_fail", domain="bk-fail.localhost", progress=steps.append)

    # Rejected while checking the archive, before a schema existed that could run SQL.
    assert steps == [f"Verifying {changed}"]
    assert not schema_exists("bk_fail")
    assert not Tenant.objects.filter(schema_name="bk_fail").exists()


def _rename_table(manifest, old, new):
    table = next(table for table in manifest["tables"] if table["table"] == old)
    table["table"] = new


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda manifest: _first_partition(manifest).update(name="units_unit"), "have the names of archived tables"),
        (lambda manifest: _first_partition(manifest).update(name='p"; DROP SCHEMA public; --'), "is not a table"),
        (lambda manifest: _rename_table(manifest, "units_unit", "django_migrations"), "never archived"),
        (lambda manifest: manifest["tables"][0]["columns"].append("id); SELECT pg_sleep(4); --"), "is not a table"),
        (lambda manifest: manifest["tables"][0].update(rows="12"), "not a count"),
        (lambda manifest: manifest.update(tables={"units_unit": {}}), "'tables' is not a list"),
        (lambda manifest: manifest["tables"].append(dict(manifest["tables"][0])), "listed twice"),
    ],
)
def test_restore_rejects_malformed_manifest(exported, unblocked, tmp_path, change, message):
    _tenant, _export, path, _reports = exported
    changed = _rewrite_archive(path, tmp_path / "names.zip", manifest_change=change)

    with pytest.raises(ArchiveInvalid, match=message):
        restore_tenant(changed, schema_name="bk_fail", domain="bk-fail.localhost")

    assert not schema_exists("bk_fail")


def test_restore_command_rejects_directory(unblocked, tmp_path):
    with pytest.raises(CommandError, match="is a directory"):
        call_command("restore_tenant", str(tmp_path), "--schema", "bk_fail", "--domain", "bk-fail.localhost")

    assert not schema_exists("bk_fail")
